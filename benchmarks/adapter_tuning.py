# Tuning probe for the bottleneck-adapter Triton kernels (GPU only): per-kernel GPU time of one forward + backward
# (torch.profiler), the configurations the row-block autotuner picked, and a sweep of the backward column kernel's
# tile / T-split choices, whose winner goes into lowpeft/kernels/bottleneck_adapter.py:column_block_config.
# With --cuda it prints the cuda backend's per-kernel times instead (its cuBLAS GEMMs and own kernels).
# Trade-off: it patches the kernel module's two choice functions in place instead of exposing tuning knobs in
# the library's API, so the library keeps one code path and this file stays a development tool.
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402
from triton.testing import do_bench_cudagraph  # noqa: E402

from lowpeft.bench.adapter import make_inputs  # noqa: E402
from lowpeft.kernels import bottleneck_adapter as kernels  # noqa: E402
from lowpeft.ops.bottleneck_adapter import bottleneck_adapter  # noqa: E402

SHAPES = ((8192, 4096), (4096, 1024), (16384, 8192))
BOTTLENECKS = (16, 64, 256)
# (BLOCK_T, BLOCK_D, num_warps, num_stages), each tried with the split counts that split factors 1 and 2 give and
# with FORCED_SPLITS.
COLUMN_TILES = ((64, 128, 8, 3), (64, 128, 4, 3), (32, 128, 4, 3), (128, 128, 8, 3), (64, 64, 4, 3), (64, 64, 4, 4),
                (32, 64, 4, 4), (128, 64, 8, 3), (32, 32, 4, 4), (64, 256, 8, 3), (64, 32, 4, 3), (64, 128, 8, 4))
SPLIT_FACTORS = (1, 2)
FORCED_SPLITS = (2, 4, 8, 16, 32)


def print_kernel_times(step):
    """Each GPU kernel's mean time per call of `step` (torch.profiler over 5 calls after 3 warm-up calls)."""
    for _ in range(3):
        step()
    torch.cuda.synchronize()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(5):
            step()
        torch.cuda.synchronize()
    for event in prof.key_averages():
        total = getattr(event, "device_time_total", None) or getattr(event, "cuda_time_total", 0)
        if total > 0:
            print(f"    {event.key[:60]:60s} {total / event.count:9.1f} us x{event.count // 5}")


def profile_step(inputs, backend="triton"):
    leaves = [inputs[k] for k in ("h", "down_weight", "down_bias", "up_weight", "up_bias")]

    def step():
        torch.autograd.grad(bottleneck_adapter(*leaves, backend=backend), leaves, inputs["grad_out"])

    print_kernel_times(step)


def sweep_columns(inputs, tokens, dim, bottleneck):
    """The backward launcher's GPU time (CUDA-graph replays, so small shapes are not timed as host time) for each
    column tile with the split counts its factors give and a few forced ones (2 ... 32, within the partials' memory
    cap): small shapes pay for partials (splits × 2·M·D float32 written and read back) as much as for filling
    the GPU."""
    block_m = max(16, 1 << (bottleneck - 1).bit_length())
    if kernels.wide_bottleneck(block_m):
        print("    no column kernels at this width (the wide path: benchmarks/diag/adapter_wide_sweep.py)")
        return
    args = [inputs[k].detach() for k in ("h", "down_weight", "down_bias", "up_weight", "up_bias")]
    _, z = kernels.bottleneck_adapter_fwd(*args, "gelu", 1.0)
    default = kernels.column_block_config(block_m, dim)
    original = kernels.column_block_config, kernels._t_splits
    default_tile, default_factor, default_per_sm = default[:4], default[4], default[5]
    cap = (tokens * dim * args[0].element_size()) // (4 * (2 * bottleneck * dim + dim + bottleneck))
    default_splits = original[1](tokens, dim, default_tile[0], default_tile[1], default_factor, default_per_sm,
                                 args[0].device, cap)

    def backward():
        kernels.bottleneck_adapter_bwd(inputs["grad_out"], args[0], args[1], args[2], args[3], z, "gelu", 1.0,
                                       (True,) * 5)

    results = []
    try:
        for tile in COLUMN_TILES:
            if tile[1] * block_m > 16384:
                continue
            per_sm = default_per_sm if tile == default_tile else (2 if tile[2] <= 4 else 1)
            counts = {original[1](tokens, dim, tile[0], tile[1], factor, per_sm, args[0].device, cap)
                      for factor in SPLIT_FACTORS}
            counts |= {n for n in FORCED_SPLITS if n <= min(cap, -(-tokens // tile[0]))}
            if tile == default_tile:
                counts.add(default_splits)
            kernels.column_block_config = lambda *a, tile=tile: kernels.ColumnPlan(*tile, 1, 2, default.one_launch)
            for splits in sorted(counts):
                kernels._t_splits = lambda *a, splits=splits, **k: splits
                try:
                    backward()
                    results.append((do_bench_cudagraph(backward, rep=20), tile, splits))
                except Exception as exc:  # a tile that does not compile (shared memory) is reported, not fatal
                    print(f"    tile {tile} splits {splits}: {type(exc).__name__}: {str(exc)[:100]}")
    finally:
        kernels.column_block_config, kernels._t_splits = original
    results.sort(key=lambda r: r[0])
    chosen = [r for r in results if r[1] == default_tile and r[2] == default_splits]
    print(f"    default {default_tile} splits {default_splits}: {chosen[0][0] * 1e3 if chosen else float('nan'):.1f} us"
          " (backward, graph timing)")
    for ms, tile, splits in results[:6]:
        print(f"    best    {tile} splits {splits}: {ms * 1e3:.1f} us")


def main():
    torch.manual_seed(0)
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}")
    cases = list(itertools.product(SHAPES, BOTTLENECKS))
    # --cuda: the cuda backend's per-kernel times instead (no autotuned configs, no sweep).
    named = [arg for arg in sys.argv[1:] if arg not in ("--no-sweep", "--cuda")]
    backend = "cuda" if "--cuda" in sys.argv else "triton"
    if named:  # e.g. 8192x4096x64 4096x1024x16: only these cases
        cases = [((int(t), int(d)), int(m)) for t, d, m in (arg.split("x") for arg in named)]
    for (tokens, dim), bottleneck in cases:
        inputs = make_inputs(tokens, dim, bottleneck, torch.bfloat16, "cuda")
        print(f"== {tokens}x{dim} M={bottleneck} ({backend})")
        profile_step(inputs, backend)
        if backend == "cuda":
            continue
        print(f"    down autotuned: {kernels._down_kernel.best_config}")
        print(f"    up autotuned: {kernels._up_kernel.best_config}")
        print(f"    backward_rows autotuned: {kernels._backward_rows_kernel.best_config}")
        if "--no-sweep" not in sys.argv:
            sweep_columns(inputs, tokens, dim, bottleneck)
        del inputs


if __name__ == "__main__":
    main()
