# The int8 frozen base's dequantize kernel: W[o, i] = q[o, i] · scale[o], q int8 [out, in] (symmetric, one scale
# per output row), rounded once from float32 (float64 for float64 outputs) to the output dtype.
#
# Trade-off: the LoRA layer over an int8 base dequantizes the whole weight into a transient tensor before each
# GEMM (forward, and again for dx in backward) instead of dequantizing tiles inside the GEMM's main loop: the
# frozen GEMM stays cuBLAS's, this kernel is one memory pass (1 byte read, 2 written per element in bf16,
# ~16 µs for a 4096 x 4096 weight on an H100 against ~350 µs for that layer's GEMM at 8192 tokens), and only
# one layer's dequantized weight is alive at a time. A fused dequant-GEMM would save that pass and the transient
# at the cost of a GEMM of its own (lowpeft's Triton GEMMs ran 4-10 % behind cuBLAS, NOTES_lora.md).
import torch
import triton
import triton.language as tl

from ._tuning import accumulator_type, ceil_div, device_context, interpreting


@triton.jit
def _dequantize_int8_kernel(
    q_ptr, scale_ptr, out_ptr,
    rows, cols,
    stride_q_row, stride_q_col, stride_scale, stride_out_row,
    ACC: tl.constexpr, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    col = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    row_in = row < rows
    mask = row_in[:, None] & (col < cols)[None, :]
    q = tl.load(q_ptr + row[:, None] * stride_q_row + col[None, :] * stride_q_col, mask=mask, other=0)
    scale = tl.load(scale_ptr + row * stride_scale, mask=row_in, other=0.0).to(ACC)
    weight = q.to(ACC) * scale[:, None]
    tl.store(out_ptr + row[:, None] * stride_out_row + col[None, :], weight.to(out_ptr.dtype.element_ty), mask=mask)


def dequantize_int8_fwd(qweight: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A new row-major [out, in] tensor of `dtype`: qweight [out, in] (int8, any strides) times scale [out] per row."""
    rows, cols = qweight.shape
    out = torch.empty((rows, cols), dtype=dtype, device=qweight.device)
    if out.numel() == 0:
        return out
    block_r, block_c = (16, 32) if interpreting() else (32, 256)
    with device_context(qweight):
        _dequantize_int8_kernel[(ceil_div(rows, block_r), ceil_div(cols, block_c))](
            qweight, scale, out, rows, cols, qweight.stride(0), qweight.stride(1), scale.stride(0), out.stride(0),
            ACC=accumulator_type(dtype), BLOCK_R=block_r, BLOCK_C=block_c, num_warps=4,
        )
    return out
