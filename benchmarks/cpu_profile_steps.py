# CPU profiles of one training step (forward + all gradients), float32, on this machine's cores: the LoRA layer
# at 2048 x 1024 -> 1024, r = 16 (frozen nn.Linear, eager LoRA, the cpu backend) and the bottleneck adapter at
# 2048 x 1024, M = 64 (eager, the cpu backend), as ATen operator self-time over a few steps. They answer how far
# issue 5's CPU targets (">= 1.2x / 1.5x faster than eager") are from what the same ATen GEMMs allow.
# Usage: python benchmarks/cpu_profile_steps.py [lora|adapter] ...
#
# Trade-off: torch.profiler's operator table, not wall-clock medians (bench_cpu.py does those): it shows where the
# time goes, with the profiler's own overhead in every row.
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lowpeft.bench.adapter import eager_adapter, make_inputs  # noqa: E402
from lowpeft.bench.lora import eager_lora  # noqa: E402
from lowpeft.ops import lora_linear  # noqa: E402
from lowpeft.ops.bottleneck_adapter import bottleneck_adapter  # noqa: E402


def lora_steps():
    tokens, width, out, rank = 2048, 1024, 1024, 16
    x = torch.randn(tokens, width, requires_grad=True)
    weight, bias = torch.randn(out, width) / width**0.5, torch.randn(out)
    lora_A = (torch.randn(rank, width) / width**0.5).requires_grad_()
    lora_B = (torch.randn(out, rank) / rank**0.5).requires_grad_()
    grad_out = torch.randn(tokens, out)
    frozen = torch.nn.Linear(width, out).requires_grad_(False)
    frozen.weight.data, frozen.bias.data = weight, bias
    return {
        "lora frozen nn.Linear": lambda: torch.autograd.grad(frozen(x), [x], grad_out),
        "lora eager": lambda: torch.autograd.grad(eager_lora(x, weight, lora_A, lora_B, 2.0, 0.0) + bias,
                                                  [x, lora_A, lora_B], grad_out),
        "lora cpu backend": lambda: torch.autograd.grad(
            lora_linear(x, weight, bias, lora_A, lora_B, 2.0, 0.0, backend="cpu"), [x, lora_A, lora_B], grad_out),
    }


def adapter_steps():
    inputs = make_inputs(2048, 1024, 64, torch.float32, torch.device("cpu"))
    leaves = [inputs[k] for k in ("h", "down_weight", "down_bias", "up_weight", "up_bias")]
    return {
        "adapter eager": lambda: torch.autograd.grad(eager_adapter(*leaves, "gelu", 1.0), leaves, inputs["grad_out"]),
        "adapter cpu backend": lambda: torch.autograd.grad(
            bottleneck_adapter(*leaves, "gelu", 1.0, backend="cpu"), leaves, inputs["grad_out"]),
    }


def profile(step, steps: int = 5) -> str:
    for _ in range(3):
        step()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    return prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=8)


if __name__ == "__main__":
    torch.manual_seed(0)
    makers = {"lora": lora_steps, "adapter": adapter_steps}
    for group in sys.argv[1:] or list(makers):
        for name, step in makers[group]().items():
            print(f"## {name} (threads: {torch.get_num_threads()}, 5 steps)\n{profile(step)}")
