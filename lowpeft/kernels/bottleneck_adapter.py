# Fused bottleneck-adapter kernels (Triton) and their launchers:
# out = h + s · (act(h W_downᵀ + b_down) W_upᵀ + b_up) and its backward, no [T, D] temporary reaching memory.
#
# Kernels (no autograd, no nn; called by lowpeft/ops/bottleneck_adapter.py):
#   down           one program per block of rows and bottleneck chunk: z = h W_downᵀ + b_down over all of D (saved,
#                  float32) and a = act(z) in h's dtype ([T, M], for the up kernel). One read of h per chunk.
#   up             one program per [rows × columns] tile: out = h + s · (a W_upᵀ + b_up). One read of h, one write.
#   backward_rows  one program per block of rows and bottleneck chunk: da = s · g W_up over all of D, then
#                  dz = da ⊙ act'(z) and a = act(z), both written as [T, M] in h's dtype. One read of g per chunk.
#   backward_cols  a (D chunks × T splits) grid per side, both sides in one launch or one launch each (per shape,
#                  column_block_config): a g-side program reads g once, writes dh = g + dz W_down and keeps
#                  dW_up, db_up of its D chunk as float32 accumulators over its T range; an h-side program reads h
#                  once for dW_down (and db_down from the small dz). Both write split-T partials that `reduce`
#                  sums in a fixed order (deterministic).
# Bottlenecks wider than 64 (wide_bottleneck) take another path, as the column programs' [BLOCK_D, M] float32
# accumulators no longer fit in registers: the row kernels in bottleneck chunks (bottleneck_chunk), `up_columns`
# for out and for dh = g + dz W_down (one program per D chunk and T split, its W slice loaded once), dW_up and
# dW_down as two torch.mm GEMMs into the gradients, and `bias_sums` summing the bias partials (db_down's per row
# block from backward_rows, db_up's per T split from up_columns) in a fixed order.
# Trade-off: z needs a reduction over all of D before any output column can be written, so neither direction
# can be one pass. The forward reads h twice and the backward g twice (7 passes over a [T, D] tensor for
# forward + backward against 4 for the copy floor): a single forward kernel that kept the row block for its
# second pass ran at ~2x the one-read ideal on the H100 (the re-read missed L2) with one program per row block.
# Sizes T and M stay specialised: with a runtime bound a mask along M or T has no known constancy, the loads
# drop to 2 bytes and the compiler leaves them out of the software pipeline (the backward kernels ran 1.5-2.4x
# slower at M = 64, benchmarks/diag/adapter_kernel_probe.py). The backward's weight gradients reduce over T
# while dz needs all of D, hence the split-T partials (splits × D × M, small next to h); dW_up and dW_down live
# in separate programs so each keeps one accumulator in registers (one program holding both spilled,
# benchmarks/NOTES_adapter.md); where it measured faster the two sides share one launch, so neither waits for the
# other's tail. The [T, M] tensors a and dz are re-read once per D chunk, from L2. The wide path's GEMMs reach
# cuBLAS's speed but not the two-passes-in-one overlap the narrow path has, so at large work the cuda backend's
# cuBLAS GEMMs are faster and backend="auto" takes them (lowpeft/ops/bottleneck_adapter.adapter_auto_order).
# Bottleneck widths are padded to a power of two ≥ 16 with masks; all offsets along T are 64-bit.
from __future__ import annotations

import functools
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._tuning import (accumulator_dtype, accumulator_type, autotuning, ceil_div, device_context,
                      float32_dot_precision, interpreting, launch_autotuned, next_power_of_2)

__all__ = ["bottleneck_adapter_fwd", "bottleneck_adapter_bwd", "ACTIVATION_CODES", "MAX_BOTTLENECK"]

ACTIVATION_CODES = {"gelu": 0, "gelu_tanh": 1, "relu": 2, "silu": 3}
MAX_BOTTLENECK = 256
_SUPPORTED_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)


# ----------------------------------------------------------------------------------------------------
# configurations
# ----------------------------------------------------------------------------------------------------
def row_block_configs():
    """Candidates for the two row-block kernels (forward, backward_rows), autotuned per (bucketed T, D, padded
    M, bottleneck chunk, dtype). The H100 autotuner (bf16, T 4096-16384, D 1024-8192, M 16-256; benchmarks/results/
    adapter_tuning_h100.log) picked the first one almost everywhere, so it is also the untuned choice for small T;
    the 16-row tiles give a few thousand rows two programs per SM (4096 rows: 256 programs instead of 128); the
    last candidate is a small fallback that fits any shared-memory budget."""
    if interpreting():
        return [triton.Config({"BLOCK_T": 16, "BLOCK_D": 32}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_T": 32, "BLOCK_D": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_T": 64, "BLOCK_D": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_T": 64, "BLOCK_D": 64}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_T": 128, "BLOCK_D": 64}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_T": 128, "BLOCK_D": 128}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_T": 16, "BLOCK_D": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_T": 16, "BLOCK_D": 256}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_T": 32, "BLOCK_D": 32}, num_warps=4, num_stages=2),
    ]


_SHARED_MEMORY_BUDGET = 200 * 1024


def _row_block_shared_memory(config, chunk: int, element_size: int) -> int:
    """Shared memory of a row-block kernel's software pipeline: (stages - 1) buffers of one [BLOCK_T, BLOCK_D]
    activation tile and one [BLOCK_D, chunk] weight tile (matches the compiler's figure on sm_90)."""
    tile = config.kwargs["BLOCK_T"] * config.kwargs["BLOCK_D"] + config.kwargs["BLOCK_D"] * chunk
    return max(1, config.num_stages - 1) * tile * element_size


def prune_row_block_configs(configs, named_args, **kwargs):
    """Autotune only where it pays: below 2048 rows the first candidate is taken without benchmarking (small
    launches are bound by launch latency), and tiles whose [BLOCK_T, M_CHUNK] float32 accumulator would not fit
    in registers (above 2048 elements per warp: 64 float32 registers a thread) or whose pipeline would overflow
    shared memory are never tried. The 128 × 128 tile (the wide path's best down tile in run 76's sweep) races
    only for bottleneck chunks wider than 64, so narrow bottlenecks keep the candidates they were tuned with. The
    last candidate, the small fallback that always fits, runs only where no other fits: left in the race it won
    one process's autotuning at 4096 × 1024, M = 64 with 26.5 µs for backward_rows against 9.4 µs for the usual
    winner (H100, runs 53 and 46; a few-µs kernel's benchmark is noisy)."""
    chunk = kwargs.get("M_CHUNK", named_args.get("M_CHUNK"))
    element_size = named_args["h_ptr" if "h_ptr" in named_args else "g_ptr"].element_size()
    fitting = [c for c in configs[:-1] if c.kwargs["BLOCK_T"] * chunk <= 2048 * c.num_warps
               and (chunk > 64 or c.kwargs["BLOCK_T"] * c.kwargs["BLOCK_D"] <= 8192)
               and _row_block_shared_memory(c, chunk, element_size) <= _SHARED_MEMORY_BUDGET] or configs[-1:]
    if named_args["T_BUCKET"] < 2048:
        return fitting[:1]
    return fitting


def up_tile_configs():
    """Candidates for the up kernel's [BLOCK_T, BLOCK_D] output tiles (one read of h, one write of out, a
    K = M dot): memory-bound, so wide column blocks for 16-byte accesses; autotuned per (bucketed T, D, padded M)."""
    if interpreting():
        return [triton.Config({"BLOCK_T": 16, "BLOCK_D": 32}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_T": 64, "BLOCK_D": 128}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_T": 32, "BLOCK_D": 256}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_T": 128, "BLOCK_D": 128}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_T": 64, "BLOCK_D": 256}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_T": 32, "BLOCK_D": 64}, num_warps=4, num_stages=2),
    ]


def prune_up_tile_configs(configs, named_args, **kwargs):
    """Keep tiles whose a [BLOCK_T, M] and W_up [M, BLOCK_D] operands stay within about 48 KB (M = 256 takes
    the small last tile); LOWPEFT_AUTOTUNE=0 then keeps the first that fits."""
    block_m = kwargs.get("BLOCK_M", named_args.get("BLOCK_M"))
    kept = [c for c in configs if block_m * (c.kwargs["BLOCK_T"] + c.kwargs["BLOCK_D"]) <= 24576] or configs[-1:]
    return kept if autotuning() else kept[:1]


class ColumnPlan(NamedTuple):
    """How the backward column kernel runs: its tile, the split count's aim (programs per SM of one side: a
    one-launch grid holds both sides, twice as many), and whether the g and h sides share one launch."""
    block_t: int
    block_d: int
    warps: int
    stages: int
    split_factor: int
    programs_per_sm: int
    one_launch: bool


def column_block_config(M_pad: int, D: int, element_size: int = 2) -> ColumnPlan:
    """The backward column kernel's plan for a padded bottleneck M_pad ≤ 64 (wider ones take the wide path,
    wide_bottleneck) and width D. Each program keeps one [BLOCK_D, M] float32 accumulator (dW_up or dW_down). H100
    measurements (bf16, graph timing):
    - M ≤ 64: 64 rows × 128 columns, 4 warps, 3 stages, two programs per SM, the fastest for both sides at M = 16
      and 64 (8192 x 4096, benchmarks/diag/adapter_kernel_probe.py, run 44), the two sides as two launches (one
      launch ran the backward 11-15 µs slower at 8192 x 4096 and 50-64 µs at 16384 x 8192, run 56).
    - M ≤ 64 where D gives fewer than 16 such column chunks: 64 × 64 tiles filling each SM once, both sides in one
      launch. There the split-T partials (splits × 2·M·D float32, written and read back) cost as much as the
      tiles, and each side alone leaves the GPU half idle: at 4096 x 1024 the step went 0.058 → 0.050 ms at
      M = 64 and 0.048 → 0.042 at M = 16 (runs 51, 56; run 54's sweep for the tile).
    4- and 8-byte elements take fewer rows per step so the pipeline fits in shared memory."""
    if interpreting():
        return ColumnPlan(16, 32, 4, 1, 1, 2, True)
    rows = {2: 64, 4: 32}.get(element_size, 16)
    if ceil_div(D, 128) < 16:
        return ColumnPlan(rows, 64, 4, 3, 1, 1, True)
    return ColumnPlan(rows, 128, 4, 3, 1, 2, False)


def bottleneck_chunk(M_pad: int) -> int:
    """The bottleneck columns one row-block program accumulates ([BLOCK_T, chunk] float32): all of a padded M up to
    64, else halves as separate programs. H100, bf16, forward + backward, graph timing (run 77,
    benchmarks/diag/adapter_wide_probe.py): at M = 256 one [32, 256] accumulator per program had down and
    backward_rows at 89 and 94 µs for 8192 x 4096 (run 51), chunks of 128 take 41 and 49; chunks of 64 were slower
    there (0.360 against 0.344 ms) but faster at M = 128 (0.295 against 0.308 ms; 4096 x 1024: 0.060 against
    0.068)."""
    return M_pad if M_pad <= 64 else M_pad // 2


class UpColumnsPlan(NamedTuple):
    """The wide-bottleneck up kernel's plan: its [BLOCK_T, BLOCK_D] output tile, warps, pipeline stages, and
    programs per SM that its T splits aim for."""
    block_t: int
    block_d: int
    warps: int
    stages: int
    programs_per_sm: int


def up_columns_plan(M_pad: int, element_size: int = 2) -> UpColumnsPlan:
    """For bottlenecks wider than 64 the up kernel (and dh's) runs per (D chunk, T split): each program keeps its
    [M, BLOCK_D] slice of W_up on chip and walks its rows, so W_up is read once per program, not once per output
    tile. H100, bf16 (run 77, benchmarks/diag/adapter_wide_sweep.py, the kernel alone): 64 x 128 tiles, 4 warps,
    3 stages, 73 µs at 8192 x 4096, M = 256 against 75-90 µs as [rows × columns] tiles (a and W_up re-read for
    every tile) and cuBLAS's 63 µs with the residual; at M = 128 two programs per SM (their W_up slices fit in
    shared memory together) 53 µs against 63-73 µs for one. The copy floor of h and out is 45 µs: each program
    waits for its tensor-core work between loads, so M = 256 is at memory + compute time.
    4-byte elements take 32-row steps, and at M = 256 64-column chunks, so the W slice and two pipelined [rows, M]
    and [rows, BLOCK_D] tiles stay within shared memory (256 x 128 float32 alone is 128 KB)."""
    if interpreting():
        return UpColumnsPlan(16, 32, 4, 1, 1)
    if element_size > 2:
        return UpColumnsPlan(32, 128 if M_pad <= 128 else 64, 4, 3, 2 if M_pad <= 128 else 1)
    return UpColumnsPlan(64, 128, 4, 3, 2 if M_pad <= 128 else 1)


def wide_bottleneck(M_pad: int) -> bool:
    """Bottlenecks wider than 64 take the wide path: the up kernel (and dh's) per (D chunk, T split) with its W_up
    slice on chip (up_columns_plan), and the backward's weight gradients from two GEMMs (torch.mm: dW_up = s · gᵀ a,
    dW_down = dzᵀ h) with the bias sums from per-row-block / per-split partials, instead of the column kernels, whose
    [BLOCK_D, M] float32 accumulators do not fit in registers there."""
    return M_pad > 64


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def _t_splits(T: int, D: int, block_t: int, block_d: int, factor: int, programs_per_sm: int, device: torch.device,
              memory_cap: int) -> int:
    """How many T ranges the backward column kernels split the rows into. The time goes as (waves of one side's
    programs) / (splits), a wave being `programs_per_sm` programs on every multiprocessor: the count in
    1 .. factor × (enough to fill every slot twice) with the fewest splits among those within 5 % of the best, and
    at most `memory_cap` (the caller's bound on the float32 partials, one per split). Filling the GPU once and a
    bit is the trap: 160 eight-warp programs on 132 SMs ran two waves for 1.2 waves of work (H100, run 24)."""
    max_splits = max(1, min(ceil_div(T, block_t), memory_cap))
    if device.type != "cuda":
        return max(1, min(3, max_splits))
    index = device.index if device.index is not None else torch.cuda.current_device()
    slots = _multiprocessors(index) * programs_per_sm
    column_blocks = ceil_div(D, block_d)
    candidates = range(1, max(1, min(max_splits, factor * 2 * ceil_div(slots, column_blocks))) + 1)

    def time(splits):
        return ceil_div(column_blocks * splits, slots) / splits

    best = min(time(splits) for splits in candidates)
    return next(splits for splits in candidates if time(splits) <= 1.05 * best)


def _t_bucket(T: int) -> int:
    return 1 << max(0, (max(T, 1) - 1).bit_length())


def dot_precision(dtype: torch.dtype) -> str:
    """tl.dot input precision: float32 follows torch's matmul precision setting as nn.Linear does
    (_tuning.float32_dot_precision); float64 is always IEEE."""
    return float32_dot_precision() if dtype == torch.float32 else "ieee"


# ----------------------------------------------------------------------------------------------------
# device helpers
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _tanh(x):
    return 2.0 * tl.sigmoid(2.0 * x) - 1.0


@triton.jit
def _activation(z, ACTIVATION: tl.constexpr):
    if ACTIVATION == 0:
        result = 0.5 * z * (1.0 + tl.erf(z * 0.7071067811865476))
    elif ACTIVATION == 1:
        result = 0.5 * z * (1.0 + _tanh(0.7978845608028654 * (z + 0.044715 * z * z * z)))
    elif ACTIVATION == 2:
        result = tl.where(z < 0.0, 0.0, z)
    else:
        result = z * tl.sigmoid(z)
    return result


@triton.jit
def _activation_derivative(z, ACTIVATION: tl.constexpr):
    if ACTIVATION == 0:
        cdf = 0.5 * (1.0 + tl.erf(z * 0.7071067811865476))
        result = cdf + z * tl.exp(-0.5 * z * z) * 0.3989422804014327
    elif ACTIVATION == 1:
        t = _tanh(0.7978845608028654 * (z + 0.044715 * z * z * z))
        result = 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 0.134145 * z * z)
    elif ACTIVATION == 2:
        result = tl.where(z > 0.0, 1.0, 0.0)
    else:
        sig = tl.sigmoid(z)
        result = sig * (1.0 + z * (1.0 - sig))
    return result


@triton.jit
def _dot(a, b, acc, PRECISION: tl.constexpr, UPCAST: tl.constexpr):
    # UPCAST: the Triton interpreter multiplies raw bf16 bits, so interpreted bf16 operands go through float32.
    if UPCAST:
        a = a.to(tl.float32)
        b = b.to(tl.float32)
    return tl.dot(a, b, acc, input_precision=PRECISION)


@triton.jit
def _column_program(pid_d, T, D, M, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    # A (D chunk, T split) program of the backward column kernel: its split, the split's rows [row_start, row_end)
    # (whole BLOCK_T steps, 64-bit), its D columns and bottleneck columns with their masks.
    split = tl.program_id(1)
    rows_per_split = tl.cdiv(tl.cdiv(T, tl.num_programs(1)), BLOCK_T) * BLOCK_T
    row_start = split.to(tl.int64) * rows_per_split
    row_end = tl.minimum(row_start + rows_per_split, T)
    cols_d = pid_d * BLOCK_D + tl.arange(0, BLOCK_D)
    cols_m = tl.arange(0, BLOCK_M)
    return split, row_start, row_end, cols_d, cols_d < D, cols_m, cols_m < M


# ----------------------------------------------------------------------------------------------------
# kernels
# ----------------------------------------------------------------------------------------------------
@triton.jit
def _row_block_program(T, M, BLOCK_M: tl.constexpr, M_CHUNK: tl.constexpr, BLOCK_T: tl.constexpr):
    # A row-block kernel's program: its rows (64-bit) and bottleneck columns. Programs of one row block run next
    # to each other (bottleneck chunk fastest), so the chunks after the first read their rows from L2.
    pid = tl.program_id(0)
    chunk = pid % (BLOCK_M // M_CHUNK)
    row_block = pid // (BLOCK_M // M_CHUNK)
    rows = row_block.to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols_m = chunk * M_CHUNK + tl.arange(0, M_CHUNK)
    return row_block, rows, rows < T, cols_m, cols_m < M


@triton.autotune(configs=row_block_configs(), key=["T_BUCKET", "D", "BLOCK_M", "M_CHUNK"],
                 prune_configs_by={"early_config_prune": prune_row_block_configs})
@triton.jit(do_not_specialize=["T_BUCKET"])
def _down_kernel(
    h_ptr, down_w_ptr, down_b_ptr, z_ptr, a_ptr,
    T, D, M, T_BUCKET,
    stride_h_t, stride_h_d, stride_dw_m, stride_dw_d, stride_db, stride_z_t, stride_a_t,
    HAS_DOWN_BIAS: tl.constexpr, ACTIVATION: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, M_CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # z[rows, chunk] = h[rows] W_down[chunk]ᵀ + b_down[chunk] over all of D; a = act(z).
    _, rows, row_mask, cols_m, m_mask = _row_block_program(T, M, BLOCK_M, M_CHUNK, BLOCK_T)
    z = tl.zeros([BLOCK_T, M_CHUNK], dtype=ACC)
    for d0 in range(0, D, BLOCK_D):
        cols_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = cols_d < D
        h = tl.load(h_ptr + rows[:, None] * stride_h_t + cols_d[None, :] * stride_h_d,
                    mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        down_w = tl.load(down_w_ptr + cols_m[None, :] * stride_dw_m + cols_d[:, None] * stride_dw_d,
                         mask=m_mask[None, :] & d_mask[:, None], other=0.0)
        z = _dot(h, down_w, z, PRECISION, UPCAST)
    if HAS_DOWN_BIAS:
        z += tl.load(down_b_ptr + cols_m * stride_db, mask=m_mask, other=0.0).to(z.dtype)[None, :]
    small_mask = row_mask[:, None] & m_mask[None, :]
    tl.store(z_ptr + rows[:, None] * stride_z_t + cols_m[None, :], z, mask=small_mask)
    tl.store(a_ptr + rows[:, None] * stride_a_t + cols_m[None, :],
             _activation(z, ACTIVATION).to(a_ptr.dtype.element_ty), mask=small_mask)


@triton.autotune(configs=up_tile_configs(), key=["T_BUCKET", "D", "BLOCK_M"],
                 prune_configs_by={"early_config_prune": prune_up_tile_configs})
@triton.jit(do_not_specialize=["T_BUCKET"])
def _up_kernel(
    h_ptr, a_ptr, up_w_ptr, up_b_ptr, out_ptr,
    T, D, M, T_BUCKET,
    stride_h_t, stride_h_d, stride_a_t, stride_uw_d, stride_uw_m, stride_ub, stride_out_t,
    scale,
    HAS_UP_BIAS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    row_mask = rows < T
    d_mask = cols_d < D
    cols_m = tl.arange(0, BLOCK_M)
    m_mask = cols_m < M
    # Padded bottleneck columns load as zero (an Inf in h would make them Inf · 0 = NaN otherwise).
    a = tl.load(a_ptr + rows[:, None] * stride_a_t + cols_m[None, :], mask=row_mask[:, None] & m_mask[None, :],
                other=0.0)
    up_w = tl.load(up_w_ptr + cols_d[None, :] * stride_uw_d + cols_m[:, None] * stride_uw_m,
                   mask=d_mask[None, :] & m_mask[:, None], other=0.0)
    up = _dot(a, up_w, tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC), PRECISION, UPCAST)
    if HAS_UP_BIAS:
        up += tl.load(up_b_ptr + cols_d * stride_ub, mask=d_mask, other=0.0).to(ACC)[None, :]
    tile_mask = row_mask[:, None] & d_mask[None, :]
    h = tl.load(h_ptr + rows[:, None] * stride_h_t + cols_d[None, :] * stride_h_d, mask=tile_mask, other=0.0)
    out = h.to(ACC) + scale * up
    tl.store(out_ptr + rows[:, None] * stride_out_t + cols_d[None, :], out.to(out_ptr.dtype.element_ty),
             mask=tile_mask)


@triton.jit
def _up_columns_kernel(
    h_ptr, a_ptr, up_w_ptr, up_b_ptr, out_ptr, column_sum_ptr,
    T, D, M,
    stride_h_t, stride_h_d, stride_a_t, stride_uw_d, stride_uw_m, stride_ub, stride_out_t,
    scale,
    HAS_UP_BIAS: tl.constexpr, STORE_OUT: tl.constexpr, COLUMN_SUMS: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr, ACC: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # A wide bottleneck's out = h + s · (a W_upᵀ + b_up) per (D chunk, T split): the chunk's [M, BLOCK_D] slice of
    # W_up loaded once, then the split's rows. The backward runs it as dh = g + dz W_down (h := g, a := dz,
    # W_up := W_downᵀ, s = 1, no bias), with COLUMN_SUMS storing the split's column sums of g (db_up's partial,
    # [splits, D] in ACC) and STORE_OUT off where dh itself is not needed.
    split, row_start, row_end, cols_d, d_mask, cols_m, m_mask = _column_program(tl.program_id(0), T, D, M, BLOCK_M,
                                                                                BLOCK_T, BLOCK_D)
    if STORE_OUT:
        # Padded bottleneck rows load as zero (an Inf in h would make them Inf · 0 = NaN otherwise).
        up_w = tl.load(up_w_ptr + cols_d[None, :] * stride_uw_d + cols_m[:, None] * stride_uw_m,
                       mask=d_mask[None, :] & m_mask[:, None], other=0.0)
        if HAS_UP_BIAS:
            up_b = tl.load(up_b_ptr + cols_d * stride_ub, mask=d_mask, other=0.0).to(ACC)
    column_sums = tl.zeros([BLOCK_D], dtype=ACC)
    for t0 in range(row_start, row_end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        row_mask = rows < T  # the loop ends at row_end; only the last split's last tile can pass T
        tile_mask = row_mask[:, None] & d_mask[None, :]
        h = tl.load(h_ptr + rows[:, None] * stride_h_t + cols_d[None, :] * stride_h_d, mask=tile_mask, other=0.0)
        if COLUMN_SUMS:
            column_sums += tl.sum(h.to(ACC), axis=0)
        if STORE_OUT:
            a = tl.load(a_ptr + rows[:, None] * stride_a_t + cols_m[None, :],
                        mask=row_mask[:, None] & m_mask[None, :], other=0.0)
            up = _dot(a, up_w, tl.zeros([BLOCK_T, BLOCK_D], dtype=ACC), PRECISION, UPCAST)
            if HAS_UP_BIAS:
                up += up_b[None, :]
            out = h.to(ACC) + scale * up
            tl.store(out_ptr + rows[:, None] * stride_out_t + cols_d[None, :], out.to(out_ptr.dtype.element_ty),
                     mask=tile_mask)
    if COLUMN_SUMS:
        tl.store(column_sum_ptr + split.to(tl.int64) * D + cols_d, column_sums, mask=d_mask)


@triton.autotune(configs=row_block_configs(), key=["T_BUCKET", "D", "BLOCK_M", "M_CHUNK"],
                 prune_configs_by={"early_config_prune": prune_row_block_configs})
@triton.jit(do_not_specialize=["T_BUCKET"])
def _backward_rows_kernel(
    g_ptr, up_w_ptr, z_ptr, a_ptr, dz_ptr, dz_sum_ptr,
    T, D, M, T_BUCKET,
    stride_g_t, stride_g_d, stride_uw_d, stride_uw_m, stride_z_t, stride_small_t,
    scale,
    ACTIVATION: tl.constexpr, DZ_SUMS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    BLOCK_M: tl.constexpr, M_CHUNK: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # da[rows, chunk] = s · g[rows] W_up[:, chunk] over all of D; dz = da ⊙ act'(z) and a = act(z), with DZ_SUMS
    # the row block's column sums of dz (db_down's partial, [T blocks, M] in z's dtype).
    row_block, rows, row_mask, cols_m, m_mask = _row_block_program(T, M, BLOCK_M, M_CHUNK, BLOCK_T)
    small_mask = row_mask[:, None] & m_mask[None, :]
    z = tl.load(z_ptr + rows[:, None] * stride_z_t + cols_m[None, :], mask=small_mask, other=0.0)
    da = tl.zeros([BLOCK_T, M_CHUNK], dtype=z.dtype)
    for d0 in range(0, D, BLOCK_D):
        cols_d = d0 + tl.arange(0, BLOCK_D)
        d_mask = cols_d < D
        g = tl.load(g_ptr + rows[:, None] * stride_g_t + cols_d[None, :] * stride_g_d,
                    mask=row_mask[:, None] & d_mask[None, :], other=0.0)
        up_w = tl.load(up_w_ptr + cols_d[:, None] * stride_uw_d + cols_m[None, :] * stride_uw_m,
                       mask=d_mask[:, None] & m_mask[None, :], other=0.0)
        da = _dot(g, up_w, da, PRECISION, UPCAST)
    # The scale last, as the torch backend: s · (g W_up) first overflows where act'(z) = 0 (Inf · 0 = NaN).
    dz = da * _activation_derivative(z, ACTIVATION) * scale
    small = rows[:, None] * stride_small_t + cols_m[None, :]
    tl.store(dz_ptr + small, dz.to(dz_ptr.dtype.element_ty), mask=small_mask)
    tl.store(a_ptr + small, _activation(z, ACTIVATION).to(a_ptr.dtype.element_ty), mask=small_mask)
    if DZ_SUMS:
        # Rows past T are left out: their dz is 0 · W_up, NaN where W_up holds an Inf.
        tl.store(dz_sum_ptr + row_block.to(tl.int64) * M + cols_m, tl.sum(tl.where(small_mask, dz, 0.0), axis=0),
                 mask=m_mask)


@triton.jit
def _g_side_columns(
    pid_d, g_ptr, down_w_ptr, a_ptr, dz_ptr, dh_ptr, partial_ptr,
    T, D, M, PARTIAL_LEN,
    stride_g_t, stride_g_d, stride_dw_m, stride_dw_d, stride_small_t, stride_dh_t,
    scale,
    NEED_DH: tl.constexpr, NEED_UP_GRADS: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # D chunk pid_d of the g side: dh = g + dz W_down for its tiles, and its split's partials of dW_up = s · gᵀ a
    # and db_up = s · Σ g. Partial layout per split (float32):
    # [dW_down (M × D) | dW_up (D × M) | db_up (D) | db_down (M)].
    split, row_start, row_end, cols_d, d_mask, cols_m, m_mask = _column_program(pid_d, T, D, M, BLOCK_M, BLOCK_T,
                                                                                BLOCK_D)
    if NEED_DH:
        down_w = tl.load(down_w_ptr + cols_m[:, None] * stride_dw_m + cols_d[None, :] * stride_dw_d,
                         mask=m_mask[:, None] & d_mask[None, :], other=0.0)
    d_up_w = tl.zeros([BLOCK_D, BLOCK_M], dtype=ACC)
    d_up_b = tl.zeros([BLOCK_D], dtype=ACC)
    for t0 in range(row_start, row_end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        row_mask = rows < T  # the loop ends at row_end; only the last split's last tile can pass T
        tile_mask = row_mask[:, None] & d_mask[None, :]
        small_mask = row_mask[:, None] & m_mask[None, :]
        g = tl.load(g_ptr + rows[:, None] * stride_g_t + cols_d[None, :] * stride_g_d, mask=tile_mask, other=0.0)
        if NEED_DH:
            dz = tl.load(dz_ptr + rows[:, None] * stride_small_t + cols_m[None, :], mask=small_mask, other=0.0)
            dh = _dot(dz, down_w, g.to(ACC), PRECISION, UPCAST)
            tl.store(dh_ptr + rows[:, None] * stride_dh_t + cols_d[None, :], dh.to(dh_ptr.dtype.element_ty),
                     mask=tile_mask)
        if NEED_UP_GRADS:
            a = tl.load(a_ptr + rows[:, None] * stride_small_t + cols_m[None, :], mask=small_mask, other=0.0)
            d_up_w = _dot(tl.trans(g), a, d_up_w, PRECISION, UPCAST)
            d_up_b += tl.sum(g.to(ACC), axis=0)
    if NEED_UP_GRADS:
        base = partial_ptr + split.to(tl.int64) * PARTIAL_LEN
        tl.store(base + M * D + cols_d[:, None] * M + cols_m[None, :], d_up_w * scale,
                 mask=d_mask[:, None] & m_mask[None, :])
        tl.store(base + 2 * M * D + cols_d, d_up_b * scale, mask=d_mask)


@triton.jit
def _h_side_columns(
    pid_d, h_ptr, dz_ptr, partial_ptr,
    T, D, M, PARTIAL_LEN,
    stride_h_t, stride_h_d, stride_small_t,
    NEED_DOWN_W: tl.constexpr, NEED_DOWN_B: tl.constexpr, PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # D chunk pid_d of the h side: its split's partials of dW_down = dzᵀ h and, in the first D chunk's programs,
    # of db_down = Σ dz, into the same partial layout. The column sum is a loop of its own over the small dz:
    # inside the main loop (a second use of the loaded dz tile) it cost that loop its pipelined loads on the H100
    # (48 against 37 µs at 8192 x 4096, M = 64; benchmarks/diag/adapter_kernel_probe.py).
    split, row_start, row_end, cols_d, d_mask, cols_m, m_mask = _column_program(pid_d, T, D, M, BLOCK_M, BLOCK_T,
                                                                                BLOCK_D)
    base = partial_ptr + split.to(tl.int64) * PARTIAL_LEN
    if NEED_DOWN_W:
        d_down_w = tl.zeros([BLOCK_M, BLOCK_D], dtype=ACC)
        for t0 in range(row_start, row_end, BLOCK_T):
            rows = t0 + tl.arange(0, BLOCK_T)
            row_mask = rows < T  # the loop ends at row_end; only the last split's last tile can pass T
            h = tl.load(h_ptr + rows[:, None] * stride_h_t + cols_d[None, :] * stride_h_d,
                        mask=row_mask[:, None] & d_mask[None, :], other=0.0)
            dz = tl.load(dz_ptr + rows[:, None] * stride_small_t + cols_m[None, :],
                         mask=row_mask[:, None] & m_mask[None, :], other=0.0)
            d_down_w = _dot(tl.trans(dz), h, d_down_w, PRECISION, UPCAST)
        tl.store(base + cols_m[:, None] * D + cols_d[None, :], d_down_w, mask=m_mask[:, None] & d_mask[None, :])
    if NEED_DOWN_B:
        if pid_d == 0:
            # 4 × BLOCK_T rows a step: these programs finish last, so their extra loop is the kernel's tail
            # (9 µs at 8192 x 4096, M = 64 with BLOCK_T rows a step, run 46).
            d_down_b = tl.zeros([BLOCK_M], dtype=ACC)
            for t0 in range(row_start, row_end, 4 * BLOCK_T):
                rows = t0 + tl.arange(0, 4 * BLOCK_T)
                dz = tl.load(dz_ptr + rows[:, None] * stride_small_t + cols_m[None, :],
                             mask=(rows < row_end)[:, None] & m_mask[None, :], other=0.0)
                d_down_b += tl.sum(dz.to(ACC), axis=0)
            tl.store(base + 2 * M * D + D + cols_m, d_down_b, mask=m_mask)


@triton.jit(do_not_specialize=["PARTIAL_LEN"])
def _backward_cols_kernel(
    g_ptr, h_ptr, down_w_ptr, a_ptr, dz_ptr, dh_ptr, partial_ptr,
    T, D, M, PARTIAL_LEN,
    stride_g_t, stride_g_d, stride_h_t, stride_h_d, stride_dw_m, stride_dw_d, stride_small_t, stride_dh_t,
    scale,
    NEED_DH: tl.constexpr, NEED_UP_GRADS: tl.constexpr, NEED_DOWN_W: tl.constexpr, NEED_DOWN_B: tl.constexpr,
    PRECISION: tl.constexpr, UPCAST: tl.constexpr,
    ACC: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    # Grid (D chunks of the g side, then D chunks of the h side; T splits), each side only where its gradients
    # are needed and its flags are set: the launcher runs both sides in one launch (they share the GPU, neither
    # waiting for the other's tail; at 4096 x 1024 each side alone fills one program per SM) or, where that
    # measured slower, one side per launch.
    pid = tl.program_id(0)
    if NEED_DH or NEED_UP_GRADS:
        g_chunks = tl.cdiv(D, BLOCK_D)
        if pid < g_chunks:
            _g_side_columns(pid, g_ptr, down_w_ptr, a_ptr, dz_ptr, dh_ptr, partial_ptr, T, D, M, PARTIAL_LEN,
                            stride_g_t, stride_g_d, stride_dw_m, stride_dw_d, stride_small_t, stride_dh_t, scale,
                            NEED_DH, NEED_UP_GRADS, PRECISION, UPCAST, ACC, BLOCK_M, BLOCK_T, BLOCK_D)
        else:
            _h_side_columns(pid - g_chunks, h_ptr, dz_ptr, partial_ptr, T, D, M, PARTIAL_LEN,
                            stride_h_t, stride_h_d, stride_small_t,
                            NEED_DOWN_W, NEED_DOWN_B, PRECISION, UPCAST, ACC, BLOCK_M, BLOCK_T, BLOCK_D)
    else:
        _h_side_columns(pid, h_ptr, dz_ptr, partial_ptr, T, D, M, PARTIAL_LEN, stride_h_t, stride_h_d, stride_small_t,
                        NEED_DOWN_W, NEED_DOWN_B, PRECISION, UPCAST, ACC, BLOCK_M, BLOCK_T, BLOCK_D)


@triton.jit(do_not_specialize=["SPLITS", "M", "PARTIAL_LEN"])
def _reduce_kernel(
    partial_ptr, d_down_w_ptr, d_up_w_ptr, d_up_b_ptr, d_down_b_ptr,
    SPLITS, D, M, PARTIAL_LEN,
    BLOCK: tl.constexpr,
):
    offsets = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    mask = offsets < PARTIAL_LEN
    pointers = partial_ptr + offsets
    total = tl.load(pointers, mask=mask, other=0.0)
    for _ in range(1, SPLITS):
        pointers += PARTIAL_LEN
        total += tl.load(pointers, mask=mask, other=0.0)
    up_w_start = M * D
    up_b_start = 2 * M * D
    down_b_start = 2 * M * D + D
    tl.store(d_down_w_ptr + offsets, total.to(d_down_w_ptr.dtype.element_ty), mask=offsets < up_w_start)
    tl.store(d_up_w_ptr + (offsets - up_w_start), total.to(d_up_w_ptr.dtype.element_ty),
             mask=(offsets >= up_w_start) & (offsets < up_b_start))
    tl.store(d_up_b_ptr + (offsets - up_b_start), total.to(d_up_b_ptr.dtype.element_ty),
             mask=(offsets >= up_b_start) & (offsets < down_b_start))
    tl.store(d_down_b_ptr + (offsets - down_b_start), total.to(d_down_b_ptr.dtype.element_ty),
             mask=(offsets >= down_b_start) & mask)


@triton.jit
def _column_sum(partial_ptr, out_ptr, rows_total, width, factor, block, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    # out[cols] = factor · Σ rows of partial [rows_total, width] for column block `block`, rows in a fixed order.
    cols = block * BLOCK_C + tl.arange(0, BLOCK_C)
    col_mask = cols < width
    total = tl.zeros([BLOCK_R, BLOCK_C], dtype=partial_ptr.dtype.element_ty)
    for r0 in range(0, rows_total, BLOCK_R):
        rows = r0 + tl.arange(0, BLOCK_R)
        total += tl.load(partial_ptr + rows[:, None].to(tl.int64) * width + cols[None, :],
                         mask=(rows < rows_total)[:, None] & col_mask[None, :], other=0.0)
    tl.store(out_ptr + cols, (tl.sum(total, axis=0) * factor).to(out_ptr.dtype.element_ty), mask=col_mask)


@triton.jit(do_not_specialize=["UP_ROWS", "DOWN_ROWS", "D", "M"])
def _bias_sums_kernel(
    up_partial_ptr, down_partial_ptr, d_up_b_ptr, d_down_b_ptr,
    UP_ROWS, DOWN_ROWS, D, M, up_scale,
    BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
):
    # The wide-bottleneck backward's bias gradients from its column-sum partials: db_up = s · Σ rows of [UP_ROWS, D]
    # (one row per up_columns T split; the first programs), db_down = Σ rows of [DOWN_ROWS, M] (one row per
    # backward_rows row block; the rest).
    pid = tl.program_id(0)
    up_programs = tl.cdiv(D, BLOCK_C)
    if pid < up_programs:
        _column_sum(up_partial_ptr, d_up_b_ptr, UP_ROWS, D, up_scale, pid, BLOCK_R, BLOCK_C)
    else:
        _column_sum(down_partial_ptr, d_down_b_ptr, DOWN_ROWS, M, 1.0, pid - up_programs, BLOCK_R, BLOCK_C)


# ----------------------------------------------------------------------------------------------------
# launchers
# ----------------------------------------------------------------------------------------------------
def _launch_row_kernel(kernel, T: int, block_m: int, chunk: int, key: tuple, args: tuple, kwargs: dict) -> dict:
    """Launch an autotuned row-block kernel over the row blocks of T, each in block_m / chunk bottleneck chunks
    (the config remembered per key, see _tuning.launch_autotuned); returns the launched config."""
    return launch_autotuned(kernel, lambda meta: (ceil_div(T, meta["BLOCK_T"]) * (block_m // chunk),), key, args,
                            dict(kwargs, BLOCK_M=block_m, M_CHUNK=chunk))


def _smallest_block_t(configs) -> int:
    return min(config.kwargs["BLOCK_T"] for config in configs)


def _check_supported(h: torch.Tensor, M: int) -> None:
    if h.dtype not in _SUPPORTED_DTYPES:
        raise TypeError(f"h: the triton backend takes float32, float16, bfloat16 or float64, got {h.dtype}")
    if h.dtype == torch.float64 and h.device.type == "cuda":
        # float64 runs only under the interpreter (for gradcheck); on the H100 its tests failed (2026-11-24).
        raise TypeError("h: the triton backend takes float32, float16 or bfloat16 on CUDA, got torch.float64 "
                        "(use backend='torch' for float64)")
    if M > MAX_BOTTLENECK:
        raise ValueError(
            f"down_weight: the triton backend takes a bottleneck of at most {MAX_BOTTLENECK} rows, got {M}"
        )


def column_offsets_fit(t: torch.Tensor) -> torch.Tensor:
    """t itself, or a row-major copy where its largest column offset ((D - 1) · stride along D) would pass int32:
    the kernels' offsets along T are 64-bit, those along D 32-bit (a transposed view of more than 2³¹ elements)."""
    if t.shape[1] > 1 and (t.shape[1] - 1) * abs(t.stride(1)) >= 2**31:
        return t.contiguous()
    return t


def _padded_bottleneck(M: int) -> int:
    return max(16, next_power_of_2(M))


def _upcast(dtype: torch.dtype) -> bool:
    return interpreting() and dtype == torch.bfloat16


def bottleneck_adapter_fwd(h, down_weight, down_bias, up_weight, up_bias, activation, scale):
    """(out [T, D] in h's dtype, z [T, M] float32 (float64 for float64 h, interpreter only)) for h [T, D] of any
    strides."""
    T, D = h.shape
    M = down_weight.shape[0]
    _check_supported(h, M)
    h = column_offsets_fit(h)
    out = torch.empty((T, D), dtype=h.dtype, device=h.device)
    z = torch.empty((T, M), dtype=accumulator_dtype(h.dtype), device=h.device)
    if T == 0:
        return out, z
    a = torch.empty((T, M), dtype=h.dtype, device=h.device)
    block_m, t_bucket = _padded_bottleneck(M), _t_bucket(T)
    chunk = bottleneck_chunk(block_m)
    precision, upcast, acc = dot_precision(h.dtype), _upcast(h.dtype), accumulator_type(h.dtype)
    with device_context(h):
        _launch_row_kernel(
            _down_kernel, T, block_m, chunk, ("down", t_bucket, D, block_m, chunk, h.dtype, h.device),
            (h, down_weight, z if down_bias is None else down_bias, z, a, T, D, M, t_bucket,
             h.stride(0), h.stride(1), down_weight.stride(0), down_weight.stride(1),
             0 if down_bias is None else down_bias.stride(0), z.stride(0), a.stride(0)),
            dict(HAS_DOWN_BIAS=down_bias is not None, ACTIVATION=ACTIVATION_CODES[activation], PRECISION=precision,
                 UPCAST=upcast, ACC=acc),
        )
        if wide_bottleneck(block_m):
            plan = up_columns_plan(block_m, h.element_size())
            _launch_up_columns(h, a, up_weight.stride(0), up_weight.stride(1), up_weight, up_bias, out, None,
                               float(scale), block_m, plan, _up_columns_splits(T, D, plan, h.device))
        else:
            launch_autotuned(
                _up_kernel, lambda meta: (ceil_div(T, meta["BLOCK_T"]), ceil_div(D, meta["BLOCK_D"])),
                ("up", t_bucket, D, block_m, h.dtype, h.device),
                (h, a, up_weight, z if up_bias is None else up_bias, out, T, D, M, t_bucket,
                 h.stride(0), h.stride(1), a.stride(0), up_weight.stride(0), up_weight.stride(1),
                 0 if up_bias is None else up_bias.stride(0), out.stride(0), float(scale)),
                dict(HAS_UP_BIAS=up_bias is not None, PRECISION=precision, UPCAST=upcast, ACC=acc, BLOCK_M=block_m),
                prune=prune_up_tile_configs,
            )
    return out, z


def _up_columns_splits(T: int, D: int, plan: UpColumnsPlan, device: torch.device) -> int:
    return _t_splits(T, D, plan.block_t, plan.block_d, 1, plan.programs_per_sm, device, memory_cap=T)


def _launch_up_columns(h, a, stride_uw_d, stride_uw_m, up_weight, up_bias, out, column_sums, scale, block_m, plan,
                       splits) -> None:
    """The wide-bottleneck up kernel: out = h + scale · (a W_upᵀ + b_up), W_up [D, M] given by its strides (out
    None: only the column sums of h, into column_sums [splits, D])."""
    T, D = h.shape
    _up_columns_kernel[(ceil_div(D, plan.block_d), splits)](
        h, a, up_weight, h if up_bias is None else up_bias, h if out is None else out,
        h if column_sums is None else column_sums, T, D, a.shape[1],
        h.stride(0), h.stride(1), a.stride(0), stride_uw_d, stride_uw_m,
        0 if up_bias is None else up_bias.stride(0), 0 if out is None else out.stride(0), scale,
        HAS_UP_BIAS=up_bias is not None, STORE_OUT=out is not None, COLUMN_SUMS=column_sums is not None,
        PRECISION=dot_precision(h.dtype), UPCAST=_upcast(h.dtype), ACC=accumulator_type(h.dtype),
        BLOCK_M=block_m, BLOCK_T=plan.block_t, BLOCK_D=plan.block_d, num_warps=plan.warps, num_stages=plan.stages,
    )


def bottleneck_adapter_bwd(grad_out, h, down_weight, down_bias, up_weight, z, activation, scale, needs):
    """(dh, d_down_weight, d_down_bias, d_up_weight, d_up_bias), None where `needs` (same order) is False."""
    need_dh, need_d_down_w, need_d_down_b, need_d_up_w, need_d_up_b = needs
    T, D = h.shape
    M = down_weight.shape[0]
    _check_supported(h, M)
    h, grad_out = column_offsets_fit(h), column_offsets_fit(grad_out)
    need_up_grads = need_d_up_w or need_d_up_b
    need_weight_grads = need_d_down_w or need_d_down_b or need_up_grads
    dh = torch.empty((T, D), dtype=h.dtype, device=h.device) if need_dh else None
    weight_grads = None
    if need_weight_grads:
        weight_grads = (
            torch.empty((M, D), dtype=down_weight.dtype, device=h.device),
            torch.empty((M,), dtype=down_weight.dtype, device=h.device),
            torch.empty((D, M), dtype=up_weight.dtype, device=h.device),
            torch.empty((D,), dtype=up_weight.dtype, device=h.device),
        )
    if T == 0:
        if weight_grads is not None:
            for grad in weight_grads:
                grad.zero_()
        return _select(dh, weight_grads, needs)
    if not (need_dh or need_weight_grads):
        return (None,) * 5
    block_m = _padded_bottleneck(M)
    a, dz = torch.empty((2, T, M), dtype=h.dtype, device=h.device).unbind(0)
    with device_context(h):
        if wide_bottleneck(block_m):
            _backward_by_gemm(grad_out, h, down_weight, up_weight, z, a, dz, dh, weight_grads, activation, scale,
                              needs, block_m)
        else:
            _backward_by_columns(grad_out, h, down_weight, up_weight, z, a, dz, dh, weight_grads, activation, scale,
                                 needs, block_m)
    return _select(dh, weight_grads, needs)


def _launch_backward_rows(grad_out, up_weight, z, a, dz, dz_sums, activation, scale, block_m) -> dict:
    T, D = grad_out.shape
    M = z.shape[1]
    chunk, t_bucket = bottleneck_chunk(block_m), _t_bucket(T)
    return _launch_row_kernel(
        _backward_rows_kernel, T, block_m, chunk,
        ("backward_rows", t_bucket, D, block_m, chunk, dz_sums is not None, grad_out.dtype, grad_out.device),
        (grad_out, up_weight, z, a, dz, z if dz_sums is None else dz_sums, T, D, M, t_bucket,
         grad_out.stride(0), grad_out.stride(1), up_weight.stride(0), up_weight.stride(1), z.stride(0), a.stride(0),
         float(scale)),
        dict(ACTIVATION=ACTIVATION_CODES[activation], DZ_SUMS=dz_sums is not None,
             PRECISION=dot_precision(grad_out.dtype), UPCAST=_upcast(grad_out.dtype)),
    )


def _backward_by_gemm(grad_out, h, down_weight, up_weight, z, a, dz, dh, weight_grads, activation, scale, needs,
                      block_m) -> None:
    """The wide-bottleneck backward: backward_rows (dz, a and db_down's per-row-block sums), up_columns as
    dh = g + dz W_down (and db_up's per-T-split sums of g), dW_up and dW_down as two torch.mm GEMMs straight into the
    gradients, and one small launch summing the bias partials in a fixed order. The GEMMs are cuBLAS's: under
    torch.use_deterministic_algorithms they need CUBLAS_WORKSPACE_CONFIG, as every nn.Linear does."""
    need_dh, need_d_down_w, need_d_down_b, need_d_up_w, need_d_up_b = needs
    T, D = h.shape
    M = down_weight.shape[0]
    acc_dtype = accumulator_dtype(h.dtype)
    plan = up_columns_plan(block_m, h.element_size())
    splits = _up_columns_splits(T, D, plan, h.device)
    # db_down's per-row-block sums, sized for the smallest row block a candidate config may take; db_up's per split.
    dz_sums = (torch.empty((ceil_div(T, _smallest_block_t(_backward_rows_kernel.configs)), M), dtype=acc_dtype,
                           device=h.device) if need_d_down_b else None)
    g_sums = torch.empty((splits, D), dtype=acc_dtype, device=h.device) if need_d_up_b else None
    rows_config = _launch_backward_rows(grad_out, up_weight, z, a, dz, dz_sums, activation, scale, block_m)
    if need_dh or need_d_up_b:
        _launch_up_columns(grad_out, dz, down_weight.stride(1), down_weight.stride(0), down_weight, None, dh, g_sums,
                           1.0, block_m, plan, splits)
    # Detached operands: inside a create_graph backward h and g may require grad, and mm(out=) does not record.
    if need_d_up_w:
        # beta = 0: the uninitialised gradient buffer is never read (nor a NaN in it propagated).
        weight_grads[2].addmm_(grad_out.detach().t(), a, beta=0.0, alpha=float(scale))
    if need_d_down_w:
        torch.mm(dz.t(), h.detach(), out=weight_grads[0])
    if need_d_down_b or need_d_up_b:
        block_c = 128
        up_width, down_width = D if need_d_up_b else 0, M if need_d_down_b else 0
        _bias_sums_kernel[(ceil_div(up_width, block_c) + ceil_div(down_width, block_c),)](
            z if g_sums is None else g_sums, z if dz_sums is None else dz_sums, weight_grads[3], weight_grads[1],
            splits if need_d_up_b else 0,
            ceil_div(T, rows_config["BLOCK_T"]) if need_d_down_b else 0,
            up_width, down_width, float(scale), BLOCK_R=32, BLOCK_C=block_c,
        )


def _backward_by_columns(grad_out, h, down_weight, up_weight, z, a, dz, dh, weight_grads, activation, scale, needs,
                         block_m) -> None:
    """The narrow-bottleneck backward: backward_rows, then the column kernels (dh, and the weight gradients'
    split-T partials), then `reduce`."""
    need_dh, need_d_down_w, need_d_down_b, need_d_up_w, need_d_up_b = needs
    T, D = h.shape
    M = down_weight.shape[0]
    need_up_grads = need_d_up_w or need_d_up_b
    need_weight_grads = weight_grads is not None
    precision, upcast = dot_precision(h.dtype), _upcast(h.dtype)
    plan = column_block_config(block_m, D, h.element_size())
    partial_len = 2 * M * D + D + M
    # The split-T partials (float32, one [partial_len] row per split) stay no larger than h itself.
    splits = _t_splits(T, D, plan.block_t, plan.block_d, plan.split_factor, plan.programs_per_sm, h.device,
                       memory_cap=(T * D * h.element_size()) // (4 * partial_len))
    partials = torch.empty((splits, partial_len) if need_weight_grads else (0,), dtype=z.dtype, device=h.device)
    _launch_backward_rows(grad_out, up_weight, z, a, dz, None, activation, scale, block_m)
    need_g_side, need_h_side = need_dh or need_up_grads, need_d_down_w or need_d_down_b
    sides = [(need_dh, need_up_grads, need_d_down_w, need_d_down_b)]
    if need_g_side and need_h_side and not plan.one_launch:
        sides = [(need_dh, need_up_grads, False, False), (False, False, need_d_down_w, need_d_down_b)]
    for side_dh, side_up, side_down_w, side_down_b in sides:
        side_count = (side_dh or side_up) + (side_down_w or side_down_b)
        _backward_cols_kernel[(ceil_div(D, plan.block_d) * side_count, splits)](
            grad_out, h, down_weight, a, dz, dh if dh is not None else a, partials,
            T, D, M, partial_len,
            grad_out.stride(0), grad_out.stride(1), h.stride(0), h.stride(1), down_weight.stride(0),
            down_weight.stride(1), a.stride(0), dh.stride(0) if dh is not None else 0,
            float(scale),
            NEED_DH=side_dh, NEED_UP_GRADS=side_up, NEED_DOWN_W=side_down_w, NEED_DOWN_B=side_down_b,
            PRECISION=precision, UPCAST=upcast, ACC=accumulator_type(h.dtype),
            BLOCK_M=block_m, BLOCK_T=plan.block_t, BLOCK_D=plan.block_d, num_warps=plan.warps,
            num_stages=plan.stages,
        )
    if need_weight_grads:
        block = 1024
        _reduce_kernel[(ceil_div(partial_len, block),)](
            partials, weight_grads[0], weight_grads[2], weight_grads[3], weight_grads[1], splits, D, M,
            partial_len, BLOCK=block,
        )


def _select(dh, weight_grads, needs):
    d_down_w = d_down_b = d_up_w = d_up_b = None
    if weight_grads is not None:
        d_down_w, d_down_b, d_up_w, d_up_b = weight_grads
    grads = (dh, d_down_w, d_down_b, d_up_w, d_up_b)
    return tuple(grad if need else None for grad, need in zip(grads, needs))
