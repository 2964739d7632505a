# lowpeft.ops.dequantize_int8: the int8 frozen base's weight format. quantize_int8 turns a float weight
# [out, in] into int8 values and one float scale per output row (symmetric, absmax / 127: W ≈ q · scale);
# dequantize_int8 (the torch.library op lowpeft::dequantize_int8) turns them back into a float weight.
#
# Trade-off: per-output-row absmax int8 (the weight-only scheme of LLM.int8 without its outlier split): a row's
# largest element sets its step, so the error is at most scale / 2 per element and a row with one outlier loses
# precision in the rest; in exchange dequantization is one multiply per element, the format needs no calibration
# data and the scale of row o multiplies output column o, so x Wᵀ = (x qᵀ) · scale holds exactly in real numbers.
# The scale stays float32 (float64 for float64 weights), as bitsandbytes keeps its absmax. Kernels: torch (ATen),
# triton (kernels/dequantize_int8.py), cpu / cuda (csrc's native_dequantize_int8). Eager calls run the backend's
# function directly (host time); under torch.compile the op is opaque with a fake kernel.
from __future__ import annotations

import torch
from torch import Tensor

from .. import _extension
from . import _dispatch

__all__ = ["quantize_int8", "dequantize_int8", "check_int8_weight", "check_float_dtype"]

INT8_LEVELS = 127


def scale_dtype(dtype: torch.dtype) -> torch.dtype:
    """The scale's dtype for a weight of `dtype`: float32, or float64 for float64 weights."""
    return torch.float64 if dtype == torch.float64 else torch.float32


@torch.no_grad()
def quantize_int8(weight: Tensor) -> tuple[Tensor, Tensor]:
    """(qweight int8 [out, in], scale [out]) with weight ≈ qweight · scale[:, None]: scale = max |row| / 127
    (1 for an all-zero row), qweight = round(weight / scale) (half to even). weight: a finite float [out, in]."""
    if not isinstance(weight, Tensor):
        raise TypeError(f"weight: expected a torch.Tensor, got {type(weight).__name__}")
    if weight.dim() != 2:
        raise ValueError(f"weight: expected a 2-D tensor [out_features, in_features], got shape {tuple(weight.shape)}")
    if not weight.is_floating_point():
        raise TypeError(f"weight: expected a floating-point tensor, got dtype {weight.dtype}")
    wide = weight.detach().to(scale_dtype(weight.dtype))
    if wide.numel() and wide.device.type != "meta" and not torch.isfinite(wide).all():
        raise ValueError("weight: expected finite values, got NaN or Inf (they have no int8 representation)")
    absmax = wide.abs().amax(dim=1) if wide.shape[1] else wide.new_zeros(wide.shape[0])
    scale = torch.where(absmax > 0, absmax / INT8_LEVELS, torch.ones_like(absmax))
    qweight = torch.round(wide / scale[:, None]).clamp_(-INT8_LEVELS, INT8_LEVELS).to(torch.int8)
    return qweight, scale


def check_int8_weight(qweight, scale, device=None) -> None:
    """ValueError / TypeError naming the argument unless qweight is an int8 [out, in] tensor and scale a float [out]
    tensor on qweight's device (and on `device` when given)."""
    if not isinstance(qweight, Tensor):
        raise TypeError(f"qweight: expected a torch.Tensor, got {type(qweight).__name__}")
    if qweight.dtype != torch.int8:
        raise TypeError(f"qweight: expected an int8 tensor (quantize_int8's values), got dtype {qweight.dtype}")
    if qweight.dim() != 2:
        raise ValueError(f"qweight: expected a 2-D tensor [out_features, in_features], got shape "
                         f"{tuple(qweight.shape)}")
    if not isinstance(scale, Tensor):
        raise TypeError(f"weight_scale: expected a torch.Tensor, got {type(scale).__name__}")
    if not scale.is_floating_point():
        raise TypeError(f"weight_scale: expected a floating-point tensor, got dtype {scale.dtype}")
    if tuple(scale.shape) != (qweight.shape[0],):
        raise ValueError(f"weight_scale: expected shape [{qweight.shape[0]}] (one scale per output row), got "
                         f"{tuple(scale.shape)}")
    if scale.device != qweight.device:
        raise ValueError(f"weight_scale: expected a tensor on {qweight.device} (qweight's device), got one on "
                         f"{scale.device}")
    if device is not None and qweight.device != device:
        raise ValueError(f"qweight: expected a tensor on {device} (x's device), got one on {qweight.device}")


def _torch_dequantize(qweight: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    wide = scale_dtype(dtype)
    return (qweight.to(wide) * scale.to(wide)[:, None]).to(dtype)


def _triton_dequantize(qweight: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    from ..kernels.dequantize_int8 import dequantize_int8_fwd

    return dequantize_int8_fwd(qweight, scale, dtype)


def _native_dequantize(qweight: Tensor, scale: Tensor, dtype: torch.dtype) -> Tensor:
    _extension.load()
    return torch.ops.lowpeft.native_dequantize_int8(qweight, scale, dtype)


DEQUANTIZE = {"torch": _torch_dequantize, "triton": _triton_dequantize, "cpu": _native_dequantize,
              "cuda": _native_dequantize}


@torch.library.custom_op("lowpeft::dequantize_int8", mutates_args=())
def _dequantize_int8_op(qweight: Tensor, scale: Tensor, dtype: torch.dtype, backend: str) -> Tensor:
    return DEQUANTIZE[backend](qweight, scale, dtype)


@_dequantize_int8_op.register_fake
def _dequantize_int8_fake(qweight, scale, dtype, backend):
    return qweight.new_empty(qweight.shape, dtype=dtype)


def dequantize_int8(qweight: Tensor, weight_scale: Tensor, dtype: torch.dtype = torch.float32, *,
                    backend: str = "auto") -> Tensor:
    """qweight [out, in] (int8) · weight_scale[:, None] as a new row-major tensor of `dtype`, computed in float32
    (float64 for a float64 `dtype`) and rounded once. Not differentiable: the quantized base is frozen."""
    check_int8_weight(qweight, weight_scale)
    check_float_dtype("dtype", dtype)
    if weight_scale.requires_grad:
        raise ValueError("weight_scale: expected a frozen tensor (requires_grad=False); the int8 base is not "
                         "trained, got one that requires grad")
    name = _dispatch.resolve(backend, qweight.device, dtype)
    if torch.compiler.is_compiling():
        return torch.ops.lowpeft.dequantize_int8(qweight, weight_scale, dtype, name)
    return DEQUANTIZE[name](qweight, weight_scale, dtype)


def check_float_dtype(name: str, dtype) -> None:
    """TypeError naming `name` unless dtype is a floating-point torch.dtype."""
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"{name}: expected a floating-point torch.dtype, got {dtype!r}")
