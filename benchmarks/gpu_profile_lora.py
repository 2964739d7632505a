# GPU profile (one device call) of where a LoRA layer step and an adapter step spend their time: the CUDA
# kernels of one forward + backward (torch.profiler, microseconds per step by kernel) for lowpeft, eager LoRA and
# the frozen Linear at the main benchmark shape, with and without dropout, and of the adapter at 8192 x 4096,
# M = 64; then the host side of one layer call at a launch-bound size (per-call wall time, and a cProfile of
# lowpeft's dropout call, the path that still runs Python autograd and Triton launches).
#
# Trade-off: it profiles the public op / module (what users run), so kernel names are those of cuBLAS, Triton
# and ATen; building blocks timed one by one live in gpu_probe_components.py.
import cProfile
import io
import json
import os
import pstats
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gpu_probe_components import host_us_per_call, kernel_table  # noqa: E402  (this script's folder is on sys.path)
from lowpeft import LoRALinear  # noqa: E402
from lowpeft.bench.adapter import eager_adapter, make_inputs  # noqa: E402
from lowpeft.bench.lora import eager_lora  # noqa: E402
from lowpeft.ops.bottleneck_adapter import bottleneck_adapter  # noqa: E402
from lowpeft.ops.lora_linear import lora_linear  # noqa: E402

results = {"kernels": {}, "host_us": {}}


def kernel_profile(name, step, steps=10):
    """CUDA kernel time per step, by kernel name, summed over `steps` profiled steps."""
    for _ in range(5):
        step()
    torch.cuda.synchronize()
    table = kernel_table(step, steps)
    total = sum(us for us, _, _ in table)
    print(f"\n## {name}: {total:.1f} us of kernels per step")
    for us, count, kernel in table:
        print(f"{us:9.1f} us  x{count:4.1f}  {kernel[:110]}")
    results["kernels"][name] = {"total_us": total, "kernels": [dict(us=u, calls=c, name=k) for u, c, k in table]}


def lora_steps(tokens=8192, k=4096, n=4096, r=16, dtype=torch.bfloat16):
    gen = torch.Generator(device="cuda").manual_seed(0)
    rand = lambda *s, scale=1.0: (torch.randn(*s, device="cuda", generator=gen) * scale).to(dtype)  # noqa: E731
    x = rand(tokens, k).requires_grad_(True)
    g = rand(tokens, n)
    weight = rand(n, k, scale=k**-0.5)
    lora_A = rand(r, k, scale=k**-0.5).requires_grad_(True)
    lora_B = rand(n, r, scale=r**-0.5).requires_grad_(True)
    frozen = torch.nn.Linear(k, n, bias=False, device="cuda", dtype=dtype).requires_grad_(False)
    steps = {"frozen nn.Linear": lambda: torch.autograd.grad(frozen(x), [x], g)}
    for p in (0.0, 0.1):
        steps[f"lowpeft p={p}"] = (lambda p: lambda: torch.autograd.grad(
            lora_linear(x, weight, None, lora_A, lora_B, 2.0, p), [x, lora_A, lora_B], g))(p)
        steps[f"eager LoRA p={p}"] = (lambda p: lambda: torch.autograd.grad(
            eager_lora(x, weight, lora_A, lora_B, 2.0, p), [x, lora_A, lora_B], g))(p)
    return steps


def adapter_steps(tokens=8192, dim=4096, bottleneck=64):
    inputs = make_inputs(tokens, dim, bottleneck, torch.bfloat16, torch.device("cuda"))
    leaves = [inputs[k] for k in ("h", "down_weight", "down_bias", "up_weight", "up_bias")]
    steps = {}
    for backend in ("triton", "cuda"):
        steps[f"adapter {backend}"] = (lambda backend: lambda: torch.autograd.grad(
            bottleneck_adapter(*leaves, "gelu", 1.0, backend=backend), leaves, inputs["grad_out"]))(backend)
    steps["adapter eager"] = lambda: torch.autograd.grad(eager_adapter(*leaves, "gelu", 1.0), leaves,
                                                         inputs["grad_out"])
    return steps


def host_side():
    """Per-call wall time of forward + backward at 16 x 64 -> 64 (GPU work ~µs: host-bound), and a cProfile."""
    dtype = torch.bfloat16
    base = torch.nn.Linear(64, 64, device="cuda", dtype=dtype).requires_grad_(False)
    x = torch.randn(16, 64, device="cuda", dtype=dtype, requires_grad=True)
    g = torch.randn(16, 64, device="cuda", dtype=dtype)
    calls = {"frozen nn.Linear": lambda: base(x).backward(g)}
    for p in (0.0, 0.1):
        A = torch.randn(16, 64, device="cuda", dtype=dtype, requires_grad=True)
        B = torch.randn(64, 16, device="cuda", dtype=dtype, requires_grad=True)
        calls[f"eager LoRA p={p}"] = (lambda A, B, p: lambda: eager_lora(x, base.weight, A, B, 2.0, p).backward(g))(
            A, B, p)
        for backend in ("triton", "cuda"):
            layer = LoRALinear.from_linear(base, r=16, alpha=32, dropout=p, backend=backend)
            calls[f"lowpeft {backend} p={p}"] = (lambda layer: lambda: layer(x).backward(g))(layer)
    for name, fn in calls.items():
        us = host_us_per_call(fn)
        results["host_us"][name] = us
        print(f"host fwd+bwd per call {name:28s} {us:8.1f} us", flush=True)
    profiler = cProfile.Profile()
    profiler.enable()
    for _ in range(300):
        calls["lowpeft triton p=0.1"]()
    torch.cuda.synchronize()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(30)
    print("\n## cProfile, 300 calls of lowpeft triton p=0.1 (16 x 64 -> 64), by own time\n" + text.getvalue())
    results["cprofile_triton_p0.1"] = text.getvalue()


if __name__ == "__main__":
    results.update(gpu=torch.cuda.get_device_name(), torch=torch.__version__)
    host_side()
    for name, step in lora_steps().items():
        kernel_profile(name, step)
    for name, step in adapter_steps().items():
        kernel_profile(name, step)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "profile_lora.json"), "w") as handle:
        json.dump(results, handle, indent=1)
