# CPU profile of one bottleneck-adapter training step (forward + all five gradients) at 2048 x 1024, M = 64,
# float32: eager PyTorch against the compiled cpu backend, ATen operator self-time over 10 steps. It answers how
# much of eager's step is GEMM time that a fused adapter calling the same ATen GEMMs cannot remove (issue 5's
# ">= 1.5x faster than eager" target). Usage: python benchmarks/cpu_profile_adapter.py [eager|cpu] ...
#
# Trade-off: torch.profiler's operator table, not wall-clock medians (bench_cpu.py does those): it shows where the
# time goes, with the profiler's own overhead in every row.
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lowpeft.bench.adapter import eager_adapter, make_inputs  # noqa: E402
from lowpeft.ops.bottleneck_adapter import bottleneck_adapter  # noqa: E402


def profile(provider: str) -> str:
    torch.manual_seed(0)
    inputs = make_inputs(2048, 1024, 64, torch.float32, torch.device("cpu"))
    leaves = [inputs[k] for k in ("h", "down_weight", "down_bias", "up_weight", "up_bias")]

    def step():
        out = (eager_adapter(*leaves, "gelu", 1.0) if provider == "eager"
               else bottleneck_adapter(*leaves, "gelu", 1.0, backend="cpu"))
        torch.autograd.grad(out, leaves, inputs["grad_out"])

    for _ in range(5):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(10):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=10)


if __name__ == "__main__":
    for name in sys.argv[1:] or ["eager", "cpu"]:
        print(f"## {name} (threads: {torch.get_num_threads()})\n{profile(name)}")
