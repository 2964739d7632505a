# LoRALinear: a drop-in nn.Linear (or transformers Conv1D) with a LoRA adapter, computed by the fused op.
#
# Trade-off: the module keeps the frozen base weight and bias under nn.Linear's own state-dict keys
# (`weight`, `bias`) and shares them with the layer it wraps (no copy), so the original checkpoint loads
# and memory is not doubled; the adapter matrices may be kept in a wider dtype than the base (PEFT keeps
# them in float32 for a bf16 model) and are cast to the compute dtype at each call, which costs two tiny
# [r, in] / [out, r] casts and keeps the optimizer state in full precision.
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from ..ops import _dispatch
from ..ops._torch_rules import autocast_dtype
from ..ops.lora_linear import lora_linear

__all__ = ["LoRALinear"]

_INITS = ("default", "gaussian")


def _check_hyperparameters(in_features, out_features, r, alpha, dropout, init):
    for name, value in (("in_features", in_features), ("out_features", out_features), ("r", r)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
        if value <= 0:
            raise ValueError(f"{name}: expected a positive int, got {value}")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
        raise TypeError(f"alpha: expected a finite number, got {type(alpha).__name__} {alpha!r}")
    if not math.isfinite(alpha):
        raise ValueError(f"alpha: expected a finite number, got {alpha!r}")
    if isinstance(dropout, bool) or not isinstance(dropout, (int, float)):
        raise TypeError(f"dropout: expected a float in [0, 1), got {type(dropout).__name__} {dropout!r}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout: expected a float in [0, 1), got {dropout!r}")
    if init not in _INITS:
        raise ValueError(f"init: expected one of {_INITS}, got {init!r}")


_LAYER_ARGUMENTS = ("in_features", "out_features", "bias", "device", "dtype")


def _reject_layer_arguments(layer_name: str, kwargs: dict) -> None:
    """from_linear / from_conv1d take sizes, bias, device and dtype from the wrapped layer: passing one is an error
    naming it, not Python's "got multiple values"."""
    for name in _LAYER_ARGUMENTS:
        if name in kwargs:
            raise TypeError(f"{name}: taken from the wrapped {layer_name} (its weight and bias are shared), so it "
                            f"cannot be passed; got {name}={kwargs[name]!r}")


class LoRALinear(nn.Module):
    """y = x Wᵀ + b + scaling · (dropout(x) lora_Aᵀ) lora_Bᵀ with W, b frozen and lora_A [r, in], lora_B [out, r]
    trainable; scaling = alpha / r (alpha / sqrt(r) with use_rslora).

    With fan_in_fan_out=True the base weight is stored [in, out] as transformers' Conv1D stores it.
    Accepts inputs of any leading dimensions; backend is "auto", "triton", "cuda", "cpu" or "torch".
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        r: int = 8,
        alpha: float = 8,
        dropout: float = 0.0,
        bias: bool = True,
        use_rslora: bool = False,
        init: str = "default",
        backend: str = "auto",
        device=None,
        dtype=None,
        fan_in_fan_out: bool = False,
    ):
        super().__init__()
        _check_hyperparameters(in_features, out_features, r, alpha, dropout, init)
        factory = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.fan_in_fan_out = bool(fan_in_fan_out)
        shape = (in_features, out_features) if self.fan_in_fan_out else (out_features, in_features)
        self.weight = nn.Parameter(torch.empty(shape, **factory), requires_grad=False)
        self.bias = nn.Parameter(torch.empty(out_features, **factory), requires_grad=False) if bias else None
        self._reset_base_parameters()
        self._init_adapter(r, alpha, dropout, use_rslora, init, backend, self.weight.device, self.weight.dtype)

    def _reset_base_parameters(self):
        # nn.Linear's own initialisation, so a freshly built layer behaves like a fresh nn.Linear.
        weight = self.weight.t() if self.fan_in_fan_out else self.weight
        nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1.0 / math.sqrt(self.in_features) if self.in_features > 0 else 0.0
            nn.init.uniform_(self.bias, -bound, bound)

    def _init_adapter(self, r, alpha, dropout, use_rslora, init, backend, device, dtype):
        self.r, self.alpha, self.dropout_p = r, alpha, float(dropout)
        self.use_rslora, self.init = bool(use_rslora), init
        self.backend = backend
        self.lora_A = nn.Parameter(torch.empty(r, self.in_features, device=device, dtype=dtype))
        self.lora_B = nn.Parameter(torch.empty(self.out_features, r, device=device, dtype=dtype))
        self.merged = False
        # The lora_A, lora_B that merge() folded into the weight (non-persistent: they follow .to() but stay out of
        # the state dict), so unmerge() subtracts exactly what was added.
        self.register_buffer("_merged_lora_A", None, persistent=False)
        self.register_buffer("_merged_lora_B", None, persistent=False)
        self._register_load_state_dict_pre_hook(self._track_loaded_merged_state)
        self.reset_lora_parameters()

    def _track_loaded_merged_state(self, state_dict, prefix, *args) -> None:
        # A state dict carries no merged flag: a weight loaded into a merged layer is taken as a merged weight
        # holding the loaded factors (as this layer's own state_dict() holds), so unmerge() subtracts those.
        if self.merged and prefix + "weight" in state_dict:
            self._merged_lora_A = state_dict.get(prefix + "lora_A", self.lora_A).detach().clone()
            self._merged_lora_B = state_dict.get(prefix + "lora_B", self.lora_B).detach().clone()

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = _dispatch._check_name(name)

    @property
    def scaling(self) -> float:
        return self.alpha / (math.sqrt(self.r) if self.use_rslora else self.r)

    def reset_lora_parameters(self) -> None:
        """PEFT's initialisation: lora_A Kaiming-uniform (init="default") or N(0, 1/r) ("gaussian"), lora_B zero,
        so a fresh adapter leaves the layer's output unchanged."""
        with torch.no_grad():
            if self.init == "gaussian":
                nn.init.normal_(self.lora_A, std=1.0 / self.r)
            else:
                nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
            nn.init.zeros_(self.lora_B)

    # ------------------------------------------------------------------------------------------------
    # construction from existing layers
    # ------------------------------------------------------------------------------------------------
    @classmethod
    def _wrap(cls, weight, bias, in_features, out_features, fan_in_fan_out, freeze_base, **kwargs):
        r, alpha = kwargs.pop("r", 8), kwargs.pop("alpha", 8)
        dropout, use_rslora = kwargs.pop("dropout", 0.0), kwargs.pop("use_rslora", False)
        init, backend = kwargs.pop("init", "default"), kwargs.pop("backend", "auto")
        adapter_dtype = kwargs.pop("adapter_dtype", None)
        if kwargs:
            raise TypeError(f"unexpected keyword arguments: {sorted(kwargs)}")
        _check_hyperparameters(in_features, out_features, r, alpha, dropout, init)
        layer = cls.__new__(cls)
        nn.Module.__init__(layer)
        layer.in_features, layer.out_features = in_features, out_features
        layer.fan_in_fan_out = fan_in_fan_out
        layer.weight = weight
        layer.bias = bias
        if freeze_base:
            weight.requires_grad_(False)
            if bias is not None:
                bias.requires_grad_(False)
        layer._init_adapter(r, alpha, dropout, use_rslora, init, backend, weight.device, adapter_dtype or weight.dtype)
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, r: int = 8, alpha: float = 8, dropout: float = 0.0, *,
                    freeze_base: bool = True, **kwargs) -> "LoRALinear":
        """Wrap `linear`, sharing its weight and bias Parameters (no copy). Keyword arguments: use_rslora, init,
        backend, adapter_dtype (dtype of lora_A / lora_B, default the base weight's)."""
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected a torch.nn.Linear, got {type(linear).__name__}")
        _reject_layer_arguments("linear", kwargs)
        return cls._wrap(linear.weight, linear.bias, linear.in_features, linear.out_features, False, freeze_base,
                         r=r, alpha=alpha, dropout=dropout, **kwargs)

    @classmethod
    def from_conv1d(cls, conv1d: nn.Module, r: int = 8, alpha: float = 8, dropout: float = 0.0, *,
                    freeze_base: bool = True, **kwargs) -> "LoRALinear":
        """Wrap a transformers Conv1D (GPT-2; weight stored [in, out]), sharing its parameters (fan_in_fan_out)."""
        weight = getattr(conv1d, "weight", None)
        if type(conv1d).__name__ != "Conv1D" or not isinstance(weight, torch.Tensor) or weight.dim() != 2:
            raise TypeError(f"conv1d: expected a transformers Conv1D, got {type(conv1d).__name__}")
        _reject_layer_arguments("conv1d", kwargs)
        in_features, out_features = weight.shape
        return cls._wrap(weight, conv1d.bias, in_features, out_features, True, freeze_base,
                         r=r, alpha=alpha, dropout=dropout, **kwargs)

    # ------------------------------------------------------------------------------------------------
    # compute
    # ------------------------------------------------------------------------------------------------
    def base_weight(self) -> torch.Tensor:
        """The base weight as [out, in] (a view for fan_in_fan_out layers)."""
        return self.weight.t() if self.fan_in_fan_out else self.weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.base_weight()
        if self.merged:
            return F.linear(x, weight, self.bias)
        compute_dtype = weight.dtype
        if weight.dtype != torch.float64:
            compute_dtype = autocast_dtype(x) or compute_dtype
        lora_A, lora_B = self.lora_A, self.lora_B
        if lora_A.dtype != compute_dtype or lora_B.dtype != compute_dtype:
            lora_A, lora_B = lora_A.to(compute_dtype), lora_B.to(compute_dtype)
        return lora_linear(
            x,
            weight,
            self.bias,
            lora_A,
            lora_B,
            self.scaling,
            self.dropout_p,
            self.training,
            backend=self.backend,
        )

    def delta_weight(self) -> torch.Tensor:
        """scaling · lora_B lora_A in float32 (or float64), shaped [out, in]."""
        return self._delta(self.lora_A, self.lora_B)

    def _delta(self, lora_A: torch.Tensor, lora_B: torch.Tensor) -> torch.Tensor:
        wide = torch.promote_types(self.weight.dtype, torch.float32)
        return self.scaling * (lora_B.to(device=self.weight.device, dtype=wide) @ lora_A.to(device=self.weight.device,
                                                                                           dtype=wide))

    @torch.no_grad()
    def merge(self) -> None:
        """Fold the adapter into the base weight (W += s·B·A, computed in float32). In bf16 / fp16 the merged
        weight is rounded to that dtype, so unmerge() restores W only to within that rounding."""
        if self.merged:
            return
        self._add_to_base(self.delta_weight())
        self.merged = True
        # Kept (r · (in + out) elements) so unmerge() subtracts exactly what was added, even if lora_A / lora_B
        # change in place meanwhile (an optimizer step, a copy_).
        self._merged_lora_A, self._merged_lora_B = self.lora_A.detach().clone(), self.lora_B.detach().clone()

    @torch.no_grad()
    def unmerge(self) -> None:
        """Undo merge(): W -= s·B·A with the B, A that merge() folded in, so W comes back even if lora_A / lora_B
        changed in place since (exact in float32 up to rounding; see merge() for 16-bit weights)."""
        if not self.merged:
            return
        merged_A, merged_B = getattr(self, "_merged_lora_A", None), getattr(self, "_merged_lora_B", None)
        if merged_A is None:  # merged flag set by hand, or a layer pickled before the factors were kept
            merged_A, merged_B = self.lora_A, self.lora_B
        self._add_to_base(-self._delta(merged_A, merged_B))
        self.merged = False
        self._merged_lora_A = self._merged_lora_B = None

    def _add_to_base(self, delta: torch.Tensor) -> None:
        weight = self.base_weight()
        weight.copy_((weight.to(delta.dtype) + delta).to(weight.dtype))

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain nn.Linear computing this layer's current function (the adapter merged in)."""
        merged_weight = self.base_weight().to(self.delta_weight().dtype)
        if not self.merged:
            merged_weight = merged_weight + self.delta_weight()
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device=self.weight.device, dtype=self.weight.dtype)
        linear.weight.copy_(merged_weight)
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    @torch.no_grad()
    def to_conv1d(self) -> nn.Module:
        """A transformers Conv1D computing this layer's current function (fan_in_fan_out layers)."""
        from transformers.pytorch_utils import Conv1D

        linear = self.to_linear()
        conv = Conv1D(self.out_features, self.in_features).to(device=linear.weight.device, dtype=linear.weight.dtype)
        conv.weight.copy_(linear.weight.t())
        if linear.bias is not None:
            conv.bias.copy_(linear.bias)
        else:
            conv.bias = None
        return conv

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
            f"r={self.r}, alpha={self.alpha}, dropout={self.dropout_p}, use_rslora={self.use_rslora}, "
            f"fan_in_fan_out={self.fan_in_fan_out}, backend={self.backend!r}, merged={self.merged}"
        )
