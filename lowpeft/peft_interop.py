# PEFT interop: from_peft(peft_model) makes a PeftModel's LoRA Linear layers run lowpeft's fused op, in place;
# register_fused_layers(lora_config) makes PEFT itself build fused layers (its custom-module route).
#
# Trade-off: a swapped layer stays a peft.tuners.lora.Linear (its class becomes a subclass that only overrides
# forward), so parameter names, state dicts, save_pretrained, merge/unmerge, set_adapter, disable_adapter and
# add_adapter are PEFT's own code and behave exactly as before; only the adapted forward changes. What the
# fused op cannot express is a clear error, never a quiet fall-back: mixed-batch inference (adapter_names=)
# and several simultaneously active adapters with dropout raise; layers with a LoRA variant (DoRA, ...) are
# left to PEFT with a one-time warning. Disabled or merged adapters run the base layer alone, as in PEFT.
from __future__ import annotations

import warnings
import torch
from torch import nn

from .model import is_linear_like
from .ops import _dispatch
from .ops.lora_linear import lora_linear

__all__ = ["from_peft", "to_peft", "register_fused_layers", "FusedLoraLinear"]

_FUSED_CLASS: dict = {}
_WARNED = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        warnings.warn(message, stacklevel=3)


def _dropout_p(module: nn.Module, adapter: str) -> float:
    if isinstance(module, nn.Identity):
        return 0.0
    if isinstance(module, nn.Dropout):
        return float(module.p)
    raise NotImplementedError(
        f"lowpeft: adapter {adapter!r} uses dropout module {type(module).__name__}; the fused op implements "
        "nn.Dropout and nn.Identity"
    )


def _fused_forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    if kwargs.get("adapter_names") is not None:
        raise NotImplementedError(
            "lowpeft: mixed-batch inference (adapter_names=...) is not fused; call lowpeft.peft_interop.to_peft(model) "
            "to run PEFT's own layers for it"
        )
    active = [name for name in self.active_adapters if name in self.lora_A]
    if self.disable_adapters or self.merged or not active:
        return _FUSED_CLASS["peft"].forward(self, x, *args, **kwargs)
    if not _is_plain_base(self):
        # The fused op reads the base's weight: a base with a forward of its own (quantized, fake-quantized, any
        # nn.Linear subclass PEFT's custom-module route hands here) runs PEFT's layer instead, said once.
        _warn_once(f"base:{type(self.get_base_layer()).__qualname__}",
                   f"lowpeft: LoRA on a {type(self.get_base_layer()).__qualname__} base runs PEFT's own forward, not "
                   "the fused op (which reads the weight and would skip the base's forward)")
        return _FUSED_CLASS["peft"].forward(self, x, *args, **kwargs)
    extra = [key for key, value in kwargs.items() if value is not None and key != "adapter_names"]
    if args or extra:
        raise TypeError(f"lowpeft: fused LoRA layer got extra arguments {extra or len(args)}; it takes x only")
    variants = [name for name in active if name in self.lora_variant]
    if variants:
        raise NotImplementedError(
            f"lowpeft: adapters {variants} use a LoRA variant ({', '.join(type(self.lora_variant[n]).__name__ for n in variants)}) "
            "that lowpeft does not fuse; call lowpeft.peft_interop.to_peft(model) to run PEFT's layers"
        )
    base = self.get_base_layer()
    weight = base.weight.t() if self.fan_in_fan_out else base.weight
    bias = base.bias
    dtype = weight.dtype
    probabilities = [_dropout_p(self.lora_dropout[name], name) for name in active]
    if len(active) == 1:
        name = active[0]
        lora_A = self.lora_A[name].weight.to(dtype)
        lora_B = self.lora_B[name].weight.to(dtype)
        scaling = float(self.scaling[name])
        dropout_p = probabilities[0]
    else:
        if any(p > 0.0 for p in probabilities):
            raise NotImplementedError(
                f"lowpeft: several active adapters {active} with dropout {probabilities}: PEFT draws an independent "
                "mask per adapter, which the fused op does not; use one active adapter or dropout 0"
            )
        lora_A = torch.cat([self.lora_A[name].weight.to(dtype) for name in active])
        lora_B = torch.cat([self.lora_B[name].weight.to(dtype) * self.scaling[name] for name in active], dim=1)
        scaling, dropout_p = 1.0, 0.0
    for name in active:
        b_bias = self.lora_B[name].bias
        if b_bias is not None:
            extra_bias = b_bias.to(dtype) * self.scaling[name]
            bias = extra_bias if bias is None else bias + extra_bias
    return lora_linear(x, weight, bias, lora_A, lora_B, scaling, dropout_p, self.training,
                       backend=getattr(self, "lowpeft_backend", "auto"))


def _fused_class() -> type:
    """peft.tuners.lora.Linear with lowpeft's forward (built on first use: importing lowpeft never imports peft)."""
    if "class" not in _FUSED_CLASS:
        from peft.tuners.lora.layer import Linear as PeftLoraLinear

        fused = type("FusedLoraLinear", (PeftLoraLinear,), {
            "__module__": __name__,
            "__doc__": "A PEFT LoRA Linear layer whose forward runs lowpeft's fused lora_linear op.",
            "forward": _fused_forward,
            "lowpeft_backend": "auto",
        })
        _FUSED_CLASS["class"], _FUSED_CLASS["peft"] = fused, PeftLoraLinear
    return _FUSED_CLASS["class"]


def __getattr__(name: str):
    if name == "FusedLoraLinear":
        return _fused_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _is_plain_base(layer) -> bool:
    """A base the fused op computes exactly: the rule lowpeft.apply adapts by (model.is_linear_like)."""
    return is_linear_like(layer.get_base_layer())


def from_peft(peft_model: nn.Module, backend: str = "auto") -> nn.Module:
    """Make every LoRA Linear layer of `peft_model` (a PeftModel, or any module holding PEFT LoRA layers) run
    lowpeft's fused op, in place; returns `peft_model`. Parameter names, save_pretrained output and PEFT's
    adapter management are unchanged. Layers using a LoRA variant (DoRA, ...) or a base layer other than
    nn.Linear / Conv1D (quantized layers) stay PEFT's, with a one-time warning."""
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    if not isinstance(peft_model, nn.Module):
        raise TypeError(f"peft_model: expected a peft.PeftModel (an nn.Module), got {type(peft_model).__name__}")
    backend = _dispatch._check_name(backend)
    fused = _fused_class()
    swapped, kept = 0, {}
    for name, module in peft_model.named_modules():
        if not isinstance(module, PeftLoraLinear):
            continue
        if type(module) not in (PeftLoraLinear, fused):
            kept[name] = type(module).__name__
            continue
        if module.lora_variant:
            kept[name] = "LoRA variant " + ", ".join(type(v).__name__ for v in module.lora_variant.values())
            continue
        if not _is_plain_base(module):
            kept[name] = f"base layer {type(module.get_base_layer()).__name__}"
            continue
        module.__class__ = fused
        module.lowpeft_backend = backend
        swapped += 1
    if kept:
        reasons = sorted(set(kept.values()))
        _warn_once(
            "kept:" + "|".join(reasons),
            f"lowpeft.from_peft: {len(kept)} LoRA layers stay PEFT's own ({'; '.join(reasons)}), e.g. "
            f"{next(iter(kept))!r}; they run unfused",
        )
    if swapped == 0 and not kept:
        raise ValueError(
            f"peft_model: found no PEFT LoRA Linear layer in {type(peft_model).__name__} (expected a PeftModel "
            "built with a LoraConfig)"
        )
    return peft_model


def to_peft(peft_model: nn.Module) -> nn.Module:
    """Undo from_peft: every fused layer runs PEFT's own forward again (in place)."""
    from peft.tuners.lora.layer import Linear as PeftLoraLinear

    fused = _fused_class()
    for module in peft_model.modules():
        if type(module) is fused:
            module.__class__ = PeftLoraLinear
    return peft_model


def register_fused_layers(lora_config):
    """Make PEFT build fused layers itself: registers lowpeft's layer for nn.Linear targets in `lora_config`
    (PEFT's experimental custom-module mapping), so get_peft_model(model, lora_config) needs no from_peft.
    Conv1D targets (GPT-2) are left to PEFT's dispatcher, which sets their fan_in_fan_out; use from_peft for
    them. Returns lora_config."""
    from peft import LoraConfig

    if not isinstance(lora_config, LoraConfig):
        raise TypeError(f"lora_config: expected a peft.LoraConfig, got {type(lora_config).__name__}")
    if lora_config.use_dora:
        raise ValueError("lora_config: use_dora=True; lowpeft does not fuse DoRA, so its layers cannot be registered")
    lora_config._register_custom_module({nn.Linear: _fused_class()})
    return lora_config
