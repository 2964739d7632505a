# The fused LoRA input-gradient GEMM: dx = g W + (dS A) ⊙ m / (1-p), with dS = s · g B, dx written once.
#
# One program owns a BLOCK_M x BLOCK_N tile of dx [T, K] and loops over the N outputs. With FUSE_DS
# (small r) the g tile that feeds g W also feeds a second, [BLOCK_M, r] accumulator g B, so dS costs no
# extra pass over g; the programs of column tile 0 write dS (float32, needed by dA). Otherwise dS was
# computed beforehand (lora_shrink over g) and is read in the epilogue. The epilogue adds dS A, scaled
# by the dropout mask regenerated from the seed (bit-exact with the forward's). Trade-off: as in the
# forward GEMM, every column tile recomputes the small g B product (r / BLOCK_N extra tensor-core work)
# instead of a second read of g; with dropout the LoRA term needs its own [BLOCK_M, BLOCK_N] temporary
# before the mask multiply, which costs registers, so autotuning may pick smaller tiles there.
# Two variants share the epilogue: pointer-based (any strides, the interpreter) and persistent with TMA
# tensor descriptors for g, W and the padded B (Hopper+, row-major 16-byte aligned), picked when possible.
import triton
import triton.language as tl

from ._tuning import (RANK_CHUNK, accumulator_type, ceil_div, dx_tma_configs, gemm_configs, multiprocessor_count,
                       prune_gemm_configs, tma_ready, token_bucket)
from .lora_common import dropout_keep_scale, grouped_tile, mma


@triton.jit
def _dx_epilogue(acc, d_acc, pid_m, pid_k, T, K, R, a_ptr, ds_ptr, dx_ptr,
                 stride_ar, stride_ak, stride_dst, stride_dxt, scaling, seed, threshold, inv_keep,
                 HAS_DROPOUT: tl.constexpr, FUSE_DS: tl.constexpr, R_PAD: tl.constexpr, R_CHUNK: tl.constexpr,
                 DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, DOT_UPCAST: tl.constexpr,
                 BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """acc (= g W tile) += (dS A) ⊙ m / (1-p); write dS (column tile 0, fused mode) and the dx tile."""
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    feats = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_in = rows < T
    feats_in = feats < K
    rows_ld = (rows % T).to(tl.int64)
    feats_ld = (feats % K).to(tl.int64)
    ranks = tl.arange(0, R_PAD)
    ranks_in = ranks < R
    if HAS_DROPOUT:
        lora = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    else:
        lora = acc
    if FUSE_DS:
        # Zero the padded rank columns: an Inf in g makes them Inf·0 = NaN, which would leak into dx.
        d_shrink = tl.where(ranks_in[None, :], d_acc * scaling, 0.0)
        if pid_k == 0:
            ds_ptrs = ds_ptr + rows.to(tl.int64)[:, None] * stride_dst + ranks[None, :]
            tl.store(ds_ptrs, d_shrink, mask=rows_in[:, None] & ranks_in[None, :])
        a = tl.load(a_ptr + ranks[:, None] * stride_ar + feats_ld[None, :] * stride_ak,
                    mask=ranks_in[:, None], other=0.0)
        lora = mma(d_shrink.to(a.dtype), a, lora, DOT_PRECISION, DOT_UPCAST)
    else:
        chunk = tl.arange(0, R_CHUNK)
        for r0 in range(0, R_PAD, R_CHUNK):
            chunk_in = r0 + chunk < R
            d_shrink = tl.load(ds_ptr + rows_ld[:, None] * stride_dst + (r0 + chunk)[None, :],
                               mask=chunk_in[None, :], other=0.0)
            a = tl.load(a_ptr + (r0 + chunk)[:, None] * stride_ar + feats_ld[None, :] * stride_ak,
                        mask=chunk_in[:, None], other=0.0)
            lora = mma(d_shrink.to(a.dtype), a, lora, DOT_PRECISION, DOT_UPCAST)
    if HAS_DROPOUT:
        acc += lora * dropout_keep_scale(seed, rows, feats, threshold, inv_keep, ACC)
    else:
        acc = lora
    dx_ptrs = dx_ptr + rows.to(tl.int64)[:, None] * stride_dxt + feats[None, :]
    tl.store(dx_ptrs, acc.to(dx_ptr.dtype.element_ty), mask=rows_in[:, None] & feats_in[None, :])


@triton.autotune(
    configs=gemm_configs(),
    key=["T_BUCKET", "N", "K", "R_PAD", "HAS_DROPOUT", "FUSE_DS"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)
@triton.heuristics({"EVEN_N": lambda meta: meta["N"] % meta["BLOCK_K"] == 0})
# Sizes are not specialised: with T = K = N = 1 (specialised to constants) the float16 kernel made an
# out-of-range shared / local access on the H100 (compute-sanitizer, triton 3.6, run 26).
@triton.jit(do_not_specialize=["seed", "threshold", "T", "N", "K", "R"])
def _lora_dx_kernel(
    # BLOCK_N tiles dx's columns (the K features); BLOCK_K is the reduction step over the N outputs.
    g_ptr, w_ptr, a_ptr, b_ptr, ds_ptr, dx_ptr,
    T, N, K, R, T_BUCKET,
    stride_gt, stride_wn, stride_wk, stride_ar, stride_ak, stride_bn, stride_br, stride_dst, stride_dxt,
    scaling, seed, threshold, inv_keep,
    HAS_DROPOUT: tl.constexpr, FUSE_DS: tl.constexpr, R_PAD: tl.constexpr, R_CHUNK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, DOT_UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    EVEN_N: tl.constexpr,
):
    pid = tl.program_id(0)
    pid_m, pid_k = grouped_tile(pid, tl.cdiv(T, BLOCK_M), tl.cdiv(K, BLOCK_N), GROUP_M)
    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    feats = pid_k * BLOCK_N + tl.arange(0, BLOCK_N)
    rows_ld = (rows % T).to(tl.int64)
    feats_ld = (feats % K).to(tl.int64)
    red = tl.arange(0, BLOCK_K)
    ranks = tl.arange(0, R_PAD)
    g_ptrs = g_ptr + rows_ld[:, None] * stride_gt + red[None, :]
    w_ptrs = w_ptr + red.to(tl.int64)[:, None] * stride_wn + feats_ld[None, :] * stride_wk
    b_ptrs = b_ptr + red.to(tl.int64)[:, None] * stride_bn + ranks[None, :] * stride_br
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
    d_acc = tl.zeros((BLOCK_M, R_PAD), dtype=ACC)
    for n0 in range(0, N, BLOCK_K):
        if EVEN_N:
            g = tl.load(g_ptrs)
            w = tl.load(w_ptrs)
        else:
            red_in = red < N - n0
            g = tl.load(g_ptrs, mask=red_in[None, :], other=0.0)
            w = tl.load(w_ptrs, mask=red_in[:, None], other=0.0)
        acc = mma(g, w, acc, DOT_PRECISION, DOT_UPCAST)
        if FUSE_DS:
            # lora_B arrives zero-padded to R_PAD columns: no rank mask (see lora_dx_gemm).
            if EVEN_N:
                b = tl.load(b_ptrs)
            else:
                b = tl.load(b_ptrs, mask=(red < N - n0)[:, None], other=0.0)
            d_acc = mma(g, b, d_acc, DOT_PRECISION, DOT_UPCAST)
            b_ptrs += BLOCK_K * stride_bn
        g_ptrs += BLOCK_K
        w_ptrs += BLOCK_K * stride_wn

    _dx_epilogue(acc, d_acc, pid_m, pid_k, T, K, R, a_ptr, ds_ptr, dx_ptr,
                 stride_ar, stride_ak, stride_dst, stride_dxt, scaling, seed, threshold, inv_keep,
                 HAS_DROPOUT, FUSE_DS, R_PAD, R_CHUNK, DOT_PRECISION, ACC, DOT_UPCAST, BLOCK_M, BLOCK_N)


@triton.autotune(
    configs=dx_tma_configs(),
    key=["T_BUCKET", "N", "K", "R_PAD", "HAS_DROPOUT", "FUSE_DS"],
    prune_configs_by={"early_config_prune": prune_gemm_configs},
)
@triton.jit(do_not_specialize=["seed", "threshold"])
def _lora_dx_tma_kernel(
    g_desc, w_desc, b_desc, a_ptr, ds_ptr, dx_ptr,
    T, N, K, R, T_BUCKET,
    stride_ar, stride_ak, stride_dst, stride_dxt,
    scaling, seed, threshold, inv_keep,
    HAS_DROPOUT: tl.constexpr, FUSE_DS: tl.constexpr, R_PAD: tl.constexpr, R_CHUNK: tl.constexpr,
    DOT_PRECISION: tl.constexpr, ACC: tl.constexpr, NUM_SMS: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    FLATTEN: tl.constexpr,
):
    num_m = tl.cdiv(T, BLOCK_M)
    num_k = tl.cdiv(K, BLOCK_N)
    n_steps = tl.cdiv(N, BLOCK_K)
    for tile in tl.range(tl.program_id(0), num_m * num_k, NUM_SMS, flatten=FLATTEN):
        pid_m, pid_k = grouped_tile(tile, num_m, num_k, GROUP_M)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=ACC)
        d_acc = tl.zeros((BLOCK_M, R_PAD), dtype=ACC)
        for nn in range(n_steps):
            # Out-of-bounds parts of a box read as zeros: ragged T, N, K need no masks here.
            g = g_desc.load([pid_m * BLOCK_M, nn * BLOCK_K])
            w = w_desc.load([nn * BLOCK_K, pid_k * BLOCK_N])
            acc = tl.dot(g, w, acc, input_precision=DOT_PRECISION)
            if FUSE_DS:
                b = b_desc.load([nn * BLOCK_K, 0])
                d_acc = tl.dot(g, b, d_acc, input_precision=DOT_PRECISION)
        _dx_epilogue(acc, d_acc, pid_m, pid_k, T, K, R, a_ptr, ds_ptr, dx_ptr,
                     stride_ar, stride_ak, stride_dst, stride_dxt, scaling, seed, threshold, inv_keep,
                     HAS_DROPOUT, FUSE_DS, R_PAD, R_CHUNK, DOT_PRECISION, ACC, False, BLOCK_M, BLOCK_N)


def lora_dx_gemm(grad_out, weight, lora_A, lora_B, d_shrink, dx, *, scaling, seed, threshold, inv_keep,
                 has_dropout, fuse_ds, rank_padded, dot_precision, dot_upcast):
    """Launch the fused dx GEMM into dx [T, K]. With fuse_ds it also writes d_shrink [T, r] (float32 / float64,
    = s · g B); otherwise it reads d_shrink, already holding it."""
    tokens, out_features = grad_out.shape
    width, rank = weight.shape[1], lora_A.shape[0]
    if tokens == 0 or width == 0:
        return dx
    if fuse_ds and tuple(lora_B.stride()) != (rank_padded, 1):
        # The fused g B operand is loaded without a rank mask, from rows of R_PAD elements: on an H100
        # (triton 3.6) a rank-masked, row-major [BLOCK_K, 16] 16-bit operand with r = 7 gave wrong dS.
        padded = lora_B.new_zeros(out_features, rank_padded)
        padded[:, :rank] = lora_B
        lora_B = padded

    constants = dict(HAS_DROPOUT=has_dropout, FUSE_DS=fuse_ds, R_PAD=rank_padded,
                     R_CHUNK=min(rank_padded, RANK_CHUNK), DOT_PRECISION=dot_precision,
                     ACC=accumulator_type(grad_out.dtype))
    dropout_args = (float(scaling), int(seed), int(threshold), float(inv_keep))
    if tma_ready(grad_out, weight) and (not fuse_ds or tma_ready(lora_B)):
        from triton.tools.tensor_descriptor import TensorDescriptor

        sms = multiprocessor_count(grad_out.device.index or 0)

        def persistent_grid(meta):
            return (min(sms, ceil_div(tokens, meta["BLOCK_M"]) * ceil_div(width, meta["BLOCK_N"])),)

        # Block shapes are placeholders: the autotune pre-hook sets the chosen config's.
        descriptors = [TensorDescriptor.from_tensor(t, [16, 16])
                       for t in (grad_out, weight, lora_B if fuse_ds else weight)]
        _lora_dx_tma_kernel[persistent_grid](
            *descriptors, lora_A, d_shrink, dx,
            tokens, out_features, width, rank, token_bucket(tokens),
            lora_A.stride(0), lora_A.stride(1), d_shrink.stride(0), dx.stride(0),
            *dropout_args, NUM_SMS=sms, **constants,
        )
        return dx

    def grid(meta):
        return (ceil_div(tokens, meta["BLOCK_M"]) * ceil_div(width, meta["BLOCK_N"]),)

    _lora_dx_kernel[grid](
        grad_out, weight, lora_A, lora_B, d_shrink, dx,
        tokens, out_features, width, rank, token_bucket(tokens),
        grad_out.stride(0), weight.stride(0), weight.stride(1), lora_A.stride(0), lora_A.stride(1),
        lora_B.stride(0), lora_B.stride(1), d_shrink.stride(0), dx.stride(0),
        *dropout_args, DOT_UPCAST=dot_upcast, **constants,
    )
    return dx


__all__ = ["lora_dx_gemm"]
