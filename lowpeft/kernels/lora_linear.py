# Launchers of the LoRA linear layer on the triton backend: lora_linear_fwd and lora_linear_bwd, called by
# lowpeft.ops.lora_linear (no autograd here). Two strategies, chosen per call by $LOWPEFT_TRITON_GEMM:
#
# "cublas" (the default: it measured faster on the H100, benchmarks/NOTES_lora.md): the two frozen GEMMs run
#   in cuBLAS and the LoRA terms are folded into their outputs — y = x Wᵀ + b, then y += s·S Bᵀ with cuBLAS's
#   beta = 1 accumulation; dx = g W, then dx += dS A (beta = 1) or, with dropout, one Triton pass that adds
#   the masked dS A to dx and reduces dA = dSᵀ dropout(x) from the same tiles. Triton kernels compute only
#   what cuBLAS cannot: with dropout, S = dropout(x) Aᵀ and the masked dx / dA terms, with the mask
#   regenerated from the seed (never stored). Every other product
#   (S and dA without dropout, dS = s·g B, dB = s·gᵀ S) is a skinny cuBLAS GEMM in the inputs' dtype, as
#   eager PyTorch computes it: each Triton launch costs tens of microseconds of host time, which small
#   layers cannot hide. Cost over the frozen layer: one read + write of y and of dx, one pass over x (S), two
#   over g (dS, dB), one over x (dA; with dropout it rides in the dx pass).
# "fused": the frozen GEMMs run in lowpeft's own Triton kernels (persistent TMA on Hopper) whose accumulators
#   also take the LoRA terms, so y and dx are written once and S / dS ride along in the main loop. This is
#   the design's memory-traffic floor, but at present its epilogue makes the GEMM ~1.3x slower than cuBLAS.
# Trade-off: keeping both lets the benchmark show the measured cost of each honestly; the default follows
# the measurement. dW = gᵀ x (only when the frozen weight needs it) always runs in cuBLAS.
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from .. import reference
from ._tuning import FUSED_RANK_LIMIT, accumulator_dtype, float32_dot_precision, interpreting, padded_rank
from .lora_backward_dx import lora_dx_gemm
from .lora_expand import lora_expand_add
from .lora_expand_grad_A import lora_expand_add_grad_A
from .lora_forward import lora_forward_gemm
from .lora_grad_weights import lora_grad_A, lora_grad_B
from .lora_shrink import lora_shrink

__all__ = ["lora_linear_fwd", "lora_linear_bwd"]

_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
GEMM_STRATEGIES = ("cublas", "fused")


def gemm_strategy() -> str:
    """$LOWPEFT_TRITON_GEMM: "cublas" (default) or "fused" (see the header)."""
    name = os.environ.get("LOWPEFT_TRITON_GEMM", "cublas")
    if name not in GEMM_STRATEGIES:
        raise ValueError(f"LOWPEFT_TRITON_GEMM: expected one of {GEMM_STRATEGIES}, got {name!r}")
    return name
_MAX_RANK = 256


def _check_rank(lora_A):
    rank = lora_A.shape[0]
    if not 1 <= rank <= _MAX_RANK:
        raise ValueError(f"lora_A: the triton backend takes ranks 1..{_MAX_RANK}, got r={rank}")
    return rank


def _dot_settings(dtype):
    """(DOT_PRECISION, DOT_UPCAST): fp32 follows torch's float32 matmul precision like nn.Linear
    (_tuning.float32_dot_precision), float64 is IEEE; the CPU interpreter multiplies 16-bit operands in fp32."""
    if dtype == torch.float64:
        return "ieee", False
    if dtype == torch.float32:
        precision = float32_dot_precision()
    else:
        precision = "tf32"
    return precision, interpreting() and dtype != torch.float32


def _dropout_args(dropout_p):
    """(has_dropout, uint32 threshold, 1 / (1 - p)) for the kernels' regenerated mask."""
    if dropout_p == 0.0:
        return False, 0, 1.0
    return True, reference.dropout_threshold(dropout_p), 1.0 / (1.0 - dropout_p)


def _check_operands(named):
    """One pass over (name, tensor) pairs: 2-D (bias 1-D), a supported dtype shared by all, one device."""
    dtype, device = named[0][1].dtype, named[0][1].device
    if dtype not in _DTYPES:
        raise TypeError(f"{named[0][0]}: the triton backend takes float32, float16, bfloat16 or float64 tensors, "
                        f"got {dtype}")
    if dtype == torch.float64 and device.type == "cuda":
        # float64 runs only under the interpreter (for gradcheck), as the adapter's kernels.
        raise TypeError(f"{named[0][0]}: the triton backend takes float32, float16 or bfloat16 on CUDA, got "
                        "torch.float64 (use backend='torch' or 'cuda' for float64)")
    for name, tensor in named:
        if tensor is None:
            continue
        if tensor.dim() != (1 if name == "bias" else 2):
            raise ValueError(f"{name}: expected a {1 if name == 'bias' else 2}-D tensor, got shape "
                             f"{tuple(tensor.shape)}")
        if tensor.dtype != dtype:
            raise TypeError(f"{name}: expected dtype {dtype} (like {named[0][0]}), got {tensor.dtype}")
        if tensor.device != device:
            raise ValueError(f"{name}: expected a tensor on {device}, got one on {tensor.device}")


def lora_linear_fwd(x, weight, bias, lora_A, lora_B, scaling: float, dropout_p: float, seed: int):
    """(y [T, N] in x's dtype, S = dropout(x) Aᵀ [T, r] in float32, float64 for float64 x) for 2-D x of any
    strides."""
    _check_operands((("x", x), ("weight", weight), ("bias", bias), ("lora_A", lora_A), ("lora_B", lora_B)))
    rank = _check_rank(lora_A)
    if gemm_strategy() == "cublas":
        return _forward_cublas(x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed)
    tokens, out_features = x.shape[0], weight.shape[0]
    y = torch.empty(tokens, out_features, dtype=x.dtype, device=x.device)
    shrink = torch.empty(tokens, rank, dtype=accumulator_dtype(x.dtype), device=x.device)
    if tokens == 0:
        return y, shrink
    rank_padded = padded_rank(rank)
    dot_precision, dot_upcast = _dot_settings(x.dtype)
    has_dropout, threshold, inv_keep = _dropout_args(dropout_p)
    fuse_shrink = not has_dropout and rank_padded <= FUSED_RANK_LIMIT and out_features > 0
    if not fuse_shrink:
        lora_shrink(x, lora_A.t(), shrink, scale=1.0, seed=seed, threshold=threshold, inv_keep=inv_keep,
                    has_dropout=has_dropout, rank_padded=rank_padded, dot_precision=dot_precision,
                    dot_upcast=dot_upcast)
    lora_forward_gemm(x, weight, bias, lora_A, lora_B, shrink, y, scaling=scaling, fuse_shrink=fuse_shrink,
                      rank_padded=rank_padded, dot_precision=dot_precision, dot_upcast=dot_upcast)
    return y, shrink


def _forward_cublas(x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed):
    """The cuBLAS strategy's forward (see the header); without dropout it launches no Triton kernel, as few
    host-side operations as eager PyTorch needs."""
    if dropout_p == 0.0:
        shrink_compute = F.linear(x, lora_A)
        shrink = shrink_compute.to(accumulator_dtype(x.dtype))
    else:
        shrink = torch.empty(x.shape[0], lora_A.shape[0], dtype=accumulator_dtype(x.dtype), device=x.device)
        dot_precision, dot_upcast = _dot_settings(x.dtype)
        _, threshold, inv_keep = _dropout_args(dropout_p)
        lora_shrink(x, lora_A.t(), shrink, scale=1.0, seed=seed, threshold=threshold, inv_keep=inv_keep,
                    has_dropout=True, rank_padded=padded_rank(lora_A.shape[0]), dot_precision=dot_precision,
                    dot_upcast=dot_upcast)
        shrink_compute = shrink.to(x.dtype)
    y = F.linear(x, weight, bias)
    y.addmm_(shrink_compute, lora_B.t(), alpha=scaling)
    return y, shrink


def _scaled_mm(a, b, scaling):
    """scaling · (a @ b) in one cuBLAS call: addmm with beta = 0 ignores its input, a 0-dim stand-in broadcast to
    the result's shape, so no separate multiply runs."""
    return torch.addmm(a.new_empty(()), a, b, beta=0, alpha=scaling)


def _base_grads(grad_out, x, need_dW, need_db, column_sums=None):
    """(dW = gᵀ x, db = Σₜ g) in x's dtype, each None where not needed; db from a kernel's float32 (float64) column
    sums when one already made them."""
    grad_W = grad_out.t() @ x if need_dW else None
    grad_b = None
    if need_db:
        sums = column_sums if column_sums is not None else torch.sum(grad_out, 0, dtype=accumulator_dtype(x.dtype))
        grad_b = sums.to(x.dtype)
    return grad_W, grad_b


def _backward_cublas_no_dropout(grad_out, x, weight, lora_A, lora_B, shrink, scaling, needs):
    """The cuBLAS strategy's backward without dropout: six cuBLAS calls, the scaling folded into alpha."""
    need_dx, need_dA, need_dB, need_dW, need_db = needs
    dx = grad_A = grad_B = None
    if need_dx or need_dA:
        d_shrink = _scaled_mm(grad_out, lora_B, scaling)
        if need_dx:
            dx = torch.mm(grad_out, weight).addmm_(d_shrink, lora_A)
        if need_dA:
            grad_A = torch.mm(d_shrink.t(), x)
    if need_dB:
        grad_B = _scaled_mm(grad_out.t(), shrink.to(x.dtype), scaling)
    return (dx, grad_A, grad_B) + _base_grads(grad_out, x, need_dW, need_db)


def lora_linear_bwd(grad_out, x, weight, lora_A, lora_B, shrink, scaling: float, dropout_p: float, seed: int,
                    needs):
    """(dx, dA, dB, dW, db), each None where its `needs` flag (same order) is False."""
    _check_operands((("x", x), ("grad_out", grad_out), ("weight", weight), ("lora_A", lora_A), ("lora_B", lora_B)))
    if shrink.dim() != 2:
        raise ValueError(f"shrink: expected a 2-D tensor, got shape {tuple(shrink.shape)}")
    # An empty grad_out may come with any strides (out.sum()'s gradient of a [0, N] output has strides (0, 0)).
    if grad_out.shape[0] > 0 and grad_out.shape[1] > 1 and grad_out.stride(1) != 1:
        raise ValueError(f"grad_out: expected a row-major last dimension (stride 1), got strides {grad_out.stride()}")
    if shrink.dtype != accumulator_dtype(x.dtype):
        raise TypeError(f"shrink: expected the {accumulator_dtype(x.dtype)} S saved by lora_linear_fwd, got "
                        f"{shrink.dtype}")
    rank = _check_rank(lora_A)
    need_dx, need_dA, need_dB, need_dW, need_db = (bool(n) for n in needs)
    tokens, width = x.shape
    out_features = weight.shape[0]
    dtype, device = x.dtype, x.device
    if tokens == 0:
        zeros = lambda *shape: torch.zeros(*shape, dtype=dtype, device=device)  # noqa: E731
        return (
            torch.empty(0, width, dtype=dtype, device=device) if need_dx else None,
            zeros(rank, width) if need_dA else None,
            zeros(out_features, rank) if need_dB else None,
            zeros(out_features, width) if need_dW else None,
            zeros(out_features) if need_db else None,
        )
    cublas = gemm_strategy() == "cublas"
    if cublas and dropout_p == 0.0:
        return _backward_cublas_no_dropout(grad_out, x, weight, lora_A, lora_B, shrink, scaling,
                                           (need_dx, need_dA, need_dB, need_dW, need_db))
    rank_padded = padded_rank(rank)
    dot_precision, dot_upcast = _dot_settings(dtype)
    has_dropout, threshold, inv_keep = _dropout_args(dropout_p)
    dropout_args = dict(seed=seed, threshold=threshold, inv_keep=inv_keep, has_dropout=has_dropout)
    dot_args = dict(rank_padded=rank_padded, dot_precision=dot_precision, dot_upcast=dot_upcast)

    # From here on the cuBLAS strategy has dropout: the masked products run in Triton.
    dx = d_shrink = grad_A = grad_B = column_sums = None
    if need_dx or need_dA:
        fuse_ds = not cublas and need_dx and rank_padded <= FUSED_RANK_LIMIT and width > 0
        if cublas:
            d_shrink = _scaled_mm(grad_out, lora_B, scaling).to(shrink.dtype)
        else:
            d_shrink = torch.empty(tokens, rank, dtype=shrink.dtype, device=device)
        if not cublas and not fuse_ds:
            lora_shrink(grad_out, lora_B, d_shrink, scale=scaling, seed=0, threshold=0, inv_keep=1.0,
                        has_dropout=False, **dot_args)
        if need_dx and need_dA and cublas:
            dx = torch.mm(grad_out, weight)
            grad_A = lora_expand_add_grad_A(d_shrink, lora_A, dx, x, seed=seed, threshold=threshold,
                                            inv_keep=inv_keep, **dot_args).to(dtype)
        elif need_dx and cublas:
            dx = torch.mm(grad_out, weight)
            lora_expand_add(d_shrink, lora_A, dx, seed=seed, threshold=threshold, inv_keep=inv_keep,
                            has_dropout=True, rank_padded=rank_padded, dot_precision=dot_precision)
        elif need_dx:
            dx = torch.empty(tokens, width, dtype=dtype, device=device)
            lora_dx_gemm(grad_out, weight, lora_A, lora_B, d_shrink, dx, scaling=scaling, fuse_ds=fuse_ds,
                         **dropout_args, **dot_args)
    if need_dA and grad_A is None:
        grad_A = lora_grad_A(x, d_shrink, **dropout_args, **dot_args).to(dtype)
    if need_dB and cublas:
        grad_B = _scaled_mm(grad_out.t(), shrink.to(dtype), scaling)
    elif need_dB:
        grad_B, column_sums = lora_grad_B(grad_out, shrink, scaling=scaling, with_bias_grad=need_db, **dot_args)
        grad_B = grad_B.to(dtype)
    return (dx, grad_A, grad_B) + _base_grads(grad_out, x, need_dW, need_db, column_sums)
