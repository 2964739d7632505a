# Probe (one device call): where the host time of one adapter forward + backward goes on the GPU machine.
#   1. Host time per call at a GPU-light size (64 x 1024, M = 64, bf16), where every provider is host-bound: N calls
#      queued without a sync, then one sync. Providers: the triton, cuda and torch backends of the public op, the
#      eager adapter (lowpeft.bench.adapter.eager_adapter) and nn.Linear(1024, 1024) as the yardstick.
#   2. cProfile of the triton backend's step: the functions with the most own time.
#   3. One Triton launch, three ways: kernel[grid](...) (JITFunction.run: binder, cache key, launch), the
#      CompiledKernel that call returns launched directly (no binder), and an empty torch op for scale.
# Trade-off: a standalone development tool, not wired into the library: it decides whether the adapter's
# launched path is worth moving off JITFunction.run (benchmarks/NOTES_adapter.md).
import cProfile
import os
import pstats
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from lowpeft.bench.adapter import eager_adapter, make_inputs  # noqa: E402
from lowpeft.kernels import bottleneck_adapter as kernels  # noqa: E402
from lowpeft.ops.bottleneck_adapter import bottleneck_adapter  # noqa: E402

CALLS = 300


def host_us(step, calls=CALLS):
    for _ in range(20):
        step()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        step()
    host = (time.perf_counter() - start) / calls * 1e6
    torch.cuda.synchronize()
    return host


def adapter_step(inputs, fn):
    leaves = [inputs[k] for k in ("h", "down_weight", "down_bias", "up_weight", "up_bias")]

    def step():
        torch.autograd.grad(fn(*leaves), leaves, inputs["grad_out"])

    return step


def main():
    inputs = make_inputs(64, 1024, 64, torch.bfloat16, torch.device("cuda"))
    steps = {f"op backend={name}": adapter_step(inputs, lambda *a, name=name: bottleneck_adapter(*a, backend=name))
             for name in ("triton", "cuda", "torch")}
    steps["eager adapter"] = adapter_step(inputs, eager_adapter)
    linear = torch.nn.Linear(1024, 1024, device="cuda", dtype=torch.bfloat16)
    x = torch.randn(64, 1024, device="cuda", dtype=torch.bfloat16, requires_grad=True)
    grad_y = torch.ones(64, 1024, device="cuda", dtype=torch.bfloat16)
    steps["nn.Linear"] = lambda: torch.autograd.grad(linear(x), (x, linear.weight, linear.bias), grad_y)
    print("host time per forward + backward call, µs (64 x 1024, M = 64, bf16)")
    for name, step in steps.items():
        print(f"  {name:<22} {host_us(step):8.1f}")

    args = [inputs[k] for k in ("h", "down_weight", "down_bias", "up_weight", "up_bias")]
    z = kernels.bottleneck_adapter_fwd(*args, "gelu", 1.0)[1]
    needs = (True,) * 5
    print(f"  {'fwd launchers alone':<22} {host_us(lambda: kernels.bottleneck_adapter_fwd(*args, 'gelu', 1.0)):8.1f}")
    bwd = lambda: kernels.bottleneck_adapter_bwd(inputs["grad_out"], *args[:4], z, "gelu", 1.0, needs)  # noqa: E731
    print(f"  {'bwd launchers alone':<22} {host_us(bwd):8.1f}")

    profiler = cProfile.Profile()
    step = steps["op backend=triton"]
    host_us(step, 20)
    profiler.enable()
    for _ in range(CALLS):
        step()
    profiler.disable()
    torch.cuda.synchronize()
    print(f"\ncProfile of {CALLS} triton-backend steps (own time first)")
    pstats.Stats(profiler).sort_stats("tottime").print_stats(25)

    partials = torch.zeros(4, 2 * 64 * 1024 + 1024 + 64, device="cuda")
    grads = [torch.empty(n, device="cuda", dtype=torch.bfloat16) for n in (64 * 1024, 1024 * 64, 1024, 64)]
    launch_args = (partials, grads[0], grads[1], grads[2], grads[3], 4, 1024, 64, partials.shape[1])
    grid = (kernels.ceil_div(partials.shape[1], 1024),)
    compiled = kernels._reduce_kernel[grid](*launch_args, BLOCK=1024)
    print("one launch, µs (the adapter's reduce kernel, 10 arguments)")
    jit_launch = host_us(lambda: kernels._reduce_kernel[grid](*launch_args, BLOCK=1024), 2000)
    print(f"  {'kernel[grid](...)':<34} {jit_launch:8.1f}")
    try:
        runner = compiled[grid]
        direct = host_us(lambda: runner(*launch_args, 1024), 2000)
        print(f"  {'CompiledKernel[grid](...)':<34} {direct:8.1f}")
    except Exception as error:  # noqa: BLE001 - the probe reports what this triton version accepts
        print(f"  CompiledKernel launch failed: {type(error).__name__}: {error}")
    empty = torch.empty(0, device="cuda")
    print(f"  {'torch.Tensor.zero_ (one empty op)':<34} {host_us(lambda: empty.zero_(), 2000):8.1f}")


if __name__ == "__main__":
    main()
