# Split-T partials for the LoRA weight gradients: out[r, C] = scale · Lᵀ @ dropout(X), reduced over tokens.
#
#   dA  [r, K] = dSᵀ (x ⊙ m / (1-p))      L = dS [T, r],  X = x [T, K] (mask regenerated from the seed)
#   dBᵀ [r, N] = s · Sᵀ g                  L = S  [T, r],  X = g [T, N] (plus db = Σₜ g when asked)
# Each program owns a column block of X and one slice of the tokens and writes a float32 (float64) partial; the
# launcher sums the few partials (a [splits, r, C] tensor, tiny next to X). Trade-off: partials instead
# of atomics keep the result deterministic and each X element is read exactly once; the number of
# slices is chosen so about two waves of programs cover the GPU, within a memory bound (_tuning.token_slices).
# With dropout and dx wanted too, dA comes from lora_expand_grad_A.py's single pass instead.
import torch
import triton
import triton.language as tl

from ._tuning import (accumulator_dtype, accumulator_type, ceil_div, prune_rank_accumulator_configs, split_t_configs,
                       token_bucket, token_slices)
from .lora_common import dropout_keep_scale, mma


@triton.autotune(
    configs=split_t_configs(),
    key=["T_BUCKET", "C", "R_PAD", "HAS_DROPOUT", "HAS_COLSUM"],
    prune_configs_by={"early_config_prune": prune_rank_accumulator_configs},
)
@triton.jit(do_not_specialize=["seed", "threshold"])
def _lora_split_t_kernel(
    big_ptr, small_ptr, part_ptr, colsum_ptr,
    T, C, R, T_BUCKET, rows_per_split,
    stride_bt, stride_bc, stride_st, stride_ps, stride_pr, stride_pc,
    scale, seed, threshold, inv_keep,
    HAS_DROPOUT: tl.constexpr, HAS_COLSUM: tl.constexpr, R_PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_C: tl.constexpr,
):
    pid_c = tl.program_id(0)
    split = tl.program_id(1)
    cols = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    cols_in = cols < C
    cols_ld = (cols % C).to(tl.int64)
    ranks = tl.arange(0, R_PAD)
    ranks_in = ranks < R
    acc = tl.zeros((R_PAD, BLOCK_C), dtype=ACC)
    colsum = tl.zeros((BLOCK_C,), dtype=ACC)
    first = split * rows_per_split
    last = tl.minimum(first + rows_per_split, T)
    for t0 in range(first, last, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        rows_in = rows < last
        big = tl.load(big_ptr + rows.to(tl.int64)[:, None] * stride_bt + cols_ld[None, :] * stride_bc,
                      mask=rows_in[:, None], other=0.0)
        if HAS_COLSUM:
            colsum += tl.sum(big.to(ACC), axis=0)
        if HAS_DROPOUT:
            big = (big.to(ACC) * dropout_keep_scale(seed, rows, cols, threshold, inv_keep, ACC)).to(big.dtype)
        small = tl.load(small_ptr + rows.to(tl.int64)[:, None] * stride_st + ranks[None, :],
                        mask=rows_in[:, None] & ranks_in[None, :], other=0.0)
        acc = mma(tl.trans(small.to(big.dtype)), big, acc, DOT_PRECISION, DOT_UPCAST)
    part_ptrs = part_ptr + split * stride_ps + ranks[:, None] * stride_pr + cols[None, :] * stride_pc
    tl.store(part_ptrs, acc * scale, mask=ranks_in[:, None] & cols_in[None, :])
    if HAS_COLSUM:
        tl.store(colsum_ptr + split * C + cols, colsum, mask=cols_in)


def _split_t(big, small, *, transpose_out, scale, seed, threshold, inv_keep, has_dropout, with_colsum,
             rank_padded, dot_precision, dot_upcast):
    """Float32 sums over tokens: (scale · smallᵀ dropout(big)) as [r, C] (or [C, r] with transpose_out),
    and Σₜ big [C] when with_colsum."""
    tokens, columns = big.shape
    rank = small.shape[1]
    splits, rows_per_split = token_slices(tokens, ceil_div(columns, 128), big.device, rank=rank,
                                          element_size=big.element_size())
    if transpose_out:
        partials = torch.empty(splits, columns, rank, dtype=accumulator_dtype(big.dtype), device=big.device)
        stride_r, stride_c = partials.stride(2), partials.stride(1)
    else:
        partials = torch.empty(splits, rank, columns, dtype=accumulator_dtype(big.dtype), device=big.device)
        stride_r, stride_c = partials.stride(1), partials.stride(2)
    colsums = (torch.empty(splits, columns, dtype=accumulator_dtype(big.dtype), device=big.device) if with_colsum
               else partials)

    def grid(meta):
        return (ceil_div(columns, meta["BLOCK_C"]), splits)

    _lora_split_t_kernel[grid](
        big, small, partials, colsums,
        tokens, columns, rank, token_bucket(tokens), rows_per_split,
        big.stride(0), big.stride(1), small.stride(0), partials.stride(0), stride_r, stride_c,
        float(scale), int(seed), int(threshold), float(inv_keep),
        HAS_DROPOUT=has_dropout, HAS_COLSUM=with_colsum, R_PAD=rank_padded,
        DOT_PRECISION=dot_precision, DOT_UPCAST=dot_upcast, ACC=accumulator_type(big.dtype),
    )
    return partials.sum(0), (colsums.sum(0) if with_colsum else None)


def lora_grad_A(x, d_shrink, *, seed, threshold, inv_keep, has_dropout, rank_padded, dot_precision, dot_upcast):
    """dA [r, K] (float32, float64 for float64 x) = dSᵀ (x ⊙ m / (1-p)); d_shrink is the float32 (float64) [T, r]
    dS = s · g B."""
    grad_A, _ = _split_t(x, d_shrink, transpose_out=False, scale=1.0, seed=seed, threshold=threshold,
                         inv_keep=inv_keep, has_dropout=has_dropout, with_colsum=False,
                         rank_padded=rank_padded, dot_precision=dot_precision, dot_upcast=dot_upcast)
    return grad_A


def lora_grad_B(grad_out, shrink, *, scaling, with_bias_grad, rank_padded, dot_precision, dot_upcast):
    """(dB [N, r], db [N] or None), float32 (float64 for float64 g): dB = s · gᵀ S and db = Σₜ g, in one pass
    over g."""
    return _split_t(grad_out, shrink, transpose_out=True, scale=scaling, seed=0, threshold=0, inv_keep=1.0,
                    has_dropout=False, with_colsum=with_bias_grad, rank_padded=rank_padded,
                    dot_precision=dot_precision, dot_upcast=dot_upcast)


__all__ = ["lora_grad_A", "lora_grad_B"]
