# The LoRA "expand-add" kernel: out[T, K] += mask ⊙ (dS [T, r] @ A [r, K]), in place, mask regenerated.
#
# Used by the cuBLAS-GEMM strategy's backward with dropout when dx is wanted without dA (lora_A frozen; with
# both, lora_expand_grad_A.py does dx and dA in one pass): dx = g W runs in cuBLAS, then this kernel adds the
# low-rank term with the dropout mask in its epilogue (cuBLAS's beta = 1 accumulation cannot apply a mask). Trade-off: one extra read + write of dx (memory-bound, ≈ 45 µs at 8192 × 4096 bf16 on an H100)
# instead of a [T, K] temporary and a materialised mask; r is small, so each program's dot is cheap and
# the Philox draws hide behind the memory traffic.
import triton
import triton.language as tl

from ._tuning import accumulator_type, ceil_div, expand_configs, launch_autotuned, token_bucket
from .lora_common import dropout_keep_scale, mma


# restore_value: the kernel accumulates into out, so each config the autotuner times must start from the
# same out (without it the first call at a new key returned dx with the term added once per timed run).
@triton.autotune(configs=expand_configs(), key=["T_BUCKET", "K", "R_PAD", "HAS_DROPOUT"], restore_value=["out_ptr"])
@triton.jit(do_not_specialize=["seed", "threshold"])
def _lora_expand_add_kernel(
    small_ptr, a_ptr, out_ptr,
    T, K, R, T_BUCKET,
    stride_st, stride_ar, stride_ak, stride_ot, stride_ok,
    seed, threshold, inv_keep,
    HAS_DROPOUT: tl.constexpr, R_PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid_t = tl.program_id(0)
    pid_k = tl.program_id(1)
    rows = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = pid_k * BLOCK_K + tl.arange(0, BLOCK_K)
    ranks = tl.arange(0, R_PAD)
    rows_in = rows < T
    cols_in = cols < K
    ranks_in = ranks < R
    small = tl.load(small_ptr + rows.to(tl.int64)[:, None] * stride_st + ranks[None, :],
                    mask=rows_in[:, None] & ranks_in[None, :], other=0.0)
    a = tl.load(a_ptr + ranks[:, None] * stride_ar + cols[None, :] * stride_ak,
                mask=ranks_in[:, None] & cols_in[None, :], other=0.0).to(ACC)
    term = mma(small, a, tl.zeros((BLOCK_T, BLOCK_K), dtype=ACC), DOT_PRECISION, DOT_UPCAST)
    if HAS_DROPOUT:
        term = term * dropout_keep_scale(seed, rows, cols, threshold, inv_keep, ACC)
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_ot + cols[None, :] * stride_ok
    inside = rows_in[:, None] & cols_in[None, :]
    out = tl.load(out_ptrs, mask=inside, other=0.0)
    tl.store(out_ptrs, (out.to(ACC) + term).to(out_ptr.dtype.element_ty), mask=inside)


def lora_expand_add(small, lora_A, out, *, seed, threshold, inv_keep, has_dropout, rank_padded, dot_precision):
    """out += mask ⊙ (small @ lora_A) in place; small is the float32 (float64) [T, r] dS, lora_A [r, K] (any strides),
    the mask reference.dropout_keep_mask(seed, T, K, p) scaled by 1 / (1 - p) when has_dropout."""
    tokens, width = out.shape
    if tokens == 0 or width == 0:
        return out

    def grid(meta):
        return (ceil_div(tokens, meta["BLOCK_T"]), ceil_div(width, meta["BLOCK_K"]))

    args = (
        small, lora_A, out,
        tokens, width, lora_A.shape[0], token_bucket(tokens),
        small.stride(0), lora_A.stride(0), lora_A.stride(1), out.stride(0), out.stride(1),
        int(seed), int(threshold), float(inv_keep),
    )
    constants = dict(HAS_DROPOUT=has_dropout, R_PAD=rank_padded, DOT_PRECISION=dot_precision, DOT_UPCAST=False,
                     ACC=accumulator_type(out.dtype))
    key = (token_bucket(tokens), width, rank_padded, has_dropout, small.dtype, lora_A.dtype, out.dtype, out.device)
    launch_autotuned(_lora_expand_add_kernel, grid, key, args, constants)
    return out


__all__ = ["lora_expand_add"]
