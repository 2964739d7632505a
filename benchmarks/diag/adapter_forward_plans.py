# Probe (GPU only): the adapter's forward as one row-block kernel against `down` then `up`, and the whole step with
# the backward's split-T partials summed inside the column kernel, at narrow and wide D (CUDA-graph timing, bf16).
# Before timing, each shape's gradients on the triton backend are checked against the torch backend's (a
# max-abs-error ratio to torch's own bf16 rounding, the suite's rule in spirit) so a wrong answer cannot be timed.
# Trade-off: it patches kernels.forward_in_one_kernel in place to force each plan, as adapter_tuning.py patches
# the column plan, so the library keeps one code path.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402
from triton.testing import do_bench_cudagraph  # noqa: E402

from lowpeft.bench.adapter import make_inputs  # noqa: E402
from lowpeft.kernels import bottleneck_adapter as kernels  # noqa: E402
from lowpeft.ops.bottleneck_adapter import bottleneck_adapter  # noqa: E402

SHAPES = ((4096, 1024, 16), (4096, 1024, 64), (4096, 768, 64), (8192, 1024, 64), (16384, 1024, 64),
          (8192, 1536, 64), (8192, 2048, 64), (8192, 4096, 64), (4096, 1024, 32))
NAMES = ("h", "down_weight", "down_bias", "up_weight", "up_bias")


def grads(inputs, backend):
    leaves = [inputs[k] for k in NAMES]
    out = bottleneck_adapter(*leaves, backend=backend)
    return [out] + list(torch.autograd.grad(out, leaves, inputs["grad_out"]))


def check(inputs):
    """max |triton - fp64| / max(|torch_bf16 - fp64|, tiny) over out and the five gradients."""
    ours, same = grads(inputs, "triton"), grads(inputs, "torch")
    wide = {k: (v.detach().double().requires_grad_(True) if k != "grad_out" else v.double())
            for k, v in inputs.items()}
    exact = grads(wide, "torch")
    worst = 0.0
    for mine, theirs, ref in zip(ours, same, exact):
        err = (mine.double() - ref).abs().max().item()
        base = (theirs.double() - ref).abs().max().item()
        worst = max(worst, err / max(base, 1e-6))
    return worst


def main():
    torch.manual_seed(0)
    original = kernels.forward_in_one_kernel
    print(f"{'T x D x M':>18} {'default':>8} | {'fwd one':>8} {'fwd two':>8} | {'step one':>8} {'step two':>8} | "
          f"{'err one':>7} {'err two':>7}")
    for tokens, dim, bottleneck in SHAPES:
        inputs = make_inputs(tokens, dim, bottleneck, torch.bfloat16, "cuda")
        args = [inputs[k].detach() for k in NAMES]
        row = {}
        for label, one in (("one", True), ("two", False)):
            kernels.forward_in_one_kernel = lambda *a, one=one: one
            row[f"err {label}"] = check(inputs)
            row[f"fwd {label}"] = do_bench_cudagraph(lambda: kernels.bottleneck_adapter_fwd(*args, "gelu", 1.0))
            leaves = [inputs[k] for k in NAMES]
            row[f"step {label}"] = do_bench_cudagraph(
                lambda: torch.autograd.grad(bottleneck_adapter(*leaves, backend="triton"), leaves,
                                            inputs["grad_out"]))
        kernels.forward_in_one_kernel = original
        default = "one" if original(dim, max(16, 1 << (bottleneck - 1).bit_length())) else "two"
        print(f"{tokens:>6} x {dim:>5} x {bottleneck:>3} {default:>8} | {row['fwd one'] * 1e3:7.1f}u "
              f"{row['fwd two'] * 1e3:7.1f}u | {row['step one'] * 1e3:7.1f}u {row['step two'] * 1e3:7.1f}u | "
              f"{row['err one']:7.2f} {row['err two']:7.2f}", flush=True)


if __name__ == "__main__":
    main()
