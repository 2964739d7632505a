# Sweep (GPU only) of the triton adapter kernels' tiles at wide bottlenecks: each of down, up-columns (also dh's
# kernel) and backward_rows launched alone with explicit meta-parameters (tile, warps, stages, bottleneck chunk or
# programs per SM),
# timed as CUDA-graph replays (do_bench_cudagraph medians), next to torch.mm / addmm doing the same GEMM (cuBLAS).
# --no-rows: the up kernel only.
# Trade-off: it launches the JIT functions directly with hand-listed candidates instead of the autotuner's list, so
# a better tile found here goes into the library's config lists by hand, with its number.
import itertools
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
import triton.language as tl  # noqa: E402
from triton.testing import do_bench_cudagraph  # noqa: E402

from lowpeft.kernels import bottleneck_adapter as kernels  # noqa: E402

CASES = ((8192, 4096, 256), (4096, 1024, 256), (8192, 4096, 128))


def bench(fn):
    try:
        fn()
        torch.cuda.synchronize()
        return do_bench_cudagraph(fn, rep=30) * 1e3
    except Exception as exc:  # a config that does not compile (shared memory, registers) is reported, not fatal
        return f"{type(exc).__name__}: {str(exc)[:80]}"


def show(label, results, keep=6):
    numbers = sorted((r for r in results if isinstance(r[0], float)), key=lambda r: r[0])
    for us, meta in numbers[:keep]:
        print(f"    {label} {us:7.1f} us  {meta}")
    failed = [r for r in results if not isinstance(r[0], float)]
    if failed:
        print(f"    {label}: {len(failed)} configs failed, e.g. {failed[0][1]}: {failed[0][0]}")


def main():
    torch.manual_seed(0)
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}")
    dev, dt = "cuda", torch.bfloat16
    for T, D, M in CASES:
        print(f"== {T}x{D} M={M}")
        h, g = torch.randn(T, D, device=dev, dtype=dt), torch.randn(T, D, device=dev, dtype=dt)
        down_w = torch.randn(M, D, device=dev, dtype=dt) * 0.02
        up_w = torch.randn(D, M, device=dev, dtype=dt) * 0.02
        down_b, up_b = torch.zeros(M, device=dev, dtype=dt), torch.zeros(D, device=dev, dtype=dt)
        z = torch.empty(T, M, device=dev, dtype=torch.float32)
        a, dz = torch.randn(T, M, device=dev, dtype=dt), torch.randn(T, M, device=dev, dtype=dt)
        out = torch.empty_like(h)
        common = dict(PRECISION="ieee", UPCAST=False)
        print(f"    cuBLAS mm h W_downT {bench(lambda: torch.mm(h, down_w.t()))}")
        print(f"    cuBLAS addmm h + a W_upT {bench(lambda: torch.addmm(h, a, up_w.t(), out=out))}")
        print(f"    cuBLAS mm gT a {bench(lambda: torch.mm(g.t(), a))}   mm dzT h {bench(lambda: torch.mm(dz.t(), h))}")
        row_results, rows_results = [], []
        row_metas = () if "--no-rows" in sys.argv else itertools.product((128, 256), (64, 128), (32, 64, 128), (4, 8),
                                                                         (3, 4))
        for chunk, bt, bd, warps, stages in row_metas:
            if chunk > M or bt * chunk > 2048 * warps or (stages - 1) * (bt * bd + bd * chunk) * 2 > 200 * 1024:
                continue
            meta = dict(BLOCK_T=bt, BLOCK_D=bd, num_warps=warps, num_stages=stages)
            grid = (-(-T // bt) * (M // chunk),)
            row_results.append((bench(lambda: kernels._down_kernel.fn[grid](
                h, down_w, down_b, z, a, T, D, M, T, h.stride(0), 1, down_w.stride(0), 1, 1, z.stride(0), a.stride(0),
                HAS_DOWN_BIAS=True, ACTIVATION=0, ACC=tl.float32, BLOCK_M=M, M_CHUNK=chunk, **common, **meta)),
                dict(meta, chunk=chunk)))
            rows_results.append((bench(lambda: kernels._backward_rows_kernel.fn[grid](
                g, up_w, z, a, dz, z, T, D, M, T, g.stride(0), 1, up_w.stride(0), 1, z.stride(0), a.stride(0), 1.0,
                ACTIVATION=0, DZ_SUMS=False, BLOCK_M=M, M_CHUNK=chunk, **common, **meta)), dict(meta, chunk=chunk)))
        show("down", row_results)
        show("backward_rows", rows_results)
        up_results = []
        tiles = ((64, 128, 4), (64, 128, 8), (32, 128, 4), (64, 64, 4), (128, 64, 8), (64, 256, 8), (128, 128, 8),
                 (32, 256, 8))
        for (bt, bd, warps), stages, per_sm in itertools.product(tiles, (2, 3, 4), (1, 2)):
            if bd * M * 2 + (stages - 1) * bt * M * 2 > 220 * 1024:
                continue
            plan = kernels.UpColumnsPlan(bt, bd, warps, stages, per_sm)
            splits = kernels._up_columns_splits(T, D, plan, h.device)
            up_results.append((bench(lambda: kernels._launch_up_columns(
                h, a, up_w.stride(0), 1, up_w, up_b, out, None, 1.0, M, plan, splits)), dict(plan._asdict(),
                                                                                             splits=splits)))
        show("up", up_results, keep=10)


if __name__ == "__main__":
    main()
