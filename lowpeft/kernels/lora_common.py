# Triton device helpers shared by the LoRA kernels: the dropout keep-scale regenerated from a Philox
# seed, the matrix-multiply-accumulate step with the precision policy, and grouped tile ordering.
#
# Trade-off: the dropout mask is recomputed from (seed, row, column) wherever a kernel needs it (10
# Philox rounds per element, all integer ALU work hidden behind memory traffic) instead of being stored
# as a [T, K] tensor; it is bit-exact with lowpeft.reference.dropout_keep_mask, so every backend agrees.
import triton
import triton.language as tl


@triton.jit
def dropout_keep_scale(seed, rows, cols, threshold, inv_keep):
    """fp32 tile [len(rows), len(cols)]: inv_keep where element (row, col) is kept, else 0.

    Kept iff Philox4x32-10(seed; counters col, row, 0, 0)[0] >= threshold (a uint32 compare)."""
    row_counter = rows[:, None].to(tl.uint32)
    col_counter = cols[None, :].to(tl.uint32)
    row_counter, col_counter = tl.broadcast(row_counter, col_counter)
    draw = tl.philox(seed, col_counter, row_counter, 0, 0)[0]
    keep = draw >= threshold.to(tl.uint32)
    return tl.where(keep, inv_keep, 0.0)


@triton.jit
def mma(a, b, acc, DOT_PRECISION: tl.constexpr, DOT_UPCAST: tl.constexpr):
    """acc + a @ b with fp32 accumulation. DOT_UPCAST multiplies in fp32 (the CPU interpreter's bf16 dot
    is wrong); DOT_PRECISION is "ieee" or "tf32" for fp32 operands (torch's matmul precision setting)."""
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
