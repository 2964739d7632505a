# Autotune configurations, launch-size choices and launch helpers (device context, TMA readiness) for lowpeft's
# Triton kernels.
#
# Trade-off: a short, hand-picked config list per kernel family (tuned on one H100 SXM, bf16,
# T = 2048..8192 tokens, K, N in 1024..11008, r in 8..128) instead of a wide sweep, so the first call at
# a new shape autotunes in seconds, not minutes; the autotune key buckets the token count to the next
# power of two, so a training run whose batch length changes every step does not retune every step.
# Under TRITON_INTERPRET=1 (CPU tests) every family gets one small config and no benchmarking;
# LOWPEFT_AUTOTUNE=0 keeps only each family's first (default) config (quick GPU test runs over many shapes).
# Also the accumulator dtype every kernel family takes as its ACC constexpr (float32; float64 for float64
# inputs, which the launchers accept only under the CPU interpreter, so gradcheck covers the triton backend).
# Nothing here queries the GPU at import time.
from __future__ import annotations

import contextlib
import functools
import os

import torch
import triton
import triton.language as tl

_SHARED_MEMORY_BUDGET = 227 * 1024  # bytes: Hopper's per-block limit; prune_gemm_configs counts the epilogue too


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def accumulator_dtype(dtype: torch.dtype) -> torch.dtype:
    """The kernels' accumulator and float partials dtype for inputs of `dtype`: float32, or float64 for float64."""
    return torch.promote_types(dtype, torch.float32)


def accumulator_type(dtype: torch.dtype):
    """accumulator_dtype as the kernels' ACC constexpr."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def float32_dot_precision() -> str:
    """tl.dot's input precision for float32 operands, as torch's cuBLAS matmuls (nn.Linear) take it: "tf32" or
    "ieee" from torch.backends.cuda.matmul.fp32_precision (which torch.set_float32_matmul_precision sets too),
    else from the global torch.backends.fp32_precision, else from the legacy getter ("highest" → "ieee"). The
    legacy getter raises once the new API has been used, so it is read last."""
    for setting in (getattr(torch.backends.cuda.matmul, "fp32_precision", "none"),
                    getattr(torch.backends, "fp32_precision", "none")):
        if setting in ("tf32", "ieee"):
            return setting
    return "ieee" if torch.get_float32_matmul_precision() == "highest" else "tf32"


def autotuning() -> bool:
    """False under LOWPEFT_AUTOTUNE=0: every kernel runs its first (fitting) config, no benchmarking."""
    return os.environ.get("LOWPEFT_AUTOTUNE", "1") != "0"


def _tuned(configs: list[triton.Config]) -> list[triton.Config]:
    return configs if autotuning() else configs[:1]


_chosen_configs: dict = {}


def launch_autotuned(kernel, grid, key: tuple, args: tuple, constants: dict, prune=None) -> dict:
    """Launch a triton.autotune'd kernel whose configs have no pre-hook. `key` is the launcher's own tuple of
    what decides the config: the autotune key's values, the operands' dtypes and the device. The first call per
    key goes through the autotuner (which tunes and runs); later calls launch the remembered config through the
    kernel's JITFunction directly, skipping the autotuner's per-call bookkeeping (on the H100 machine's CPU
    ~65 µs of a Triton launch's ~200 µs, run 24's cProfile). Under LOWPEFT_AUTOTUNE=0 with a `prune` function,
    the first config it keeps is launched without the autotuner, which would still benchmark a lone pruned
    config on a key's first call (do_bench's 256 MB L2-flush buffer and restore copies: +320 MiB of peak memory
    in the LoRA dropout step, run 31). Returns the launched config's meta-parameters."""
    config = _chosen_configs.get((kernel, key))
    if config is None:
        if prune is None or autotuning():
            kernel[grid](*args, **constants)
            config = _chosen_configs[(kernel, key)] = kernel.best_config.all_kwargs()
            return config
        chosen = prune(kernel.configs, dict(zip(kernel.fn.arg_names, args)), **constants)[0]
        config = _chosen_configs[(kernel, key)] = chosen.all_kwargs()
    kernel.fn[grid](*args, **constants, **config)
    return config


def ceil_div(numerator: int, denominator: int) -> int:
    """⌈numerator / denominator⌉ for host-side sizes. triton.cdiv is a ConstexprFunction in triton 3.9, about 2 µs
    a call from Python; the launchers call it a dozen times per layer call."""
    return -(-numerator // denominator)


def next_power_of_2(n: int) -> int:
    """The smallest power of two ≥ n (0 for n = 0, as triton's), host side (triton.next_power_of_2 costs as
    triton.cdiv does)."""
    return 0 if n <= 0 else 1 << (n - 1).bit_length()


def token_bucket(tokens: int) -> int:
    """The autotune key for a token count: the next power of two (at least 16)."""
    return max(16, next_power_of_2(max(tokens, 1)))


def padded_rank(rank: int) -> int:
    """LoRA rank padded to a power of two >= 16 (tl.dot's smallest side); the kernels mask the padding."""
    return max(16, next_power_of_2(rank))


def gemm_configs() -> list[triton.Config]:
    """Tiles for the two big GEMMs (forward y and backward dx): output tile BLOCK_M x BLOCK_N, reduction
    step BLOCK_K. Tuned on an H100 at 8192 x 4096 -> 4096 / 11008 and 2048..4096 x 1024..2048, bf16."""
    if interpreting():
        return [triton.Config({"BLOCK_M": 32, "BLOCK_N": 32, "BLOCK_K": 32, "GROUP_M": 4}, num_warps=4, num_stages=1)]
    return [
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 256, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 256, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=8, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 64, "BLOCK_N": 128, "BLOCK_K": 64, "GROUP_M": 8}, num_warps=4, num_stages=4),
        triton.Config({"BLOCK_M": 128, "BLOCK_N": 128, "BLOCK_K": 32, "GROUP_M": 8}, num_warps=4, num_stages=4),
    ]


def _set_forward_tma_blocks(nargs):
    """Autotune pre-hook: the forward's descriptors get the chosen config's block shapes."""
    block_m, block_n, block_k = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["x_desc"].block_shape = [block_m, block_k]
    nargs["w_desc"].block_shape = [block_n, block_k]
    nargs["a_desc"].block_shape = [nargs["R_PAD"], block_k]


def _set_dx_tma_blocks(nargs):
    """Autotune pre-hook: the dx GEMM's descriptors get the chosen config's block shapes."""
    block_m, block_n, block_k = nargs["BLOCK_M"], nargs["BLOCK_N"], nargs["BLOCK_K"]
    nargs["g_desc"].block_shape = [block_m, block_k]
    nargs["w_desc"].block_shape = [block_k, block_n]
    nargs["b_desc"].block_shape = [block_k, nargs["R_PAD"]]


def _gemm_tma_configs(pre_hook) -> list[triton.Config]:
    """Tiles for the persistent TMA (tensor-descriptor) variants of the two big GEMMs, Hopper and later.
    Tuned on an H100 at 8192 x 4096 -> 4096 / 11008, 4096 x 2048 -> 2048 and 2048 x 1024 -> 1024, bf16:
    a plain persistent TMA GEMM with 128x256x64 / 8 warps / 3 stages ran at 0.93x (4096) and 1.01x
    (11008) cuBLAS's speed, 128x128x64 / 4 warps / 4 stages at 0.95x on the two small shapes."""
    shapes = [(128, 256, 8, 3, False), (128, 256, 8, 3, True), (128, 256, 8, 4, False), (128, 128, 4, 4, True),
              (128, 128, 8, 4, True)]
    return [
        triton.Config({"BLOCK_M": m, "BLOCK_N": n, "BLOCK_K": 64, "GROUP_M": 8, "FLATTEN": flatten},
                      num_warps=warps, num_stages=stages, pre_hook=pre_hook)
        for m, n, warps, stages, flatten in shapes
    ]


def forward_tma_configs() -> list[triton.Config]:
    return _gemm_tma_configs(_set_forward_tma_blocks)


def dx_tma_configs() -> list[triton.Config]:
    return _gemm_tma_configs(_set_dx_tma_blocks)


# Shared memory the fused GEMMs' epilogue needs beyond the output tile (the [*, R_PAD] LoRA tiles).
_EPILOGUE_MARGIN = 16 * 1024


def prune_gemm_configs(configs, named_args, **kwargs):
    """Drop tiles whose pipelined operand buffers cannot fit in shared memory for this dtype (fp32 inputs
    need twice the bytes of 16-bit ones) and tiles far larger than a small problem. The GEMM config lists
    are never cut by LOWPEFT_AUTOTUNE=0 up front (triton skips pruning for a one-config list, so fp32 would
    get a 16-bit tile that overflows shared memory); the switch applies here, after the fit check."""
    operand = next(named_args[name] for name in ("x_ptr", "g_ptr", "x_desc", "g_desc") if name in named_args)
    element_bytes = getattr(operand, "base", operand).element_size()
    rows = named_args["T"]

    def operand_bytes(meta, stages):
        # Pipelined operand tiles, plus the epilogue's staging of the output tile and a margin for the small
        # LoRA tiles: without the last two, fp32 on the H100 asked for 262-270 KB of a 227 KB limit
        # (GPU run 2026-11-24, LOWPEFT_TRITON_GEMM=fused).
        pipeline = (meta["BLOCK_M"] + meta["BLOCK_N"]) * meta["BLOCK_K"] * element_bytes * max(stages, 1)
        return pipeline + meta["BLOCK_M"] * meta["BLOCK_N"] * element_bytes + _EPILOGUE_MARGIN

    kept = []
    for config in configs:
        if operand_bytes(config.kwargs, config.num_stages) > _SHARED_MEMORY_BUDGET:
            continue
        if config.kwargs["BLOCK_M"] > 64 and rows <= 64 and len(configs) > 1:
            continue
        kept.append(config)
    if kept:
        return kept if autotuning() else kept[:1]
    # Nothing fits (fp32 with the 16-bit tiles): shrink the last config's pipeline, then its K step.
    last = configs[-1]
    meta, stages = dict(last.kwargs), last.num_stages
    while operand_bytes(meta, stages) > _SHARED_MEMORY_BUDGET and stages > 2:
        stages -= 1
    while operand_bytes(meta, stages) > _SHARED_MEMORY_BUDGET and meta["BLOCK_K"] > 16:
        meta["BLOCK_K"] //= 2
    return [triton.Config(meta, num_warps=last.num_warps, num_stages=stages, pre_hook=last.pre_hook)]


def row_block_configs() -> list[triton.Config]:
    """Tiles for the row-block kernels that read one [T, K] matrix once and multiply it by a small
    [K, r] one (the dropout shrink S = dropout(x) Aᵀ, and dS = s g B when r is too large to fuse). The first is
    the fastest or within 3 % of it at every shape of the H100 sweep (benchmarks/diag/dropout_kernel_sweep.py,
    run 38: bf16, T = 2048 / 8192, K = 1024-5632, r = 16 / 64; 53 µs against the former first tile's 70 µs at
    8192 x 4096)."""
    if interpreting():
        return [triton.Config({"BLOCK_T": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    return _tuned([
        triton.Config({"BLOCK_T": 32, "BLOCK_K": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_T": 32, "BLOCK_K": 256}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_T": 64, "BLOCK_K": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_T": 128, "BLOCK_K": 64}, num_warps=4, num_stages=3),
    ])


def expand_configs() -> list[triton.Config]:
    """Tiles for the in-place expand-add out[T, K] += mask ⊙ (dS A): memory-bound (one read and one write of
    out), so wide column blocks for 16-byte accesses; chosen by reasoning about H100 bandwidth, not yet tuned."""
    if interpreting():
        return [triton.Config({"BLOCK_T": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    return _tuned([
        triton.Config({"BLOCK_T": 64, "BLOCK_K": 128}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_T": 32, "BLOCK_K": 256}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_T": 128, "BLOCK_K": 128}, num_warps=8, num_stages=2),
    ])


def split_t_configs() -> list[triton.Config]:
    """Tiles for the split-T weight-gradient partials (dA = dSᵀ x_dropped, dB = gᵀ S): a column block of
    the big matrix, reduced over a slice of the tokens."""
    if interpreting():
        return [triton.Config({"BLOCK_T": 32, "BLOCK_C": 32}, num_warps=4, num_stages=1)]
    return _tuned([
        triton.Config({"BLOCK_T": 64, "BLOCK_C": 128}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_T": 128, "BLOCK_C": 64}, num_warps=4, num_stages=3),
        triton.Config({"BLOCK_T": 64, "BLOCK_C": 256}, num_warps=8, num_stages=3),
        triton.Config({"BLOCK_T": 32, "BLOCK_C": 128}, num_warps=4, num_stages=4),
    ])


def expand_grad_a_configs() -> list[triton.Config]:
    """Tiles for the dropout backward's one pass that adds mask ⊙ (dS A) to dx and reduces dA = dSᵀ (x ⊙ mask):
    a column block of K walked over a slice of the tokens; memory-bound (read + write of dx, read of x) with
    the Philox draws and two small dots per tile. From the H100 sweep (benchmarks/diag/dropout_kernel_sweep.py,
    run 38, bf16): the first is the fastest at r = 16 for K = 2048-5632 (132 µs against the former first tile's
    161 µs at 8192 x 4096, cold L2) and 8 % off the best at r = 64, where the next two lead."""
    if interpreting():
        return [triton.Config({"BLOCK_T": 32, "BLOCK_K": 32}, num_warps=4, num_stages=1)]
    # Not cut by LOWPEFT_AUTOTUNE=0 here: prune_expand_grad_a_configs applies it after the register fit.
    return [
        triton.Config({"BLOCK_T": 32, "BLOCK_K": 64}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_T": 32, "BLOCK_K": 128}, num_warps=8, num_stages=2),
        triton.Config({"BLOCK_T": 16, "BLOCK_K": 64}, num_warps=4, num_stages=2),
        triton.Config({"BLOCK_T": 64, "BLOCK_K": 64}, num_warps=8, num_stages=2),
    ]


def prune_expand_grad_a_configs(configs, named_args, **kwargs):
    """Early config prune for the one-pass dropout backward: its [R_PAD, BLOCK_K] float32 dA accumulator and
    the [R_PAD, BLOCK_K] float32 A tile it keeps for the whole loop must fit in 128 registers a thread; then
    LOWPEFT_AUTOTUNE=0 keeps the first that fits (a cut before pruning would keep a tile that spills at r = 128)."""
    rank_padded = kwargs.get("R_PAD", named_args.get("R_PAD"))
    kept = [c for c in configs if 2 * rank_padded * c.kwargs["BLOCK_K"] <= 128 * 32 * c.num_warps]
    kept = kept or configs[-1:]
    return kept if autotuning() else kept[:1]


def prune_rank_accumulator_configs(configs, named_args, **kwargs):
    """Early config prune for the split-T weight-gradient kernel: keep the [R_PAD, BLOCK_C] float32
    accumulator within 128 registers a thread."""
    rank_padded = kwargs.get("R_PAD", named_args.get("R_PAD"))
    kept = [c for c in configs if rank_padded * c.kwargs["BLOCK_C"] <= 128 * 32 * c.num_warps]
    return kept or configs[-1:]


# Largest padded rank whose [BLOCK_M, r] accumulator rides along in the big GEMMs' main loop (the fused
# shrink in forward, dS in the dx GEMM); above it a separate one-pass kernel computes S or dS.
FUSED_RANK_LIMIT = 64

# Rank chunk for the GEMM epilogue that folds S Bᵀ (or dS A) into the accumulator ("K + r steps").
RANK_CHUNK = 64


@functools.lru_cache(maxsize=None)
def _tma_capable_device(device_index: int) -> bool:
    import torch

    return torch.cuda.get_device_capability(device_index)[0] >= 9


def tma_ready(*tensors) -> bool:
    """Whether the persistent TMA kernels can read these 2-D tensors: a Hopper-or-later GPU (not the
    interpreter), a row-major last dimension, 16-byte aligned base and row stride."""
    if interpreting():
        return False
    for tensor in tensors:
        if tensor.device.type != "cuda" or tensor.stride(1) != 1:
            return False
        if tensor.data_ptr() % 16 or (tensor.stride(0) * tensor.element_size()) % 16:
            return False
    return _tma_capable_device(tensors[0].device.index or 0)


def device_context(tensor: torch.Tensor):
    """Triton launches on the current CUDA device: switch only when the tensors live on another one."""
    if tensor.device.type == "cuda" and tensor.device.index != torch.cuda.current_device():
        return torch.cuda.device(tensor.device)
    return contextlib.nullcontext()


@functools.lru_cache(maxsize=None)
def multiprocessor_count(device_index: int) -> int:
    """SMs of a CUDA device, asked once per device at the first launch (never at import)."""
    import torch

    return torch.cuda.get_device_properties(device_index).multi_processor_count


def token_slices(tokens: int, column_blocks: int, device, *, rank: int, element_size: int) -> tuple[int, int]:
    """(slices, rows per slice) of a split-T reduction. The count aims at enough programs for about two
    waves of the GPU, never more slices than there are 64-row blocks, and never so many that the float32
    [slices, r, C] partials outgrow an eighth of the [T, C] operand they reduce (at r = 128 with dropout, 8
    slices made the layer's peak extra memory 1.19x the frozen layer's on the H100, run 22); each slice is
    then a whole number of 128-row blocks, which can leave fewer slices than aimed at."""
    by_memory = max(1, tokens * element_size // (8 * 4 * max(rank, 1)))
    if device.type != "cuda":
        wanted = max(1, min(4, ceil_div(tokens, 64), by_memory))
    else:
        target_programs = 2 * multiprocessor_count(device.index if device.index is not None else 0)
        wanted = max(1, min(ceil_div(target_programs, max(column_blocks, 1)), ceil_div(tokens, 64), by_memory))
    rows_per_slice = ceil_div(ceil_div(tokens, wanted), 128) * 128
    return ceil_div(tokens, rows_per_slice), rows_per_slice
