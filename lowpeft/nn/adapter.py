# BottleneckAdapter (Houlsby / Pfeiffer bottleneck adapter) and AdapterLinear (a frozen Linear followed by an
# adapter on its output), computed by the fused op lowpeft.ops.bottleneck_adapter.
#
# Parameters (stable names, used by AdapterConfig / apply / save_adapter):
#   BottleneckAdapter: down_weight [bottleneck, dim], down_bias [bottleneck], up_weight [dim, bottleneck],
#                      up_bias [dim]  (the op's argument names; the biases are absent with bias=False)
#   AdapterLinear:     weight, bias (the wrapped Linear's own Parameters, shared, frozen by default) and
#                      adapter.down_weight / adapter.down_bias / adapter.up_weight / adapter.up_bias
# Trade-off: the adapter holds flat Parameters rather than two nn.Linear children, so "all-linear" targeting
# never mistakes an adapter's projections for model layers; AdapterLinear keeps nn.Linear's state-dict keys
# (weight, bias) so the original checkpoint still loads. The adapter computes in its input's dtype: parameters
# kept in a wider dtype (adapter_dtype) are cast at each call, four small [bottleneck × dim] casts.
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .. import reference
from ..ops import _dispatch
from ..ops.bottleneck_adapter import bottleneck_adapter

__all__ = ["BottleneckAdapter", "AdapterLinear", "ADAPTER_INITS"]

ADAPTER_INITS = ("identity", "bert")


def _check_hyperparameters(dim, bottleneck, activation, scale, init, bias):
    for name, value in (("dim", dim), ("bottleneck", bottleneck)):
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
        if value <= 0:
            raise ValueError(f"{name}: expected a positive int, got {value}")
    if activation not in reference.ACTIVATIONS:
        raise ValueError(f"activation: expected one of {reference.ACTIVATIONS}, got {activation!r}")
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale: expected a finite number, got {type(scale).__name__} {scale!r}")
    if not math.isfinite(scale):
        raise ValueError(f"scale: expected a finite number, got {scale!r}")
    if init not in ADAPTER_INITS:
        raise ValueError(f"init: expected one of {ADAPTER_INITS}, got {init!r}")
    if not isinstance(bias, bool):
        raise TypeError(f"bias: expected a bool, got {type(bias).__name__} {bias!r}")


def _merge_error(kind: str) -> TypeError:
    return TypeError(
        f"{kind} cannot be merged: a bottleneck adapter applies a non-linear activation between its two "
        "projections, so it is not a weight delta; keep it unmerged (use LoRA for mergeable adapters)"
    )


class BottleneckAdapter(nn.Module):
    """out = h + scale · (act(h down_weightᵀ + down_bias) up_weightᵀ + up_bias), on h of shape [..., dim].

    init="identity" (default): down projection Kaiming-uniform as nn.Linear, up projection and biases zero, so a
    fresh adapter is exactly the identity. init="bert": AdapterHub's BERT init, every weight N(0, 0.02²) and
    biases zero. activation: "gelu" (erf form), "gelu_tanh", "relu" or "silu". backend: "auto", "triton",
    "cuda", "cpu" or "torch".
    """

    def __init__(
        self,
        dim: int,
        bottleneck: int = 64,
        activation: str = "gelu",
        scale: float = 1.0,
        init: str = "identity",
        bias: bool = True,
        backend: str = "auto",
        device=None,
        dtype=None,
    ):
        super().__init__()
        _check_hyperparameters(dim, bottleneck, activation, scale, init, bias)
        factory = {"device": device, "dtype": dtype}
        self.dim, self.bottleneck = dim, bottleneck
        self.activation, self.scale, self.init = activation, float(scale), init
        self.backend = backend
        self.down_weight = nn.Parameter(torch.empty(bottleneck, dim, **factory))
        self.down_bias = nn.Parameter(torch.empty(bottleneck, **factory)) if bias else None
        self.up_weight = nn.Parameter(torch.empty(dim, bottleneck, **factory))
        self.up_bias = nn.Parameter(torch.empty(dim, **factory)) if bias else None
        self.reset_parameters()

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        self._backend = _dispatch._check_name(name)

    @property
    def merged(self) -> bool:
        """Always False: a bottleneck adapter cannot be merged (see merge())."""
        return False

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Re-initialise with this adapter's `init` ("identity" or "bert")."""
        if self.init == "bert":
            nn.init.normal_(self.down_weight, mean=0.0, std=0.02)
            nn.init.normal_(self.up_weight, mean=0.0, std=0.02)
        else:
            nn.init.kaiming_uniform_(self.down_weight, a=math.sqrt(5))
            nn.init.zeros_(self.up_weight)
        for bias in (self.down_bias, self.up_bias):
            if bias is not None:
                nn.init.zeros_(bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        compute_dtype = h.dtype if isinstance(h, torch.Tensor) else self.down_weight.dtype

        def cast(param):
            return None if param is None else param.to(compute_dtype)

        return bottleneck_adapter(
            h, cast(self.down_weight), cast(self.down_bias), cast(self.up_weight), cast(self.up_bias),
            self.activation, self.scale, backend=self.backend,
        )

    def merge(self) -> None:
        raise _merge_error("BottleneckAdapter")

    def unmerge(self) -> None:
        """Nothing to undo: a bottleneck adapter is never merged."""

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, bottleneck={self.bottleneck}, activation={self.activation!r}, scale={self.scale}, "
            f"bias={self.down_bias is not None}, init={self.init!r}, backend={self.backend!r}"
        )


class AdapterLinear(nn.Module):
    """A Linear layer followed by a bottleneck adapter on its output (Houlsby placement):
    y = adapter(x Wᵀ + b). The Linear's weight and bias are shared with the wrapped layer (no copy), keep their
    state-dict keys `weight` / `bias`, and are frozen unless freeze_base=False; the adapter lives in `.adapter`.

    Keyword arguments after `linear`: bottleneck, activation, scale, init, bias (adapter biases), backend,
    adapter_dtype (the adapter parameters' dtype, default the Linear weight's), freeze_base.
    """

    def __init__(
        self,
        linear: nn.Linear,
        bottleneck: int = 64,
        activation: str = "gelu",
        scale: float = 1.0,
        init: str = "identity",
        bias: bool = True,
        backend: str = "auto",
        *,
        adapter_dtype=None,
        freeze_base: bool = True,
    ):
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear: expected a torch.nn.Linear, got {type(linear).__name__}")
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        if freeze_base:
            self.weight.requires_grad_(False)
            if self.bias is not None:
                self.bias.requires_grad_(False)
        self.adapter = BottleneckAdapter(
            self.out_features, bottleneck, activation, scale, init, bias, backend,
            device=self.weight.device, dtype=adapter_dtype or self.weight.dtype,
        )

    @classmethod
    def from_linear(cls, linear: nn.Linear, bottleneck: int = 64, activation: str = "gelu",
                    **kwargs) -> "AdapterLinear":
        """Wrap `linear`, sharing its weight and bias Parameters (no copy); keyword arguments as AdapterLinear."""
        return cls(linear, bottleneck, activation, **kwargs)

    @property
    def backend(self) -> str:
        return self.adapter.backend

    @backend.setter
    def backend(self, name: str) -> None:
        self.adapter.backend = name

    @property
    def merged(self) -> bool:
        """Always False: a bottleneck adapter cannot be merged (see merge())."""
        return False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.adapter(F.linear(x, self.weight, self.bias))

    def merge(self) -> None:
        raise _merge_error("AdapterLinear")

    def unmerge(self) -> None:
        """Nothing to undo: a bottleneck adapter is never merged."""

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """The wrapped Linear alone (the adapter dropped), sharing this layer's weight and bias."""
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None,
                           device="meta", dtype=self.weight.dtype)
        linear.weight = self.weight
        linear.bias = self.bias
        return linear

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"
