# The LoRA "shrink" kernel: out[T, r] = scale · (dropout(x) [T, K]) @ M [K, r], one pass over x.
#
# Used for S = dropout(x) Aᵀ in the forward pass when dropout is on (or r is too large to ride along in
# the forward GEMM), and for dS = s · g B in the backward pass when r is too large to ride along in the
# dx GEMM. Trade-off: one program owns a block of rows and the whole (padded) rank, so x is read exactly
# once and no cross-program reduction is needed; the small matrix M is re-read by every row block (it is
# r·K elements, L2-resident). The dropout mask is regenerated from the seed, never stored.
import triton
import triton.language as tl

from ._tuning import accumulator_type, ceil_div, launch_autotuned, row_block_configs, token_bucket
from .lora_common import dropout_keep_scale, mma


@triton.autotune(configs=row_block_configs(), key=["T_BUCKET", "K", "R_PAD", "HAS_DROPOUT"])
@triton.jit(do_not_specialize=["seed", "threshold"])
def _lora_shrink_kernel(
    x_ptr, m_ptr, out_ptr,
    T, K, R, T_BUCKET,
    stride_xt, stride_xk, stride_mk, stride_mr, stride_ot,
    scale, seed, threshold, inv_keep,
    HAS_DROPOUT: tl.constexpr, R_PAD: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_K: tl.constexpr,
):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    rows_in = rows < T
    ranks = tl.arange(0, R_PAD)
    ranks_in = ranks < R
    cols = tl.arange(0, BLOCK_K)
    x_ptrs = x_ptr + rows.to(tl.int64)[:, None] * stride_xt + cols[None, :] * stride_xk
    m_ptrs = m_ptr + cols[:, None] * stride_mk + ranks[None, :] * stride_mr
    acc = tl.zeros((BLOCK_T, R_PAD), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        cols_in = cols < K - k0
        x = tl.load(x_ptrs, mask=rows_in[:, None] & cols_in[None, :], other=0.0)
        if HAS_DROPOUT:
            keep_scale = dropout_keep_scale(seed, rows, k0 + cols, threshold, inv_keep, ACC)
            x = (x.to(ACC) * keep_scale).to(x_ptr.dtype.element_ty)
        m = tl.load(m_ptrs, mask=cols_in[:, None] & ranks_in[None, :], other=0.0)
        acc = mma(x, m, acc, DOT_PRECISION, DOT_UPCAST)
        x_ptrs += BLOCK_K * stride_xk
        m_ptrs += BLOCK_K * stride_mk
    out_ptrs = out_ptr + rows.to(tl.int64)[:, None] * stride_ot + ranks[None, :]
    tl.store(out_ptrs, acc * scale, mask=rows_in[:, None] & ranks_in[None, :])


def lora_shrink(x, matrix_t, out, *, scale, seed, threshold, inv_keep, has_dropout, rank_padded,
                dot_precision, dot_upcast):
    """out [T, r] (float32, float64 for float64 x; row-major) = scale · dropout(x) @ matrix_t, where matrix_t is a [K, r] view
    (any strides) and the dropout mask is reference.dropout_keep_mask(seed, T, K, p)."""
    tokens, width = x.shape
    rank = matrix_t.shape[1]
    if tokens == 0:
        return out

    def grid(meta):
        return (ceil_div(tokens, meta["BLOCK_T"]),)

    args = (
        x, matrix_t, out,
        tokens, width, rank, token_bucket(tokens),
        x.stride(0), x.stride(1), matrix_t.stride(0), matrix_t.stride(1), out.stride(0),
        float(scale), int(seed), int(threshold), float(inv_keep),
    )
    constants = dict(HAS_DROPOUT=has_dropout, R_PAD=rank_padded, DOT_PRECISION=dot_precision, DOT_UPCAST=dot_upcast,
                     ACC=accumulator_type(x.dtype))
    key = (token_bucket(tokens), width, rank_padded, has_dropout, x.dtype, matrix_t.dtype, out.dtype, x.device)
    launch_autotuned(_lora_shrink_kernel, grid, key, args, constants)
    return out


__all__ = ["lora_shrink"]
