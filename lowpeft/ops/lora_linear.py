# lowpeft.ops.lora_linear: y = x Wᵀ + b + s · (dropout(x) Aᵀ) Bᵀ as the torch.library ops
# lowpeft::lora_linear (forward, differentiable) and lowpeft::lora_linear_backward, with per-backend kernels.
#
# Trade-off: the public function checks arguments, flattens leading dimensions (a view whenever strides
# allow), handles autocast and draws the dropout seed, then runs the resolved backend. Under torch.compile it
# calls the opaque torch.library op (no graph break, fake kernels for shapes); in eager mode it calls the
# same backend functions through a plain autograd.Function (LoRALinearFunction), or for the compiled backends
# through lowpeft::native_lora_linear whose autograd is C++, because the torch.library Python dispatch path
# costs hundreds of microseconds per call, which small layers cannot afford. Both save
# only x (no copy), the small shrink S = dropout(x) Aᵀ [T, r] (float32, or float64 for float64 inputs) and
# the seed, so the dropout mask is regenerated in backward and never stored. Gradients of the frozen weight
# and bias are computed only when they require grad.
from __future__ import annotations

import math
import os
from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import _extension, reference
from . import _dispatch
from ._torch_rules import autocast_cast, autocast_dtype, refuse_double_backward

__all__ = ["lora_linear", "draw_dropout_seed"]

_NO_DROPOUT_SEED = torch.zeros((), dtype=torch.int64)


def shrink_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype of the saved shrink S: float32 for 16-bit inputs, else the inputs' own (float32 / float64)."""
    return torch.promote_types(dtype, torch.float32)


def _capturing_cuda_graph(x: Tensor) -> bool:
    """Whether x's CUDA stream is being captured into a CUDA graph (outside torch.compile's tracing)."""
    return x.is_cuda and not torch.compiler.is_compiling() and torch.cuda.is_current_stream_capturing()


def draw_dropout_seed() -> Tensor:
    """A fresh dropout seed from torch's default CPU generator (so torch.manual_seed reproduces a run and
    activation checkpointing, which restores the RNG state, replays the same mask)."""
    return torch.randint(0, 2**31 - 1, (), dtype=torch.int64)


def call_seed(x: Tensor, effective_p: float, seed: Optional[Tensor]) -> Tensor:
    """The dropout seed of one call: `seed` when given, else a drawn one (a fixed zero without dropout). Under CUDA
    graph capture dropout needs an explicit seed (ValueError): a drawn one would be replayed with the graph."""
    if seed is not None:
        return seed
    if effective_p > 0.0 and _capturing_cuda_graph(x):
        raise ValueError(
            "seed: dropout under CUDA graph capture needs an explicit seed, got none (one drawn on the host at "
            "capture time would make every replay reuse one dropout mask); pass seed= to accept a fixed mask, "
            "or capture with dropout_p=0 / training=False")
    return draw_dropout_seed() if effective_p > 0.0 else _NO_DROPOUT_SEED


# ----------------------------------------------------------------------------------------------------
# torch backend: plain PyTorch in the inputs' dtype (the "eager LoRA" a user would write by hand).
# ----------------------------------------------------------------------------------------------------
def _torch_mask(seed: int, x: Tensor, dropout_p: float) -> Tensor:
    keep = reference.dropout_keep_mask(seed, x.shape[0], x.shape[1], dropout_p, device=x.device)
    return keep.to(x.dtype) / (1.0 - dropout_p)


def _torch_forward(x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed):
    x_dropped = x if dropout_p == 0.0 else x * _torch_mask(seed, x, dropout_p)
    shrink = x_dropped @ lora_A.t()
    y = x @ weight.t() if bias is None else torch.addmm(bias, x, weight.t())
    y.addmm_(shrink, lora_B.t(), alpha=scaling)
    return y, shrink.to(shrink_dtype(x.dtype))


def _torch_backward(grad_out, x, weight, lora_A, lora_B, shrink, scaling, dropout_p, seed, needs):
    need_dx, need_dA, need_dB, need_dW, need_db = needs
    scale = None if dropout_p == 0.0 else _torch_mask(seed, x, dropout_p)
    d_shrink = (grad_out @ lora_B) * scaling if (need_dx or need_dA) else None
    dx = d_lora_A = d_lora_B = d_weight = d_bias = None
    if need_dx:
        lora_part = d_shrink @ lora_A
        dx = grad_out @ weight + (lora_part if scale is None else lora_part * scale)
    if need_dA:
        d_lora_A = d_shrink.t() @ (x if scale is None else x * scale)
    if need_dB:
        d_lora_B = (grad_out.t() @ shrink.to(grad_out.dtype)) * scaling
    if need_dW:
        d_weight = grad_out.t() @ x
    if need_db:
        d_bias = grad_out.sum(0)
    return dx, d_lora_A, d_lora_B, d_weight, d_bias


# ----------------------------------------------------------------------------------------------------
# triton and compiled-extension backends (imported lazily: `import lowpeft` loads neither).
# ----------------------------------------------------------------------------------------------------
def _triton_forward(*args):
    from ..kernels.lora_linear import lora_linear_fwd

    return lora_linear_fwd(*args)


def _triton_backward(*args):
    from ..kernels.lora_linear import lora_linear_bwd

    return lora_linear_bwd(*args)


# The native ops save S in x's dtype when there is no dropout (csrc/lowpeft_common.h, shrink_dtype: two casts
# fewer per call on their C++ autograd path); this op's S is shrink_dtype(x.dtype) for every backend.
def _native_forward(x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed):
    _extension.load()
    y, shrink = torch.ops.lowpeft.native_lora_linear_fwd(x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed)
    return y, shrink.to(shrink_dtype(x.dtype))


def _native_backward(grad_out, x, weight, lora_A, lora_B, shrink, scaling, dropout_p, seed, needs):
    _extension.load()
    outs = torch.ops.lowpeft.native_lora_linear_bwd(
        grad_out, x, weight, lora_A, lora_B, shrink if dropout_p > 0.0 else shrink.to(x.dtype), scaling, dropout_p,
        seed, list(needs)
    )
    return tuple(out if need else None for out, need in zip(outs, needs))


_FORWARD = {"torch": _torch_forward, "triton": _triton_forward, "cpu": _native_forward, "cuda": _native_forward}
_BACKWARD = {"torch": _torch_backward, "triton": _triton_backward, "cpu": _native_backward, "cuda": _native_backward}


# ----------------------------------------------------------------------------------------------------
# torch.library registration
# ----------------------------------------------------------------------------------------------------
@torch.library.custom_op("lowpeft::lora_linear", mutates_args=())
def _lora_linear_op(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    lora_A: Tensor,
    lora_B: Tensor,
    scaling: float,
    dropout_p: float,
    seed: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor]:
    y, shrink = _FORWARD[backend](x, weight, bias, lora_A, lora_B, scaling, dropout_p, int(seed))
    return y, shrink


@_lora_linear_op.register_fake
def _lora_linear_fake(x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed, backend):
    y = x.new_empty(x.shape[0], weight.shape[0])
    shrink = x.new_empty(x.shape[0], lora_A.shape[0], dtype=shrink_dtype(x.dtype))
    return y, shrink


@torch.library.custom_op("lowpeft::lora_linear_backward", mutates_args=())
def _lora_linear_backward_op(
    grad_out: Tensor,
    x: Tensor,
    weight: Tensor,
    lora_A: Tensor,
    lora_B: Tensor,
    shrink: Tensor,
    scaling: float,
    dropout_p: float,
    seed: Tensor,
    needs: Sequence[bool],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    grads = _BACKWARD[backend](
        grad_out, x, weight, lora_A, lora_B, shrink, scaling, dropout_p, int(seed), tuple(needs)
    )
    # Unneeded gradients come back as empty tensors (a torch.library op cannot return None).
    return tuple(g if g is not None else grad_out.new_empty(0) for g in grads)


@_lora_linear_backward_op.register_fake
def _lora_linear_backward_fake(grad_out, x, weight, lora_A, lora_B, shrink, scaling, dropout_p, seed, needs, backend):
    shapes = (x.shape, lora_A.shape, lora_B.shape, weight.shape, weight.shape[:1])
    return tuple(grad_out.new_empty(shape if need else (0,)) for shape, need in zip(shapes, needs))


def _setup_context(ctx, inputs, output):
    x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed, backend = inputs
    _, shrink = output
    ctx.save_for_backward(x, weight, lora_A, lora_B, shrink, seed)
    ctx.scaling, ctx.dropout_p, ctx.backend = scaling, dropout_p, backend
    ctx.has_bias = bias is not None
    needs = ctx.needs_input_grad
    ctx.needs = (needs[0], needs[3], needs[4], needs[1], bias is not None and needs[2])


def _backward(ctx, grad_y, grad_shrink):
    refuse_double_backward("lora_linear")
    x, weight, lora_A, lora_B, shrink, seed = ctx.saved_tensors
    if not any(ctx.needs):
        return (None,) * 9
    dx, d_lora_A, d_lora_B, d_weight, d_bias = torch.ops.lowpeft.lora_linear_backward(
        grad_y.contiguous() if grad_y.stride(-1) != 1 else grad_y,
        x, weight, lora_A, lora_B, shrink, ctx.scaling, ctx.dropout_p, seed, list(ctx.needs), ctx.backend,
    )
    need_dx, need_dA, need_dB, need_dW, need_db = ctx.needs
    return (
        dx if need_dx else None,
        d_weight if need_dW else None,
        d_bias if need_db else None,
        d_lora_A if need_dA else None,
        d_lora_B if need_dB else None,
        None, None, None, None,
    )


torch.library.register_autograd("lowpeft::lora_linear", _backward, setup_context=_setup_context)


_native_cublas_path_cache: dict[Optional[str], bool] = {}


def _native_cublas_path(x: Tensor) -> bool:
    """Whether the triton backend's no-dropout call can run as lowpeft::native_lora_linear. Without dropout the
    triton backend's cuBLAS strategy launches no Triton kernel: it is the cuBLAS calls of lora_linear_fwd / _bwd,
    which csrc/cuda issues identically from C++ (one skinny GEMM per LoRA product, the scaling in alpha). From C++
    the layer costs ~200 µs less host time per forward + backward on the H100 machine (benchmarks/NOTES_lora.md);
    without the CUDA extension the same GEMMs are issued from Python."""
    if not x.is_cuda:
        return False
    key = os.environ.get("LOWPEFT_TRITON_GEMM")  # memoised per strategy setting: it runs on every layer call
    found = _native_cublas_path_cache.get(key)
    if found is None:
        from ..kernels.lora_linear import gemm_strategy

        found = _dispatch.unavailable_reason("cuda", "cuda") is None and gemm_strategy() == "cublas"
        _native_cublas_path_cache[key] = found
    return found


def cublas_only_call(name: str, effective_p: float, x: Tensor) -> bool:
    """Whether this call is the triton backend's no-dropout call with the extension built: cuBLAS calls only, which
    the cuda backend's functions issue identically from C++ (see _native_cublas_path)."""
    return name == "triton" and effective_p == 0.0 and _native_cublas_path(x)


def native_eager_call(name: str, effective_p: float, x: Tensor) -> bool:
    """Whether an eager call runs through the compiled extension's op with C++ autograd: the compiled backends'
    calls, and the triton backend's cuBLAS-only ones."""
    return name in _dispatch.COMPILED_BACKENDS or cublas_only_call(name, effective_p, x)


class LoRALinearFunction(torch.autograd.Function):
    """Eager-mode autograd for the same backend functions the torch.library ops call (see the header). x may
    have any leading dimensions: they are flattened here, inside the Function, so the graph gets no reshape nodes
    (as in the C++ autograd of the compiled backends); y comes back through _unsafe_view, not as a view."""

    @staticmethod
    def forward(ctx, x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed, backend):
        x_rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        y, shrink = _FORWARD[backend](x_rows, weight, bias, lora_A, lora_B, scaling, dropout_p, seed)
        ctx.save_for_backward(x_rows, weight, lora_A, lora_B, shrink)
        ctx.scaling, ctx.dropout_p, ctx.seed, ctx.backend = scaling, dropout_p, seed, backend
        ctx.x_shape = x.shape
        needs = ctx.needs_input_grad
        ctx.needs = (needs[0], needs[3], needs[4], needs[1], bias is not None and needs[2])
        return y if x.dim() == 2 else torch.ops.aten._unsafe_view(y, (*x.shape[:-1], y.shape[-1]))

    @staticmethod
    def backward(ctx, grad_y):
        refuse_double_backward("lora_linear")
        if not any(ctx.needs):
            return (None,) * 9
        x, weight, lora_A, lora_B, shrink = ctx.saved_tensors
        grad_y = grad_y if grad_y.dim() == 2 else grad_y.reshape(-1, grad_y.shape[-1])
        grad_y = grad_y.contiguous() if grad_y.stride(-1) != 1 else grad_y
        dx, d_lora_A, d_lora_B, d_weight, d_bias = _BACKWARD[ctx.backend](
            grad_y, x, weight, lora_A, lora_B, shrink, ctx.scaling, ctx.dropout_p, ctx.seed, ctx.needs
        )
        if dx is not None and len(ctx.x_shape) != 2:
            dx = torch.ops.aten._unsafe_view(dx, ctx.x_shape)
        return dx, d_weight, d_bias, d_lora_A, d_lora_B, None, None, None, None


# ----------------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------------
def _check_tensor(name, value, ndim, expected_shape_text):
    if not isinstance(value, Tensor):
        raise TypeError(f"{name}: expected a torch.Tensor, got {type(value).__name__}")
    if value.dim() != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D tensor {expected_shape_text}, got shape {tuple(value.shape)}")


def _inputs_plainly_valid(x, weight, bias, lora_A, lora_B, scaling, dropout_p) -> bool:
    """A cheap conservative pre-check (a few attribute reads): True only for arguments _check_inputs accepts.
    Every layer call pays for argument checking, and small layers are host-bound; the detailed checks with
    their named errors run only when this says no."""
    try:
        dtype, device = x.dtype, x.device
        out_features, in_features = weight.shape
        rank, lora_in = lora_A.shape
        return (
            dtype.is_floating_point and x.shape[-1] == in_features == lora_in and rank >= 1
            and lora_B.shape[0] == out_features and lora_B.shape[1] == rank and lora_B.dim() == 2
            and weight.dtype == dtype and lora_A.dtype == dtype and lora_B.dtype == dtype
            and weight.device == device and lora_A.device == device and lora_B.device == device
            and (bias is None or (bias.dim() == 1 and bias.shape[0] == out_features and bias.dtype == dtype
                                  and bias.device == device))
            and type(scaling) is float and abs(scaling) < math.inf
            and type(dropout_p) is float and 0.0 <= dropout_p < 1.0
        )
    except (AttributeError, ValueError, TypeError, IndexError):
        return False


def _check_inputs(x, weight, bias, lora_A, lora_B, scaling, dropout_p):
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    if x.dim() < 1:
        raise ValueError("x: expected at least 1 dimension [..., in_features], got a 0-d tensor")
    _check_tensor("weight", weight, 2, "[out_features, in_features]")
    _check_tensor("lora_A", lora_A, 2, "[r, in_features]")
    _check_tensor("lora_B", lora_B, 2, "[out_features, r]")
    out_features, in_features = weight.shape
    rank = lora_A.shape[0]
    if x.shape[-1] != in_features:
        raise ValueError(f"x: expected last dimension in_features={in_features}, got shape {tuple(x.shape)}")
    if lora_A.shape[1] != in_features:
        raise ValueError(f"lora_A: expected shape [r, {in_features}], got {tuple(lora_A.shape)}")
    if rank < 1:
        raise ValueError(f"lora_A: expected rank r >= 1 rows, got shape {tuple(lora_A.shape)}")
    if tuple(lora_B.shape) != (out_features, rank):
        raise ValueError(f"lora_B: expected shape [{out_features}, {rank}], got {tuple(lora_B.shape)}")
    if bias is not None:
        _check_tensor("bias", bias, 1, "[out_features]")
        if bias.shape[0] != out_features:
            raise ValueError(f"bias: expected shape [{out_features}], got {tuple(bias.shape)}")
    named = [("x", x), ("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B)]
    if bias is not None:
        named.append(("bias", bias))
    for name, value in named:
        if not value.is_floating_point():
            raise TypeError(f"{name}: expected a floating-point tensor, got dtype {value.dtype}")
        if value.dtype != x.dtype:
            raise TypeError(f"{name}: expected dtype {x.dtype} (x's dtype), got {value.dtype}")
        if value.device != x.device:
            raise ValueError(f"{name}: expected a tensor on {x.device} (x's device), got one on {value.device}")
    # Finite as a comparison, not math.isfinite: under torch.compile(dynamic=True) a module's float attribute
    # arrives symbolic, math.isfinite of it is not traceable, and a comparison only adds a guard.
    if isinstance(scaling, bool) or not isinstance(scaling, (int, float)):
        raise TypeError(f"scaling: expected a finite float, got {type(scaling).__name__} {scaling!r}")
    if not abs(scaling) < math.inf:
        raise ValueError(f"scaling: expected a finite float, got {scaling!r}")
    if isinstance(dropout_p, bool) or not isinstance(dropout_p, (int, float)):
        raise TypeError(f"dropout_p: expected a float in [0, 1), got {type(dropout_p).__name__} {dropout_p!r}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p: expected a float in [0, 1), got {dropout_p!r}")


def lora_linear(
    x: Tensor,
    weight: Tensor,
    bias: Optional[Tensor],
    lora_A: Tensor,
    lora_B: Tensor,
    scaling: float,
    dropout_p: float = 0.0,
    training: bool = True,
    *,
    backend: str = "auto",
    seed: Optional[Tensor] = None,
) -> Tensor:
    """Fused LoRA linear layer: x Wᵀ + b + scaling · (dropout(x) lora_Aᵀ) lora_Bᵀ.

    x: [..., in_features]; weight: [out, in]; bias: [out] or None; lora_A: [r, in]; lora_B: [out, r].
    Dropout applies only when `training` and dropout_p > 0; its mask comes from `seed` (a CPU int64
    scalar tensor, drawn from torch's generator when omitted) and is the one `reference.dropout_keep_mask`
    defines. While a CUDA graph is being captured a seed must be passed (ValueError otherwise): a drawn one
    would be replayed with the graph. Gradients flow to every input that requires grad, the frozen weight and bias included.
    """
    dtype = autocast_dtype(x)
    if dtype is not None:
        x, weight, bias, lora_A, lora_B = (autocast_cast(t, dtype) for t in (x, weight, bias, lora_A, lora_B))
    if not _inputs_plainly_valid(x, weight, bias, lora_A, lora_B, scaling, dropout_p):
        _check_inputs(x, weight, bias, lora_A, lora_B, scaling, dropout_p)
    effective_p = float(dropout_p) if training else 0.0
    seed = call_seed(x, effective_p, seed)
    name = _dispatch.resolve(backend, x.device, x.dtype)
    compiling = torch.compiler.is_compiling()
    if not compiling and native_eager_call(name, effective_p, x):
        # The compiled backends' eager calls go through lowpeft::native_lora_linear, whose autograd is C++
        # (csrc/autograd/lora_linear.cpp): one dispatcher call forward, no Python in the backward, and x of any
        # rank flattened there (no view nodes in the graph).
        _extension.load()
        return torch.ops.lowpeft.native_lora_linear(x, weight, bias, lora_A, lora_B, float(scaling), effective_p,
                                                    int(seed) if effective_p > 0.0 else 0)
    if not compiling:
        return LoRALinearFunction.apply(x, weight, bias, lora_A, lora_B, float(scaling), effective_p,
                                        int(seed) if effective_p > 0.0 else 0, name)
    flat = x.dim() == 2
    x2 = x if flat else x.reshape(-1, x.shape[-1])
    y, _ = torch.ops.lowpeft.lora_linear(x2, weight, bias, lora_A, lora_B, float(scaling), effective_p, seed, name)
    # A 2-D input gets the op's own output (not a view: FSDP2 warns about module outputs that are views).
    return y if flat else y.reshape(*x.shape[:-1], weight.shape[0])
