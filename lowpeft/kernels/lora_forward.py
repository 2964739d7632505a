# The fused LoRA forward GEMM: y = x Wᵀ + b + s · S Bᵀ, written once, no [T, N] temporary.
#
# One program owns a BLOCK_M x BLOCK_N tile of y and loops over K. With FUSE_SHRINK (no dropout, small r)
# the same x tile that feeds x Wᵀ also feeds a second, [BLOCK_M, r] accumulator S = x Aᵀ, so the shrink
# costs no extra pass over x; the programs of column tile 0 write S (saved for backward). Otherwise S was
# computed beforehand (lora_shrink, with the dropout mask) and the epilogue folds S Bᵀ into the same
# accumulator in RANK_CHUNK steps ("K + r steps"). Trade-off: with FUSE_SHRINK every column tile
# recomputes the tiny x Aᵀ product (r / BLOCK_N extra tensor-core work, ~6% at r = 16) to avoid a
# second read of x and a launch; above FUSED_RANK_LIMIT the extra accumulator would spill, so the
# separate shrink pass is used.
# Two variants share the epilogue: a pointer-based kernel (any strides, the CPU interpreter, any GPU) and
# a persistent kernel reading x, W and A through TMA tensor descriptors (Hopper+, row-major 16-byte
# aligned operands), which the launcher picks whenever the operands allow: on an H100 it is what brings
# the frozen GEMM to cuBLAS's speed (benchmarks/NOTES_lora.md).
import triton
import triton.language as tl

from ._tuning import (RANK_CHUNK, accumulator_type, ceil_div, forward_tma_configs, gemm_configs, multiprocessor_count,
                       prune_gemm_configs, tma_ready, token_bucket)
from .lora_common import grouped_tile, mma


@triton.jit
def _forward_epilogue(acc, s_acc, pid_m, pid_n, T, N, R, bias_ptr, b_ptr, s_ptr, y_ptr,
                      stride_bn, stride_br, stride_st, stride_yt, scaling,
                      HAS_BIAS: tl.constexpr, FUSE_SHRINK: tl.constexpr, R_PAD: tl.constexpr,
                      R_CHUNK: tl.constexpr, DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, DOT_UPCAST: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """acc (= x Wᵀ tile) += s · S Bᵀ (+ bias); write S (column tile 0, fused mode) and the y tile."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_in = rows < T
    cols_in = cols < N
    rows_ld = (rows % T).to(tl.int64)
    cols_ld = (cols % N).to(tl.int64)
    ranks = tl.arange(0, R_PAD)
    ranks_in = ranks < R
    if FUSE_SHRINK:
        if pid_n == 0:
            s_ptrs = s_ptr + rows.to(tl.int64)[:, None] * stride_st + ranks[None, :]
            tl.store(s_ptrs, s_acc, mask=rows_in[:, None] & ranks_in[None, :])
        bt = tl.load(b_ptr + cols_ld[None, :] * stride_bn + ranks[:, None] * stride_br,
                     mask=ranks_in[:, None], other=0.0)
        # Zero the padded rank columns: an Inf in x makes them Inf·0 = NaN, which would leak into y. The scaling
        # multiplies B's tile (rounded to its dtype: past that range where |s · B| is, LoRA's B being small), not S,
        # whose s · S overflows in 16-bit where large activations make it so.
        s_acc = tl.where(ranks_in[None, :], s_acc, 0.0)
        acc = mma(s_acc.to(bt.dtype), (bt.to(ACC) * scaling).to(bt.dtype), acc, DOT_PRECISION, DOT_UPCAST)
    else:
        chunk = tl.arange(0, R_CHUNK)
        for r0 in range(0, R_PAD, R_CHUNK):
            chunk_in = r0 + chunk < R
            s = tl.load(s_ptr + rows_ld[:, None] * stride_st + (r0 + chunk)[None, :],
                        mask=chunk_in[None, :], other=0.0)
            bt = tl.load(b_ptr + cols_ld[None, :] * stride_bn + (r0 + chunk)[:, None] * stride_br,
                         mask=chunk_in[:, None], other=0.0)
            acc = mma(s.to(bt.dtype), (bt.to(ACC) * scaling).to(bt.dtype), acc, DOT_PRECISION, DOT_UPCAST)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols_ld).to(ACC)[None, :]
    y_ptrs = y_ptr + rows.to(tl.int64)[:, None] * stride_yt + cols[None, :]
    tl.store(y_ptrs, acc.to(y_ptr.dtype.element_ty), mask=rows_in[:, None] & cols_in[None, :])


@triton.autotune(
    configs=gemm_configs(),
    key=["T_BUCKET", "N", "K", "R_PAD", "HAS_BIAS", "FUSE_SHRINK"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)
@triton.heuristics({"EVEN_K": lambda meta: meta["K"] % meta["BLOCK_K"] == 0})
# Sizes are not specialised, as in the dx kernel (lora_backward_dx.py: a size-1 specialisation faulted there).
@triton.jit(do_not_specialize=["T", "N", "K", "R"])
def _lora_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, a_ptr, b_ptr, s_ptr, y_ptr,
    T, N, K, R, T_BUCKET,
    stride_xt, stride_xk, stride_wn, stride_wk, stride_ar, stride_ak, stride_bn, stride_br,
    stride_st, stride_yt,
    scaling,
    HAS_BIAS: tl.constexpr, FUSE_SHRINK: tl.constexpr, R_PAD: tl.constexpr, R_CHUNK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_K: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_m, pid_n = grouped_tile(pid, tl.cdiv(T, BLOCK_M), tl.cdiv(N, BLOCK_N), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    # Out-of-range rows / columns load a valid row instead (no mask in the main loop); never stored.
    rows_ld = (rows % T).to(tl.int64)
    cols_ld = (cols % N).to(tl.int64)
    red = tl.arange(0, BLOCK_K)
    ranks = tl.arange(0, R_PAD)
    ranks_in = ranks < R
    x_ptrs = x_ptr + rows_ld[:, None] * stride_xt + red[None, :] * stride_xk
    w_ptrs = w_ptr + cols_ld[None, :] * stride_wn + red[:, None] * stride_wk
    a_ptrs = a_ptr + ranks[None, :] * stride_ar + red[:, None] * stride_ak
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    s_acc = tl.zeros((BLOCK_M, R_PAD), dtype=ACC)
    for k0 in range(0, K, BLOCK_K):
        if EVEN_K:
            x = tl.load(x_ptrs)
            w = tl.load(w_ptrs)
        else:
            red_in = red < K - k0
            x = tl.load(x_ptrs, mask=red_in[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=red_in[:, None], other=0.0)
        acc = mma(x, w, acc, DOT_PRECISION, DOT_UPCAST)
        if FUSE_SHRINK:
            if EVEN_K:
                a = tl.load(a_ptrs, mask=ranks_in[None, :], other=0.0)
            else:
                a = tl.load(a_ptrs, mask=(red < K - k0)[:, None] & ranks_in[None, :], other=0.0)
            s_acc = mma(x, a, s_acc, DOT_PRECISION, DOT_UPCAST)
            a_ptrs += BLOCK_K * stride_ak
        x_ptrs += BLOCK_K * stride_xk
        w_ptrs += BLOCK_K * stride_wk

    _forward_epilogue(acc, s_acc, pid_m, pid_n, T, N, R, bias_ptr, b_ptr, s_ptr, y_ptr,
                      stride_bn, stride_br, stride_st, stride_yt, scaling,
                      HAS_BIAS, FUSE_SHRINK, R_PAD, R_CHUNK, DOT_PRECISION, ACC, DOT_UPCAST, BLOCK_M, BLOCK_N)


@triton.autotune(
    configs=forward_tma_configs(),
    key=["T_BUCKET", "N", "K", "R_PAD", "HAS_BIAS", "FUSE_SHRINK"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)
@triton.jit
def _lora_fwd_tma_kernel(
    x_desc, w_desc, a_desc, bias_ptr, b_ptr, s_ptr, y_ptr,
    T, N, K, R, T_BUCKET,
    stride_bn, stride_br, stride_st, stride_yt,
    scaling,
    HAS_BIAS: tl.constexpr, FUSE_SHRINK: tl.constexpr, R_PAD: tl.constexpr, R_CHUNK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    FLATTEN: tl.constexpr,
):
    num_m = tl.cdiv(T, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    k_steps = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(tl.program_id(0), num_m * num_n, NUM_SMS, flatten=FLATTEN):
        pid_m, pid_n = grouped_tile(tile, num_m, num_n, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        s_acc = tl.zeros((BLOCK_M, R_PAD), dtype=ACC)
        for kk in range(k_steps):
            # Out-of-bounds parts of a box read as zeros: ragged T, N, K and r need no masks here.
            x = x_desc.load([pid_m * BLOCK_M, kk * BLOCK_K])
            w = w_desc.load([pid_n * BLOCK_N, kk * BLOCK_K])
            acc = tl.dot(x, w.T, acc, input_precision=DOT_PRECISION)
            if FUSE_SHRINK:
                a = a_desc.load([0, kk * BLOCK_K])
                s_acc = tl.dot(x, a.T, s_acc, input_precision=DOT_PRECISION)
        _forward_epilogue(acc, s_acc, pid_m, pid_n, T, N, R, bias_ptr, b_ptr, s_ptr, y_ptr,
                          stride_bn, stride_br, stride_st, stride_yt, scaling,
                          HAS_BIAS, FUSE_SHRINK, R_PAD, R_CHUNK, DOT_PRECISION, ACC, False, BLOCK_M, BLOCK_N)


def lora_forward_gemm(x, weight, bias, lora_A, lora_B, shrink, y, *, scaling, fuse_shrink, rank_padded,
                      dot_precision, dot_upcast):
    """Launch the fused forward GEMM into y [T, N]. With fuse_shrink it also writes shrink [T, r]
    (float32, float64 for float64 x); otherwise it reads shrink, already holding dropout(x) Aᵀ. The persistent TMA variant runs
    whenever x, W and A are TMA-readable (Hopper+, row-major, 16-byte aligned), else the pointer one."""
    tokens, width = x.shape
    out_features, rank = weight.shape[0], lora_A.shape[0]
    if tokens == 0 or out_features == 0:
        return y

    bias_arg = bias if bias is not None else y
    constants = dict(HAS_BIAS=bias is not None, FUSE_SHRINK=fuse_shrink, R_PAD=rank_padded,
                     R_CHUNK=min(rank_padded, RANK_CHUNK), DOT_PRECISION=dot_precision, ACC=accumulator_type(x.dtype))
    if tma_ready(x, weight) and (not fuse_shrink or tma_ready(lora_A)):
        from triton.tools.tensor_descriptor import TensorDescriptor

        sms = multiprocessor_count(x.device.index or 0)

        def persistent_grid(meta):
            return (min(sms, ceil_div(tokens, meta["BLOCK_M"]) * ceil_div(out_features, meta["BLOCK_N"])),)

        # Block shapes are placeholders: the autotune pre-hook sets the chosen config's.
        descriptors = [TensorDescriptor.from_tensor(t, [16, 16])
                       for t in (x, weight, lora_A if fuse_shrink else weight)]
        _lora_fwd_tma_kernel[persistent_grid](
            *descriptors, bias_arg, lora_B, shrink, y,
            tokens, out_features, width, rank, token_bucket(tokens),
            lora_B.stride(0), lora_B.stride(1), shrink.stride(0), y.stride(0),
            float(scaling), NUM_SMS=sms, **constants,
        )
        return y

    def grid(meta):
        return (ceil_div(tokens, meta["BLOCK_M"]) * ceil_div(out_features, meta["BLOCK_N"]),)

    _lora_fwd_kernel[grid](
        x, weight, bias_arg, lora_A, lora_B, shrink, y,
        tokens, out_features, width, rank, token_bucket(tokens),
        x.stride(0), x.stride(1), weight.stride(0), weight.stride(1), lora_A.stride(0), lora_A.stride(1),
        lora_B.stride(0), lora_B.stride(1), shrink.stride(0), y.stride(0),
        float(scaling), DOT_UPCAST=dot_upcast, **constants,
    )
    return y


__all__ = ["lora_forward_gemm"]
