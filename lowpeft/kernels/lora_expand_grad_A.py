# The LoRA dropout backward's single pass over [T, K]: dx += mask ⊙ (dS A) in place, and dA = dSᵀ (x ⊙ mask)
# as split-T partials, with the dropout mask regenerated once per tile for both.
#
# Used by the cuBLAS-GEMM strategy's backward with dropout when both dx and dA are wanted (the usual case): dx
# = g W runs in cuBLAS first, then this kernel. It replaces the expand-add kernel followed by the split-T dA
# kernel, which walked the same [T, K] tiles twice and drew the Philox mask twice. Trade-off: each program owns
# a column block of K and a slice of the tokens (the dA reduction needs column ownership), so the dx tiles are
# visited column-block-major rather than row-major, and the dA partials ([splits, r, K] float32, tiny next to x)
# are summed by the launcher, which keeps the result deterministic; the autotuner restores dx between configs.
import torch
import triton
import triton.language as tl

from ._tuning import (accumulator_dtype, accumulator_type, ceil_div, expand_grad_a_configs, launch_autotuned,
                       prune_expand_grad_a_configs, token_bucket, token_slices)
from .lora_common import dropout_keep_scale, mma


@triton.autotune(
    configs=expand_grad_a_configs(),
    key=["T_BUCKET", "K", "R_PAD"],
    prune_configs_by={"early_config_prune": prune_expand_grad_a_configs},
    restore_value=["dx_ptr"],
)
# Sizes stay specialised: without K's divisibility by 16 the masked dx / x accesses lost their 16-byte vectors
# (the p = 0.1 step went 1.05 -> 1.10 ms on the H100, run 31). The size-1 fault of run 26 was the fused dx GEMM's.
@triton.jit(do_not_specialize=["seed", "threshold", "rows_per_split"])
def _lora_expand_add_grad_a_kernel(
    d_shrink_ptr, a_ptr, dx_ptr, x_ptr, part_ptr,
    T, K, R, T_BUCKET, rows_per_split,
    stride_st, stride_ar, stride_ak, stride_dt, stride_dk, stride_xt, stride_xk, stride_ps, stride_pr,
    seed, threshold, inv_keep,
    R_PAD: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_k = tl.program_id(0)
    split = tl.program_id(1)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    cols_in = cols < K
    ranks = tl.arange(0, R_PAD)
    ranks_in = ranks < R
    a = tl.load(a_ptr + ranks[:, None] * stride_ar + cols[None, :] * stride_ak,
                mask=ranks_in[:, None] & cols_in[None, :], other=0.0).to(ACC)
    acc = tl.zeros((R_PAD, BLOCK_K), dtype=ACC)
    first = split * rows_per_split
    last = tl.minimum(first + rows_per_split, T)
    for t0 in range(first, last, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        rows_in = rows < last
        inside = rows_in[:, None] & cols_in[None, :]
        d_shrink = tl.load(d_shrink_ptr + rows.to(tl.int64)[:, None] * stride_st + ranks[None, :],
                           mask=rows_in[:, None] & ranks_in[None, :], other=0.0)
        keep = dropout_keep_scale(seed, rows, cols, threshold, inv_keep, ACC)
        term = mma(d_shrink, a, tl.zeros((BLOCK_T, BLOCK_K), dtype=ACC), DOT_PRECISION, False) * keep
        dx_ptrs = dx_ptr + rows.to(tl.int64)[:, None] * stride_dt + cols[None, :] * stride_dk
        dx = tl.load(dx_ptrs, mask=inside, other=0.0)
        tl.store(dx_ptrs, (dx.to(ACC) + term).to(dx_ptr.dtype.element_ty), mask=inside)
        x = tl.load(x_ptr + rows.to(tl.int64)[:, None] * stride_xt + cols[None, :] * stride_xk, mask=inside, other=0.0)
        x_dropped = (x.to(ACC) * keep).to(x.dtype)
        acc = mma(tl.trans(d_shrink.to(x.dtype)), x_dropped, acc, DOT_PRECISION, DOT_UPCAST)
    tl.store(part_ptr + split * stride_ps + ranks[:, None] * stride_pr + cols[None, :], acc,
             mask=ranks_in[:, None] & cols_in[None, :])


def lora_expand_add_grad_A(d_shrink, lora_A, dx, x, *, seed, threshold, inv_keep, rank_padded, dot_precision,
                           dot_upcast):
    """dx += mask ⊙ (d_shrink @ lora_A) in place and return dA [r, K] (float32, float64 for float64 x) =
    d_shrinkᵀ (x ⊙ mask), where d_shrink is the float32 (float64) [T, r] dS = s · g B, lora_A [r, K] and x [T, K] have any strides, and the mask is
    reference.dropout_keep_mask(seed, T, K, p) scaled by 1 / (1 - p) (threshold, inv_keep from p)."""
    tokens, width = x.shape
    rank = lora_A.shape[0]
    if tokens == 0 or width == 0:
        return torch.zeros(rank, width, dtype=accumulator_dtype(x.dtype), device=x.device)
    splits, rows_per_split = token_slices(tokens, ceil_div(width, 128), x.device, rank=rank,
                                          element_size=x.element_size())
    partials = torch.empty(splits, rank, width, dtype=accumulator_dtype(x.dtype), device=x.device)

    def grid(meta):
        return (ceil_div(width, meta["BLOCK_K"]), splits)

    args = (
        d_shrink, lora_A, dx, x, partials,
        tokens, width, rank, token_bucket(tokens), rows_per_split,
        d_shrink.stride(0), lora_A.stride(0), lora_A.stride(1), dx.stride(0), dx.stride(1),
        x.stride(0), x.stride(1), partials.stride(0), partials.stride(1),
        int(seed), int(threshold), float(inv_keep),
    )
    constants = {"R_PAD": rank_padded, "DOT_PRECISION": dot_precision, "DOT_UPCAST": dot_upcast,
                 "ACC": accumulator_type(x.dtype)}
    key = (token_bucket(tokens), width, rank_padded, d_shrink.dtype, lora_A.dtype, dx.dtype, x.dtype, x.device)
    launch_autotuned(_lora_expand_add_grad_a_kernel, grid, key, args, constants, prune=prune_expand_grad_a_configs)
    return partials.sum(0)


__all__ = ["lora_expand_add_grad_A"]
