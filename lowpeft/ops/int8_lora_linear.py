# lowpeft.ops.int8_lora_linear: LoRA over an int8 frozen base, y = x Ŵᵀ + b + s · (dropout(x) Aᵀ) Bᵀ with
# Ŵ = qweight · weight_scale[:, None] (lowpeft.ops.dequantize_int8's format), as the torch.library ops
# lowpeft::int8_lora_linear and lowpeft::int8_lora_linear_backward.
#
# Trade-off: the op dequantizes Ŵ into a transient tensor of the compute dtype and runs the LoRA layer's own
# backend functions on it (the same fused kernels, the same numerics as lora_linear on Ŵ), once in the forward
# and again in the backward when dx is needed; it saves qweight and the scale, never Ŵ, so between forward and
# backward a layer holds 1 byte per base weight instead of 2 (bf16). The price is one extra memory pass over the
# weight per GEMM. Eager calls on the compiled backends (and the triton backend's no-dropout call, cuBLAS only)
# run lowpeft::native_int8_lora_linear, the same recipe with its autograd in C++; the rest, and torch.compile, this
# file's Python Function and torch.library ops.
from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from .. import _extension
from . import _dispatch
from ._torch_rules import autocast_cast, autocast_dtype, refuse_double_backward
from .dequantize_int8 import DEQUANTIZE, check_int8_weight
from .lora_linear import (_BACKWARD, _FORWARD, _check_inputs, _inputs_plainly_valid, call_seed, cublas_only_call,
                          native_eager_call, shrink_dtype)

__all__ = ["int8_lora_linear"]


def _backward_needs(needs_x: bool, needs_A: bool, needs_B: bool, needs_bias: bool) -> tuple:
    # The LoRA backends' order (dx, dA, dB, dW, db); the int8 base never gets a gradient.
    return (needs_x, needs_A, needs_B, False, needs_bias)


def _lora_functions(backend: str, dropout_p: float, x: Tensor):
    """The LoRA layer's (forward, backward) functions for this call. The triton backend without dropout issues
    only cuBLAS calls, which the cuda backend's functions issue identically from C++ (one dispatcher call instead
    of the Python launcher's dozen): taken whenever the extension is built, as lora_linear does."""
    if cublas_only_call(backend, dropout_p, x):
        return _FORWARD["cuda"], _BACKWARD["cuda"]
    return _FORWARD[backend], _BACKWARD[backend]


def _forward(x, qweight, weight_scale, bias, lora_A, lora_B, scaling, dropout_p, seed, backend):
    weight = DEQUANTIZE[backend](qweight, weight_scale, x.dtype)
    forward, _ = _lora_functions(backend, dropout_p, x)
    return forward(x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed)


def _backward(grad_out, x, qweight, weight_scale, lora_A, lora_B, shrink, scaling, dropout_p, seed, needs, backend):
    # The backends read the base weight for dx only; without dx an empty-strided stand-in of its shape goes in.
    if needs[0]:
        weight = DEQUANTIZE[backend](qweight, weight_scale, x.dtype)
    else:
        weight = x.new_empty(()).expand(qweight.shape)
    _, backward = _lora_functions(backend, dropout_p, x)
    dx, d_lora_A, d_lora_B, _, d_bias = backward(grad_out, x, weight, lora_A, lora_B, shrink, scaling, dropout_p, seed,
                                                 needs)
    return dx, d_lora_A, d_lora_B, d_bias


# ----------------------------------------------------------------------------------------------------
# torch.library registration (the path torch.compile takes)
# ----------------------------------------------------------------------------------------------------
@torch.library.custom_op("lowpeft::int8_lora_linear", mutates_args=())
def _int8_lora_linear_op(
    x: Tensor,
    qweight: Tensor,
    weight_scale: Tensor,
    bias: Optional[Tensor],
    lora_A: Tensor,
    lora_B: Tensor,
    scaling: float,
    dropout_p: float,
    seed: Tensor,
    backend: str,
) -> tuple[Tensor, Tensor]:
    return _forward(x, qweight, weight_scale, bias, lora_A, lora_B, scaling, dropout_p, int(seed), backend)


@_int8_lora_linear_op.register_fake
def _int8_lora_linear_fake(x, qweight, weight_scale, bias, lora_A, lora_B, scaling, dropout_p, seed, backend):
    return (x.new_empty(x.shape[0], qweight.shape[0]),
            x.new_empty(x.shape[0], lora_A.shape[0], dtype=shrink_dtype(x.dtype)))


@torch.library.custom_op("lowpeft::int8_lora_linear_backward", mutates_args=())
def _int8_lora_linear_backward_op(
    grad_out: Tensor,
    x: Tensor,
    qweight: Tensor,
    weight_scale: Tensor,
    lora_A: Tensor,
    lora_B: Tensor,
    shrink: Tensor,
    scaling: float,
    dropout_p: float,
    seed: Tensor,
    needs: Sequence[bool],
    backend: str,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    grads = _backward(grad_out, x, qweight, weight_scale, lora_A, lora_B, shrink, scaling, dropout_p, int(seed),
                      tuple(needs), backend)
    # Unneeded gradients come back as empty tensors (a torch.library op cannot return None).
    return tuple(g if g is not None else grad_out.new_empty(0) for g in grads)


@_int8_lora_linear_backward_op.register_fake
def _int8_lora_linear_backward_fake(grad_out, x, qweight, weight_scale, lora_A, lora_B, shrink, scaling, dropout_p,
                                    seed, needs, backend):
    shapes = (x.shape, lora_A.shape, lora_B.shape, qweight.shape[:1])
    wanted = (needs[0], needs[1], needs[2], needs[4])
    return tuple(grad_out.new_empty(shape if need else (0,)) for shape, need in zip(shapes, wanted))


def _setup_context(ctx, inputs, output):
    x, qweight, weight_scale, bias, lora_A, lora_B, scaling, dropout_p, seed, backend = inputs
    ctx.save_for_backward(x, qweight, weight_scale, lora_A, lora_B, output[1], seed)
    ctx.scaling, ctx.dropout_p, ctx.backend = scaling, dropout_p, backend
    needs = ctx.needs_input_grad
    ctx.needs = _backward_needs(needs[0], needs[4], needs[5], bias is not None and needs[3])


def _op_backward(ctx, grad_y, grad_shrink):
    refuse_double_backward("int8_lora_linear")
    x, qweight, weight_scale, lora_A, lora_B, shrink, seed = ctx.saved_tensors
    if not any(ctx.needs):
        return (None,) * 10
    dx, d_lora_A, d_lora_B, d_bias = torch.ops.lowpeft.int8_lora_linear_backward(
        grad_y.contiguous() if grad_y.stride(-1) != 1 else grad_y,
        x, qweight, weight_scale, lora_A, lora_B, shrink, ctx.scaling, ctx.dropout_p, seed, list(ctx.needs),
        ctx.backend,
    )
    need_dx, need_dA, need_dB, _, need_db = ctx.needs
    return (dx if need_dx else None, None, None, d_bias if need_db else None, d_lora_A if need_dA else None,
            d_lora_B if need_dB else None, None, None, None, None)


torch.library.register_autograd("lowpeft::int8_lora_linear", _op_backward, setup_context=_setup_context)


class Int8LoRALinearFunction(torch.autograd.Function):
    """Eager-mode autograd for the same functions the torch.library ops call; x of any leading dimensions is
    flattened inside (no reshape nodes in the graph), y comes back through _unsafe_view."""

    @staticmethod
    def forward(ctx, x, qweight, weight_scale, bias, lora_A, lora_B, scaling, dropout_p, seed, backend):
        x_rows = x if x.dim() == 2 else x.reshape(-1, x.shape[-1])
        y, shrink = _forward(x_rows, qweight, weight_scale, bias, lora_A, lora_B, scaling, dropout_p, seed, backend)
        ctx.save_for_backward(x_rows, qweight, weight_scale, lora_A, lora_B, shrink)
        ctx.scaling, ctx.dropout_p, ctx.seed, ctx.backend = scaling, dropout_p, seed, backend
        ctx.x_shape = x.shape
        needs = ctx.needs_input_grad
        ctx.needs = _backward_needs(needs[0], needs[4], needs[5], bias is not None and needs[3])
        return y if x.dim() == 2 else torch.ops.aten._unsafe_view(y, (*x.shape[:-1], y.shape[-1]))

    @staticmethod
    def backward(ctx, grad_y):
        refuse_double_backward("int8_lora_linear")
        if not any(ctx.needs):
            return (None,) * 10
        x, qweight, weight_scale, lora_A, lora_B, shrink = ctx.saved_tensors
        grad_y = grad_y if grad_y.dim() == 2 else grad_y.reshape(-1, grad_y.shape[-1])
        grad_y = grad_y.contiguous() if grad_y.stride(-1) != 1 else grad_y
        dx, d_lora_A, d_lora_B, d_bias = _backward(grad_y, x, qweight, weight_scale, lora_A, lora_B, shrink,
                                                   ctx.scaling, ctx.dropout_p, ctx.seed, ctx.needs, ctx.backend)
        if dx is not None and len(ctx.x_shape) != 2:
            dx = torch.ops.aten._unsafe_view(dx, ctx.x_shape)
        return dx, None, None, d_bias, d_lora_A, d_lora_B, None, None, None, None


# ----------------------------------------------------------------------------------------------------
# public entry point
# ----------------------------------------------------------------------------------------------------
def _check_int8_inputs(x, qweight, weight_scale, bias, lora_A, lora_B, scaling, dropout_p) -> None:
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    check_int8_weight(qweight, weight_scale, x.device)
    if weight_scale.requires_grad:
        raise ValueError("weight_scale: expected a frozen tensor (requires_grad=False); the int8 base is not "
                         "trained, got one that requires grad")
    # The LoRA op's checks of everything else, against a stand-in weight of the base's shape in x's dtype.
    stand_in = x.new_empty(()).expand(qweight.shape)
    if not _inputs_plainly_valid(x, stand_in, bias, lora_A, lora_B, scaling, dropout_p):
        _check_inputs(x, stand_in, bias, lora_A, lora_B, scaling, dropout_p)


def int8_lora_linear(
    x: Tensor,
    qweight: Tensor,
    weight_scale: Tensor,
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
    """LoRA over an int8 frozen base: x Ŵᵀ + b + scaling · (dropout(x) lora_Aᵀ) lora_Bᵀ, Ŵ = qweight ·
    weight_scale[:, None] rounded to x's dtype (lowpeft.ops.quantize_int8 makes qweight and weight_scale).

    x: [..., in]; qweight: int8 [out, in]; weight_scale: float [out], frozen; bias: [out] or None; lora_A: [r, in];
    lora_B: [out, r]; x, bias, lora_A and lora_B share one floating dtype (autocast casts them). Dropout and
    `seed` as in lora_linear. Gradients flow to x, bias, lora_A and lora_B; the base gets none.
    """
    dtype = autocast_dtype(x)
    if dtype is not None:
        x, bias, lora_A, lora_B = (autocast_cast(t, dtype) for t in (x, bias, lora_A, lora_B))
    _check_int8_inputs(x, qweight, weight_scale, bias, lora_A, lora_B, scaling, dropout_p)
    effective_p = float(dropout_p) if training else 0.0
    seed = call_seed(x, effective_p, seed)
    name = _dispatch.resolve(backend, x.device, x.dtype)
    compiling = torch.compiler.is_compiling()
    if not compiling and native_eager_call(name, effective_p, x):
        # As lora_linear: the compiled backends' eager calls (and the triton backend's cuBLAS-only no-dropout call)
        # go through lowpeft::native_int8_lora_linear, whose autograd is C++ (csrc/autograd/int8_lora_linear.cpp).
        _extension.load()
        return torch.ops.lowpeft.native_int8_lora_linear(x, qweight, weight_scale, bias, lora_A, lora_B,
                                                         float(scaling), effective_p,
                                                         int(seed) if effective_p > 0.0 else 0)
    if not compiling:
        return Int8LoRALinearFunction.apply(x, qweight, weight_scale, bias, lora_A, lora_B, float(scaling),
                                            effective_p, int(seed) if effective_p > 0.0 else 0, name)
    flat = x.dim() == 2
    x2 = x if flat else x.reshape(-1, x.shape[-1])
    y, _ = torch.ops.lowpeft.int8_lora_linear(x2, qweight, weight_scale, bias, lora_A, lora_B, float(scaling),
                                             effective_p, seed, name)
    return y if flat else y.reshape(*x.shape[:-1], qweight.shape[0])
