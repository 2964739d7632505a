# lowpeft.ops.int8_linear: the int8 frozen base without an adapter, y = x Ŵᵀ + b with Ŵ = qweight ·
# weight_scale[:, None] (what Int8Linear computes for the layers quantize_base converted but no LoRA adapts).
#
# Trade-off: F.linear on the dequantized Ŵ would make autograd save Ŵ for dx, a float copy of every such layer's
# weight held from forward to backward: more than the float model held. This Function saves qweight and the scale
# and dequantizes again in the backward (one more memory pass over the weight), so a training step keeps the int8
# weights' memory. A plain autograd.Function (no torch.library op): its forward and backward are traceable torch
# code around the dequantize op, which torch.compile already sees as one.
from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ._torch_rules import autocast_cast, autocast_dtype, refuse_double_backward
from .dequantize_int8 import check_int8_weight, dequantize_int8

__all__ = ["int8_linear"]


class Int8LinearFunction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, qweight, weight_scale, bias, backend):
        ctx.save_for_backward(qweight, weight_scale)
        ctx.backend, ctx.has_bias = backend, bias is not None
        return F.linear(x, dequantize_int8(qweight, weight_scale, x.dtype, backend=backend), bias)

    @staticmethod
    def backward(ctx, grad_y):
        refuse_double_backward("int8_linear")
        qweight, weight_scale = ctx.saved_tensors
        dx = d_bias = None
        if ctx.needs_input_grad[0]:
            dx = grad_y @ dequantize_int8(qweight, weight_scale, grad_y.dtype, backend=ctx.backend)
        if ctx.has_bias and ctx.needs_input_grad[3]:
            d_bias = grad_y.reshape(-1, grad_y.shape[-1]).sum(0)
        return dx, None, None, d_bias, None


def int8_linear(x: Tensor, qweight: Tensor, weight_scale: Tensor, bias: Optional[Tensor] = None, *,
                backend: str = "auto") -> Tensor:
    """x Ŵᵀ + b in x's dtype (autocast's under autocast), Ŵ = qweight · weight_scale[:, None] (int8 [out, in],
    a frozen float [out]); gradients flow to x and bias, the base gets none and is not kept as floats for them."""
    if not isinstance(x, Tensor):
        raise TypeError(f"x: expected a torch.Tensor, got {type(x).__name__}")
    check_int8_weight(qweight, weight_scale, x.device)
    dtype = autocast_dtype(x)
    if dtype is not None:
        x, bias = autocast_cast(x, dtype), autocast_cast(bias, dtype)
    if not x.is_floating_point():
        raise TypeError(f"x: expected a floating-point tensor, got dtype {x.dtype}")
    if x.dim() < 1 or x.shape[-1] != qweight.shape[1]:
        raise ValueError(f"x: expected last dimension in_features={qweight.shape[1]}, got shape {tuple(x.shape)}")
    if bias is not None:
        if not isinstance(bias, Tensor) or tuple(bias.shape) != (qweight.shape[0],):
            raise ValueError(f"bias: expected a tensor of shape [{qweight.shape[0]}], got "
                             f"{tuple(bias.shape) if isinstance(bias, Tensor) else type(bias).__name__}")
        if bias.dtype != x.dtype:
            bias = bias.to(x.dtype)
    return Int8LinearFunction.apply(x, qweight, weight_scale, bias, backend)
