# lowpeft.ops.bottleneck_adapter: out = h + s · (act(h W_downᵀ + b_down) W_upᵀ + b_up) as the torch.library ops
# lowpeft::bottleneck_adapter (forward, differentiable; returns (out, z)) and lowpeft::bottleneck_adapter_backward,
# with per-backend kernels.
#
# Trade-off: the public function checks arguments, flattens leading dimensions (a view whenever strides allow)
# and handles autocast, then calls one opaque op whose `backend` argument is already resolved (under
# torch.compile the custom op; in eager mode an autograd.Function running the very same backend functions, or for
# the compiled backends lowpeft::native_bottleneck_adapter whose autograd is C++, because the custom op's Python
# dispatch costs several times more host time per call). The op saves h
# itself (no copy) and the small pre-activation z [T, M] (float32, or float64 for float64 inputs) instead of
# the activation a or anything [T, D]-sized, so the backward recomputes act(z) and act'(z) on the fly; z is
# marked non-differentiable (it is a saved intermediate, not a result). Gradients are computed only for the
# inputs that require them.
from __future__ import annotations

import math
from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import _extension, reference
from . import _dispatch
from ._torch_rules import autocast_cast, autocast_dtype, refuse_double_backward

__all__ = ["bottleneck_adapter", "saved_dtype", "MAX_TRITON_BOTTLENECK", "AUTO_TRITON_MAX_BOTTLENECK",
           "AUTO_TRITON_MAX_WIDE_WORK", "adapter_auto_order"]

MAX_TRITON_BOTTLENECK = 256  # = lowpeft.kernels.bottleneck_adapter.MAX_BOTTLENECK (not imported: it imports triton)
# backend="auto" on CUDA, by bottleneck width M and the call's work tokens · dim · M (H100, bf16, fwd + bwd, graph
# timing, benchmarks/results/run78_adapter_wide_h100.md): up to M = 64 the triton kernels are fastest everywhere
# (8192 x 4096: 0.227 ms against the cuda backend's 0.267). Wider, triton's wide path (its GEMM tiles in bottleneck
# chunks, dW by torch.mm) still wins on small work (4096 x 1024, M = 256: 0.076 against 0.094 ms; 8192 x 4096,
# M = 128, 2³² exactly: 0.267 against 0.299), and the cuda backend's cuBLAS GEMMs win on large work (8192 x 4096,
# M = 256: 0.327 against 0.352 ms; 16384 x 8192, M = 128: 0.877 against 0.911).
AUTO_TRITON_MAX_BOTTLENECK = 64
AUTO_TRITON_MAX_WIDE_WORK = 2**32


def adapter_auto_order(device_type: str, bottleneck: int, dtype: torch.dtype | None = None,
                       work: int | None = None) -> tuple[str, ...] | None:
    """The fastest-first backend order that backend="auto" tries for an adapter of this bottleneck width, dtype and
    work (tokens · dim · bottleneck; None: unknown, taken as large) on this device type (None: the device's
    default order, triton first on CUDA). The triton kernels take bottlenecks up to MAX_TRITON_BOTTLENECK and no
    float64 on CUDA (an explicit backend="triton" says so)."""
    if device_type != "cuda":
        return None
    if dtype == torch.float64 or bottleneck > MAX_TRITON_BOTTLENECK:
        return ("cuda", "torch")
    if bottleneck > AUTO_TRITON_MAX_BOTTLENECK and (work is None or work > AUTO_TRITON_MAX_WIDE_WORK):
        return ("cuda", "triton", "torch")
    return None


def saved_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the saved pre-activation z: float32 for 16-bit inputs, else the inputs' own."""
    return torch.promote_types(dtype, torch.float32)


# ----------------------------------------------------------------------------------------------------
# torch backend: plain PyTorch in the inputs' dtype (the eager adapter a user would write by hand).
# ----------------------------------------------------------------------------------------------------
def _torch_forward(h, down_weight, down_bias, up_weight, up_bias, activation, scale):
    z = h @ down_weight.t() if down_bias is None else torch.addmm(down_bias, h, down_weight.t())
    a = reference.activation_forward(z, activation)
    up = a @ up_weight.t() if up_bias is None else torch.addmm(up_bias, a, up_weight.t())
    return torch.add(h, up, alpha=scale), z.to(saved_dtype(h.dtype))


def _torch_backward(grad_out, h, down_weight, down_bias, up_weight, z, activation, scale, needs):
    need_dh, need_d_down_w, need_d_down_b, need_d_up_w, need_d_up_b = needs
    dh = d_down_w = d_down_b = d_up_w = d_up_b = None
    if need_dh or need_d_down_w or need_d_down_b:
        # act'(z) on the saved z (float32 for 16-bit inputs, exactly the forward's z), as eager autograd's activation
        # backward computes internally: gelu_tanh's closed form overflows in float16 past |z| ≈ 700 (Inf · 0 = NaN).
        d_z = ((grad_out @ up_weight).to(z.dtype) * reference.activation_derivative(z, activation) * scale).to(h.dtype)
        if need_dh:
            dh = torch.addmm(grad_out, d_z, down_weight)
        if need_d_down_w:
            d_down_w = d_z.t() @ h
        if need_d_down_b:
            d_down_b = d_z.sum(0)
    if need_d_up_w:
        d_up_w = (grad_out.t() @ reference.activation_forward(z.to(h.dtype), activation)) * scale
    if need_d_up_b:
        d_up_b = grad_out.sum(0) * scale
    return dh, d_down_w, d_down_b, d_up_w, d_up_b


# ----------------------------------------------------------------------------------------------------
# triton and compiled-extension backends (imported lazily: `import lowpeft` loads neither).
# ----------------------------------------------------------------------------------------------------
def _triton_forward(*args):
    from ..kernels.bottleneck_adapter import bottleneck_adapter_fwd

    return bottleneck_adapter_fwd(*args)


def _triton_backward(*args):
    from ..kernels.bottleneck_adapter import bottleneck_adapter_bwd

    return bottleneck_adapter_bwd(*args)


def _native_forward(h, down_weight, down_bias, up_weight, up_bias, activation, scale):
    _extension.load()
    return torch.ops.lowpeft.native_bottleneck_adapter_fwd(
        h, down_weight, down_bias, up_weight, up_bias, activation, scale
    )


def _native_backward(grad_out, h, down_weight, down_bias, up_weight, z, activation, scale, needs):
    _extension.load()
    outs = torch.ops.lowpeft.native_bottleneck_adapter_bwd(
        grad_out, h, down_weight, down_bias, up_weight, z, activation, scale, list(needs)
    )
    return tuple(out if need else None for out, need in zip(outs, needs))


_FORWARD = {"torch": _torch_forward, "triton": _triton_forward, "cpu": _native_forward, "cuda": _native_forward}
_BACKWARD = {"torch": _torch_backward, "triton": _triton_backward, "cpu": _native_backward, "cuda": _native_backward}


# ----------------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------------
@torch.library.custom_op("lowpeft::bottleneck_adapter", mutates_args=())
def _bottleneck_adapter_op(
    h: Tensor,
    down_weight: Tensor,
    down_bias: Optional[Tensor],
    up_weight: Tensor,
    up_bias: Optional[Tensor],
    activation: str,
    scale: float,
    backend: str,
) -> tuple[Tensor, Tensor]:
    out, z = _FORWARD[backend](h, down_weight, down_bias, up_weight, up_bias, activation, scale)
    return out, z


@_bottleneck_adapter_op.register_fake
def _bottleneck_adapter_fake(h, down_weight, down_bias, up_weight, up_bias, activation, scale, backend):
    out = h.new_empty(h.shape[0], up_weight.shape[0])
    z = h.new_empty(h.shape[0], down_weight.shape[0], dtype=saved_dtype(h.dtype))
    return out, z


@torch.library.custom_op("lowpeft::bottleneck_adapter_backward", mutates_args=())
def _bottleneck_adapter_backward_op(
    grad_out: Tensor,
    h: Tensor,
    down_weight: Tensor,
    down_bias: Optional[Tensor],
    up_weight: Tensor,
    z: Tensor,
    activation: str,
    scale: float,
    needs: Sequence[bool],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _BACKWARD[backend](grad_out, h, down_weight, down_bias, up_weight, z, activation, scale, tuple(needs))
    # Unneeded gradients come back as empty tensors (a torch.library op cannot return None).
    return tuple(g if g is not None else grad_out.new_empty(0) for g in grads)


@_bottleneck_adapter_backward_op.register_fake
def _bottleneck_adapter_backward_fake(grad_out, h, down_weight, down_bias, up_weight, z, activation, scale, needs,
                                      backend):
    like = (h, down_weight, down_weight, up_weight, up_weight)
    shapes = (h.shape, down_weight.shape, down_weight.shape[:1], up_weight.shape, up_weight.shape[:1])
    return tuple(
        tensor.new_empty(shape if need else (0,)) for tensor, shape, need in zip(like, shapes, needs)
    )


def _save_for_backward(ctx, inputs, z):
    h, down_weight, down_bias, up_weight, up_bias, activation, scale, backend = inputs
    ctx.save_for_backward(h, down_weight, down_bias, up_weight, z)
    ctx.activation, ctx.scale, ctx.backend = activation, scale, backend
    needs = ctx.needs_input_grad
    ctx.needs = (
        needs[0], needs[1], down_bias is not None and needs[2], needs[3], up_bias is not None and needs[4]
    )


def _setup_context(ctx, inputs, output):
    _, z = output
    ctx.mark_non_differentiable(z)
    _save_for_backward(ctx, inputs, z)


def _backward(ctx, grad_out, grad_z):
    refuse_double_backward("bottleneck_adapter")
    h, down_weight, down_bias, up_weight, z = ctx.saved_tensors
    if not any(ctx.needs):
        return (None,) * 8
    grads = torch.ops.lowpeft.bottleneck_adapter_backward(
        grad_out.contiguous() if grad_out.stride(-1) != 1 else grad_out,
        h, down_weight, down_bias, up_weight, z, ctx.activation, ctx.scale, list(ctx.needs), ctx.backend,
    )
    return tuple(g if need else None for g, need in zip(grads, ctx.needs)) + (None, None, None)


torch.library.register_autograd("lowpeft::bottleneck_adapter", _backward, setup_context=_setup_context)


class _EagerBottleneckAdapter(torch.autograd.Function):
    """The same forward / backward as the custom op, for eager calls: torch.library's Python dispatch and
    autograd wrapping cost several times an autograd.Function's host time (measured ~4x), which at small
    shapes is the whole step. Under torch.compile the public function calls the custom op instead. It returns out
    alone (z is saved, not returned): a non-differentiable second output would get a materialised [T, M] zero
    gradient, one fill kernel per backward."""

    @staticmethod
    def forward(ctx, h, down_weight, down_bias, up_weight, up_bias, activation, scale, backend):
        # h [..., dim] is flattened here, inside the Function, so the graph gets no reshape nodes; out comes back
        # through _unsafe_view, not as a view (FSDP2 warns about module outputs that are views).
        h_rows = h if h.dim() == 2 else h.reshape(-1, h.shape[-1])
        out, z = _FORWARD[backend](h_rows, down_weight, down_bias, up_weight, up_bias, activation, scale)
        _save_for_backward(ctx, (h_rows, down_weight, down_bias, up_weight, up_bias, activation, scale, backend), z)
        ctx.h_shape = h.shape
        return out if h.dim() == 2 else torch.ops.aten._unsafe_view(out, h.shape)

    @staticmethod
    def backward(ctx, grad_out):
        refuse_double_backward("bottleneck_adapter")
        h, down_weight, down_bias, up_weight, z = ctx.saved_tensors
        if not any(ctx.needs):
            return (None,) * 8
        grad_out = grad_out if grad_out.dim() == 2 else grad_out.reshape(-1, grad_out.shape[-1])
        dh, *weight_grads = _BACKWARD[ctx.backend](
            grad_out.contiguous() if grad_out.stride(-1) != 1 else grad_out,
            h, down_weight, down_bias, up_weight, z, ctx.activation, ctx.scale, ctx.needs,
        )
        if dh is not None and len(ctx.h_shape) != 2:
            dh = torch.ops.aten._unsafe_view(dh, ctx.h_shape)
        return (dh, *weight_grads, None, None, None)


# ----------------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------------
def _check_tensor(name, value, ndim, expected_shape_text):
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor {expected_shape_text}, got shape {tuple(value.shape)}")


def _check_inputs(h, down_weight, down_bias, up_weight, up_bias, activation, scale):
    if not isinstance(h, Tensor):
        raise TypeError(f"h: expected a torch.Tensor, got {type(h).__name__}")
    if h.dim() < 1:
        raise ValueError("h: expected at least 1 dimension [..., dim], got a 0-d tensor")
    _check_tensor("down_weight", down_weight, 2, "[bottleneck, dim]")
    _check_tensor("up_weight", up_weight, 2, "[dim, bottleneck]")
    bottleneck, dim = down_weight.shape
    if h.shape[-1] != dim:
        raise ValueError(f"h: expected last dimension dim={dim} (down_weight's columns), got shape {tuple(h.shape)}")
    if bottleneck < 1:
        raise ValueError(f"down_weight: expected at least 1 row (the bottleneck), got shape {tuple(down_weight.shape)}")
    if tuple(up_weight.shape) != (dim, bottleneck):
        raise ValueError(f"up_weight: expected shape [{dim}, {bottleneck}], got {tuple(up_weight.shape)}")
    named = [("h", h), ("down_weight", down_weight), ("up_weight", up_weight)]
    for name, value, size in (("down_bias", down_bias, bottleneck), ("up_bias", up_bias, dim)):
        if value is not None:
            _check_tensor(name, value, 1, f"[{size}]")
            if value.shape[0] != size:
                raise ValueError(f"{name}: expected shape [{size}], got {tuple(value.shape)}")
            named.append((name, value))
    for name, value in named:
        if not value.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
        if value.dtype != h.dtype:
            raise TypeError(f"{name}: expected dtype {h.dtype} (h's dtype), got {value.dtype}")
        if value.device != h.device:
            raise ValueError(f"{name}: expected a tensor on {h.device} (h's device), got one on {value.device}")
    if activation not in reference.ACTIVATIONS:
        raise ValueError(f"activation: expected one of {reference.ACTIVATIONS}, got {activation!r}")
    # Finite as comparisons, not math.isfinite: under torch.compile(dynamic=True) a module's float attribute arrives
    # symbolic, math.isfinite of it is not traceable, and a comparison only adds a guard.
    if isinstance(scale, bool) or not isinstance(scale, (int, float)):
        raise TypeError(f"scale: expected a finite float, got {type(scale).__name__} {scale!r}")
    if not abs(scale) < math.inf:
        raise ValueError(f"scale: expected a finite float, got {scale!r}")


def bottleneck_adapter(
    h: Tensor,
    down_weight: Tensor,
    down_bias: Optional[Tensor],
    up_weight: Tensor,
    up_bias: Optional[Tensor],
    activation: str = "gelu",
    scale: float = 1.0,
    *,
    backend: str = "auto",
) -> Tensor:
    """Fused bottleneck adapter (Houlsby / Pfeiffer):
    h + scale · (act(h down_weightᵀ + down_bias) up_weightᵀ + up_bias).

    h: [..., dim]; down_weight: [bottleneck, dim]; down_bias: [bottleneck] or None; up_weight: [dim, bottleneck];
    up_bias: [dim] or None; activation: "gelu" (erf form), "gelu_tanh", "relu" or "silu". Gradients flow to every
    input that requires grad. The triton backend takes bottlenecks up to 256.
    """
    dtype = autocast_dtype(h)
    if dtype is not None:
        h, down_weight, down_bias, up_weight, up_bias = (autocast_cast(t, dtype)
                                                         for t in (h, down_weight, down_bias, up_weight, up_bias))
    _check_inputs(h, down_weight, down_bias, up_weight, up_bias, activation, scale)
    bottleneck = down_weight.shape[0]
    name = _dispatch.resolve(backend, h.device,
                             auto_order=adapter_auto_order(h.device.type, bottleneck, h.dtype, h.numel() * bottleneck))
    if name == "triton" and bottleneck > MAX_TRITON_BOTTLENECK:
        raise ValueError(
            f"down_weight: the triton backend takes a bottleneck of at most {MAX_TRITON_BOTTLENECK}, got "
            f"{bottleneck} (use backend='cuda' or 'torch', or a narrower bottleneck)"
        )
    compiling = torch.compiler.is_compiling()
    if not compiling and name in _dispatch.COMPILED_BACKENDS:
        # lowpeft::native_bottleneck_adapter's autograd is C++ (csrc/autograd/bottleneck_adapter.cpp): one
        # dispatcher call forward, no Python in the backward, and h of any rank flattened there.
        _extension.load()
        return torch.ops.lowpeft.native_bottleneck_adapter(
            h, down_weight, down_bias, up_weight, up_bias, activation, float(scale)
        )
    if not compiling:
        return _EagerBottleneckAdapter.apply(h, down_weight, down_bias, up_weight, up_bias, activation, float(scale),
                                             name)
    flat = h.dim() == 2
    h2 = h if flat else h.reshape(-1, h.shape[-1])
    out, _ = torch.ops.lowpeft.bottleneck_adapter(
        h2, down_weight, down_bias, up_weight, up_bias, activation, float(scale), name
    )
    # A 2-D input gets the op's own output (not a view: FSDP2 warns about module outputs that are views).
    return out if flat else out.reshape(*h.shape[:-1], h.shape[-1])
