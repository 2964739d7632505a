# Triton device helpers shared by the LoRA kernels: the dropout keep-scale regenerated from a Philox
# seed, the matrix-multiply-accumulate step with the precision policy, and grouped tile ordering.
#
# Trade-off: the dropout mask is recomputed from (seed, row, column) wherever a kernel needs it instead of
# being stored as a [T, K] tensor. One Philox-4x32-10 evaluation (10 rounds of 32-bit multiplies) yields four
# words, one per column of an aligned group of four, so a [BT, BK] tile costs BT·BK/4 evaluations: integer
# work that an H100 cannot hide behind memory traffic at one evaluation per element (measured: the masked
# shrink took 118 µs against 39 µs unmasked at 8192 x 4096). The mask is bit-exact with
# lowpeft.reference.dropout_keep_mask, so every backend agrees.
import triton
import triton.language as tl


@triton.jit
def dropout_keep_scale(seed, rows, cols, threshold, inv_keep, ACC: tl.constexpr):
    """ACC tile [len(rows), len(cols)]: inv_keep where element (row, col) is kept, else 0, multiplied in ACC: a
    float64 kernel keeps 1 / (1 - p) in float64 wherever its scalar argument is float64, as under the interpreter.

    Kept iff word col % 4 of Philox4x32-10(seed; counters col // 4, row, 0, 0) >= threshold (a uint32
    compare). `cols` must be consecutive and start at a multiple of 4 (every caller passes block_start +
    tl.arange(0, BLOCK) with BLOCK a multiple of 4)."""
    quads = tl.reshape(cols, (cols.shape[0] // 4, 2, 2))
    first_of_quad = tl.split(tl.split(quads)[0])[0]
    row_counter = rows[:, None].to(tl.uint32)
    quad_counter = (first_of_quad // 4)[None, :].to(tl.uint32)
    row_counter, quad_counter = tl.broadcast(row_counter, quad_counter)
    word0, word1, word2, word3 = tl.philox(seed, quad_counter, row_counter, 0, 0)
    # join(join(w0, w2), join(w1, w3)) puts word 2c + d at [.., j, c, d]: row-major position 4j + 2c + d.
    draws = tl.join(tl.join(word0, word2), tl.join(word1, word3))
    draws = tl.reshape(draws, (rows.shape[0], cols.shape[0]))
    keep = draws >= threshold.to(tl.uint32)
    return keep.to(ACC) * inv_keep


@triton.jit
def mma(a, b, acc, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """acc + a @ b, accumulated in acc's dtype (float32; float64 for float64 operands). DOT_UPCAST multiplies in
    fp32 (the CPU interpreter's bf16 dot is wrong); DOT_PRECISION is "ieee" or "tf32" for fp32 operands (torch's
    matmul precision setting)."""
    if DOT_UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=DOT_PRECISION)


@triton.jit
def grouped_tile(pid, num_m, num_n, GROUP_M: tl.constexpr):
    """Program id -> (row tile, column tile), walking GROUP_M row tiles together so the column tiles of
    the shared operand stay in L2."""
    width = GROUP_M * num_n
    group = pid // width
    first_m = group * GROUP_M
    group_rows = tl.minimum(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % group_rows
    pid_n = (pid % width) // group_rows
    return pid_m, pid_n
