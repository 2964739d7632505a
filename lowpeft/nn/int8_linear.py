# Int8Linear (a frozen nn.Linear whose weight is stored as int8 with one scale per output row), Int8LoRALinear
# (LoRA on top of it, computed by lowpeft.ops.int8_lora_linear) and Int8AdapterLinear (a bottleneck adapter on its
# output): the quantized frozen base of QLoRA-style training.
#
# Trade-off: the base is quantized once, absmax per output row (lowpeft.ops.quantize_int8), and dequantized to
# the input's dtype at every call (one memory pass, then the same GEMMs and fused LoRA kernels as a float base):
# the weight takes half the memory of bf16 and the layer's speed stays the float layer's plus that pass.
# The base cannot absorb a merge: an adapter's update is far smaller than an int8 step, so merging into the
# int8 values would round it away. merge() refuses; to_linear() gives a float nn.Linear with the adapter folded
# into the dequantized weight (for export), in the dtype the base had before quantization.
from __future__ import annotations

import torch
from torch import nn

from ..ops import _dispatch
from ..ops._torch_rules import autocast_compute_dtype
from ..ops.dequantize_int8 import check_float_dtype, check_int8_weight, dequantize_int8, quantize_int8
from ..ops.int8_linear import int8_linear
from ..ops.int8_lora_linear import int8_lora_linear
from .adapter import AdapterLinear, BottleneckAdapter
from .lora_linear import LoRALinear, _reject_layer_arguments

__all__ = ["Int8Linear", "Int8LoRALinear", "Int8AdapterLinear"]


def _frozen(tensor: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(tensor, requires_grad=False)


def _refuse_float_weight(module, state_dict, prefix, *args) -> None:
    # load_state_dict copies into the existing int8 Parameter: a float checkpoint's weight would be truncated to
    # integers, silently. Refused; quantize_int8 (or quantize_base on the float model) makes int8 weights.
    weight = state_dict.get(prefix + "weight")
    if isinstance(weight, torch.Tensor) and weight.dtype != torch.int8:
        raise TypeError(f"{prefix}weight: expected an int8 weight for this int8 layer, got dtype {weight.dtype}; load "
                        "the float checkpoint before lowpeft.quantize_base, or quantize it with "
                        "lowpeft.ops.quantize_int8")


class _Int8Base(nn.Module):
    """What Int8Linear, Int8LoRALinear and Int8AdapterLinear share: a cast (`.to(dtype)`, `.half()`, `.type()`)
    reaches the bias and the adapter but leaves the int8 weight and its scales as they are, values and dtypes (a
    bf16 scale would move every row by up to 0.4 %, a float16 one underflow small rows to zero); `source_dtype` (the
    float weight's dtype before quantization: to_linear's default) follows the cast as a float parameter would; a
    state dict with a float `weight` is a TypeError, not a silent truncation to int8."""

    def _apply(self, fn, recurse=True):
        probe = torch.empty(0, dtype=self.source_dtype, device=self.weight_scale.device)
        kept = {name: getattr(self, name).data for name in ("weight", "weight_scale")}
        module = super()._apply(fn, recurse)
        for name, original in kept.items():
            param = getattr(self, name)
            if param.dtype != original.dtype:
                param.data = original.to(param.device)
        cast = fn(probe)
        if isinstance(cast, torch.Tensor) and cast.is_floating_point():
            self.source_dtype = cast.dtype
        return module


class Int8Linear(_Int8Base):
    """A frozen Linear y = x Ŵᵀ + b with Ŵ = weight · weight_scale[:, None]: weight int8 [out, in], weight_scale
    float32 [out] (float64 for a float64 source), both frozen Parameters (so parameter counts and .to(device)
    see them); bias keeps the source layer's dtype. Ŵ is dequantized to x's dtype (autocast's under autocast)."""

    def __init__(self, weight: torch.Tensor, weight_scale: torch.Tensor, bias: torch.Tensor | None = None, *,
                 source_dtype: torch.dtype = torch.float32, fan_in_fan_out: bool = False, backend: str = "auto"):
        super().__init__()
        check_int8_weight(weight, weight_scale)
        if bias is not None and not isinstance(bias, torch.Tensor):
            raise TypeError(f"bias: expected None or a torch.Tensor, got {type(bias).__name__}")
        if bias is not None and (bias.dim() != 1 or bias.shape[0] != weight.shape[0]):
            raise ValueError(f"bias: expected shape [{weight.shape[0]}], got {tuple(bias.shape)}")
        self.out_features, self.in_features = weight.shape
        self.weight = _frozen(weight)
        self.weight_scale = _frozen(weight_scale)
        self.bias = bias if bias is None or isinstance(bias, nn.Parameter) else _frozen(bias)
        check_float_dtype("source_dtype", source_dtype)
        self.source_dtype = source_dtype
        self.fan_in_fan_out = bool(fan_in_fan_out)
        self.backend = _dispatch._check_name(backend)
        self._register_load_state_dict_pre_hook(_refuse_float_weight, with_module=True)

    @classmethod
    def from_linear(cls, linear: nn.Module, *, backend: str = "auto") -> "Int8Linear":
        """Quantize an nn.Linear's weight (or a transformers Conv1D's, stored [in, out]: fan_in_fan_out records it,
        for exports back to Conv1D); the bias Parameter is shared, not copied; source_dtype records the weight's
        dtype."""
        weight = getattr(linear, "weight", None)
        conv1d = type(linear).__name__ == "Conv1D" and isinstance(weight, torch.Tensor) and weight.dim() == 2
        if not isinstance(linear, nn.Linear) and not conv1d:
            raise TypeError(f"linear: expected a torch.nn.Linear or a transformers Conv1D, got {type(linear).__name__}")
        qweight, scale = quantize_int8(weight.t() if conv1d else weight)
        return cls(qweight, scale, linear.bias, source_dtype=weight.dtype, fan_in_fan_out=conv1d, backend=backend)

    def dequantized_weight(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Ŵ as a new [out, in] tensor of `dtype`."""
        return dequantize_int8(self.weight, self.weight_scale, dtype, backend=self.backend)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return int8_linear(x, self.weight, self.weight_scale, self.bias, backend=self.backend)

    @torch.no_grad()
    def to_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A float nn.Linear of `dtype` (default source_dtype) holding Ŵ (and a copy of the bias)."""
        dtype = dtype or self.source_dtype
        check_float_dtype("dtype", dtype)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=dtype)
        linear.weight.copy_(self.dequantized_weight(dtype))
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"weight=int8 per-row absmax, backend={self.backend!r}")


class Int8LoRALinear(_Int8Base, LoRALinear):
    """LoRALinear over an Int8Linear's frozen int8 base (its weight, weight_scale and bias Parameters shared, not
    copied): y = x Ŵᵀ + b + scaling · (dropout(x) lora_Aᵀ) lora_Bᵀ, computed in x's dtype (autocast's under
    autocast). lora_A / lora_B default to float32 (adapter_dtype= to choose), as PEFT keeps them on a quantized base.
    merge() raises (an int8 base cannot hold the update; unmerge() has nothing to undo); to_linear() exports a merged
    float Linear (to_conv1d() a Conv1D for a base quantized from one)."""

    def __init__(self, *args, **kwargs):
        raise TypeError("Int8LoRALinear is built from a quantized base: Int8LoRALinear.from_int8_linear("
                        "Int8Linear.from_linear(linear), r=...), or lowpeft.quantize_base(model) then lowpeft.apply")

    @classmethod
    def from_int8_linear(cls, base: Int8Linear, r: int = 8, alpha: float = 8, dropout: float = 0.0, *,
                         freeze_base: bool = True, **kwargs) -> "Int8LoRALinear":
        """Wrap `base` (an Int8Linear). Keyword arguments: use_rslora, init, backend, adapter_dtype (dtype of
        lora_A / lora_B, default float32)."""
        if not isinstance(base, Int8Linear):
            raise TypeError(f"base: expected a lowpeft Int8Linear, got {type(base).__name__}")
        _reject_layer_arguments("Int8Linear", kwargs)
        if kwargs.get("adapter_dtype") is None:
            kwargs["adapter_dtype"] = torch.float64 if base.weight_scale.dtype == torch.float64 else torch.float32
        layer = cls._wrap(base.weight, base.bias, base.in_features, base.out_features, False, freeze_base,
                          r=r, alpha=alpha, dropout=dropout, **kwargs)
        layer.weight_scale = base.weight_scale
        layer.source_dtype, layer.fan_in_fan_out = base.source_dtype, base.fan_in_fan_out
        layer._register_load_state_dict_pre_hook(_refuse_float_weight, with_module=True)
        return layer

    def base_weight(self) -> torch.Tensor:
        """Ŵ dequantized to float32 (float64 for a float64 scale), [out, in]."""
        return dequantize_int8(self.weight, self.weight_scale, self._wide_dtype(), backend=self.backend)

    def _wide_dtype(self) -> torch.dtype:
        return torch.promote_types(self.weight_scale.dtype, torch.float32)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lora_A, lora_B, bias = self.lora_A, self.lora_B, self.bias
        if isinstance(x, torch.Tensor):  # anything else: the op's named TypeError
            compute_dtype = autocast_compute_dtype(x)
            if lora_A.dtype != compute_dtype or lora_B.dtype != compute_dtype:
                lora_A, lora_B = lora_A.to(compute_dtype), lora_B.to(compute_dtype)
            if bias is not None and bias.dtype != compute_dtype:
                bias = bias.to(compute_dtype)
        return int8_lora_linear(x, self.weight, self.weight_scale, bias, lora_A, lora_B, self.scaling, self.dropout_p,
                                self.training, backend=self.backend)

    def merge(self) -> None:
        raise ValueError(
            "merge: the base weight is int8, and an adapter's update is far smaller than an int8 step, so merging "
            "would round it away; to_linear() (or lowpeft.merge_and_unload on the model) gives a float nn.Linear "
            "with the adapter folded into the dequantized weight")

    def unmerge(self) -> None:
        """Nothing to undo: an int8 base is never merged (merge() refuses)."""

    def _delta(self, lora_A: torch.Tensor, lora_B: torch.Tensor) -> torch.Tensor:
        wide = self._wide_dtype()
        return self.scaling * (lora_B.to(wide) @ lora_A.to(wide))

    @torch.no_grad()
    def to_linear(self, dtype: torch.dtype | None = None) -> nn.Linear:
        """A float nn.Linear (of `dtype`, default source_dtype: the dtype the base had before quantization) computing
        Ŵ + scaling · lora_B lora_A, summed in float32 (float64 for a float64 scale) and rounded once."""
        dtype = dtype or self.source_dtype
        check_float_dtype("dtype", dtype)
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=dtype)
        linear.weight.copy_(self.base_weight() + self.delta_weight())
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"base=int8 per-row absmax, r={self.r}, alpha={self.alpha}, dropout={self.dropout_p}, "
            f"use_rslora={self.use_rslora}, backend={self.backend!r}"
        )


class Int8AdapterLinear(_Int8Base, AdapterLinear):
    """AdapterLinear over an Int8Linear's frozen int8 base (its weight, weight_scale and bias Parameters shared):
    y = adapter(x Ŵᵀ + b), the base computed by lowpeft.ops.int8_linear (so training keeps no float copy of Ŵ). The
    adapter's parameters default to the base's source dtype (adapter_dtype= to choose); keyword arguments as
    AdapterLinear's. to_linear() gives the base alone back as an Int8Linear."""

    def __init__(self, base: Int8Linear, bottleneck: int = 64, activation: str = "gelu", scale: float = 1.0,
                 init: str = "identity", bias: bool = True, backend: str = "auto", *, adapter_dtype=None,
                 freeze_base: bool = True):
        if not isinstance(base, Int8Linear):
            raise TypeError(f"base: expected a lowpeft Int8Linear, got {type(base).__name__}")
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.weight_scale, self.bias = base.weight, base.weight_scale, base.bias
        self.source_dtype, self.fan_in_fan_out, self.base_backend = base.source_dtype, base.fan_in_fan_out, base.backend
        if freeze_base and self.bias is not None:
            self.bias.requires_grad_(False)
        self.adapter = BottleneckAdapter(self.out_features, bottleneck, activation, scale, init, bias, backend,
                                         device=self.weight.device, dtype=adapter_dtype or base.source_dtype)
        self._register_load_state_dict_pre_hook(_refuse_float_weight, with_module=True)

    @classmethod
    def from_int8_linear(cls, base: Int8Linear, bottleneck: int = 64, activation: str = "gelu",
                         **kwargs) -> "Int8AdapterLinear":
        """Wrap `base`, sharing its Parameters; keyword arguments as Int8AdapterLinear."""
        return cls(base, bottleneck, activation, **kwargs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(int8_linear(x, self.weight, self.weight_scale, self.bias, backend=self.base_backend))

    @torch.no_grad()
    def to_linear(self) -> Int8Linear:
        """The wrapped int8 layer alone (the adapter dropped), sharing this layer's weight, scale and bias."""
        return Int8Linear(self.weight, self.weight_scale, self.bias, source_dtype=self.source_dtype,
                          fan_in_fan_out=self.fan_in_fan_out, backend=self.base_backend)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"base=int8 per-row absmax")
