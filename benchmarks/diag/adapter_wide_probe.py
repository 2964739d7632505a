# Probe (GPU only) of the triton adapter backend's wide-bottleneck path: the row kernels in bottleneck chunks,
# the up kernel per (D chunk, T split) with its W_up slice on chip, and the backward's weight gradients by two GEMMs
# (lowpeft/kernels/bottleneck_adapter.py: bottleneck_chunk, up_columns_plan, wide_bottleneck). Times forward +
# backward as CUDA-graph replays (do_bench_cudagraph medians) side by side with the copy floor, eager PyTorch and
# the cuda backend, and the same with the wide path forced at narrow bottlenecks and with other chunk sizes and plans;
# then per-kernel GPU times of one step (torch.profiler) at chosen cases.
# Trade-off: it patches the kernel module's choice functions in place (as benchmarks/adapter_tuning.py does), so
# the library keeps one code path and no tuning knobs in its API.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
from triton.testing import do_bench_cudagraph  # noqa: E402

from benchmarks.adapter_tuning import print_kernel_times  # noqa: E402
from lowpeft.bench.adapter import PROVIDERS, make_inputs  # noqa: E402
from lowpeft.kernels import bottleneck_adapter as kernels  # noqa: E402

SHAPES = ((8192, 4096), (4096, 1024), (16384, 8192))
BOTTLENECKS = (64, 128, 256)
ORIGINAL = {name: getattr(kernels, name) for name in ("bottleneck_chunk", "wide_bottleneck", "up_columns_plan")}


def variants(bottleneck):
    """(label, patches) of the triton backend to time at this bottleneck."""
    out = [("triton", {})]
    if bottleneck <= 64:
        out.append(("triton wide-path", {"wide_bottleneck": lambda m: True}))
    else:
        out.append(("triton chunk64", {"bottleneck_chunk": lambda m: min(m, 64)}))
        out.append(("triton chunk128", {"bottleneck_chunk": lambda m: min(m, 128)}))
        out.append(("triton up 64x256 w8", {"up_columns_plan": lambda m, size=2: kernels.UpColumnsPlan(64, 256, 8, 2, 1)}))
    return out


def timed(step):
    step()
    torch.cuda.synchronize()
    return do_bench_cudagraph(step, rep=50) * 1e3


def main():
    torch.manual_seed(0)
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}")
    profile_cases = {(8192, 4096, 256), (4096, 1024, 64), (4096, 1024, 256)}
    for tokens, dim in SHAPES:
        for bottleneck in BOTTLENECKS:
            inputs = make_inputs(tokens, dim, bottleneck, torch.bfloat16, "cuda")
            row = {name: timed(PROVIDERS[name](inputs, "gelu", 1.0)) for name in ("floor", "eager", "cuda")}
            steps = {}
            for label, patches in variants(bottleneck):
                for name, fn in patches.items():
                    setattr(kernels, name, fn)
                try:
                    steps[label] = PROVIDERS["triton"](inputs, "gelu", 1.0)
                    row[label] = timed(steps[label])
                    if (tokens, dim, bottleneck) in profile_cases and label in ("triton", "triton wide-path"):
                        print(f"  per-kernel, {label}:")
                        print_kernel_times(steps[label])
                except Exception as exc:  # a variant that does not compile is reported, not fatal
                    print(f"  {label}: {type(exc).__name__}: {str(exc)[:200]}")
                finally:
                    for name in patches:
                        setattr(kernels, name, ORIGINAL[name])
            eager = row["eager"]
            cells = "  ".join(f"{k} {v:7.1f}us ({eager / v:4.2f}x eager)" for k, v in row.items() if k != "eager")
            print(f"{tokens}x{dim} M={bottleneck}: eager {eager:7.1f}us  {cells}", flush=True)
            del inputs, steps


if __name__ == "__main__":
    main()
