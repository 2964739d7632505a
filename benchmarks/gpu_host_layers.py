# Host time of one LoRA layer call, layer by layer of lowpeft's call stack (one device call): at a size whose GPU
# work is shorter than its launch work (3-D x [1, 16, 64], bf16, r = 16), the wall time per call of
#   nn.Linear, eager LoRA (lowpeft.bench.model.EagerLoRALinear), lowpeft.LoRALinear (the module), both LoRA
#   modules also with dropout 0.1 (lowpeft's Python autograd.Function and Triton launches),
#   lowpeft.ops.lora_linear (the public op, 2-D), torch.ops.lowpeft.native_lora_linear (the C++ autograd op) and
#   torch.ops.lowpeft.native_lora_linear_fwd (the backend op alone),
# forward only (no_grad) and forward + backward, so the Python layers' share and the C++ / ATen share of the
# ~1B model's host-bound step (benchmarks/results/run32_profile_model.log) can be told apart.
#
# Trade-off: the numbers are host time of this machine's CPU; only differences inside one run are meaningful.
import json
import os
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from gpu_probe_components import host_us_per_call  # noqa: E402
from lowpeft import LoRALinear  # noqa: E402
from lowpeft._extension import load  # noqa: E402
from lowpeft.bench.model import EagerLoRALinear  # noqa: E402
from lowpeft.ops.lora_linear import lora_linear  # noqa: E402


def main():
    load()
    dev, dt = "cuda", torch.bfloat16
    torch.manual_seed(0)
    x3 = torch.randn(1, 16, 64, device=dev, dtype=dt, requires_grad=True)
    x2 = x3.detach().reshape(16, 64).requires_grad_(True)
    g3 = torch.randn(1, 16, 64, device=dev, dtype=dt)
    g2 = g3.reshape(16, 64)
    base = torch.nn.Linear(64, 64, bias=False, device=dev, dtype=dt).requires_grad_(False)
    eager = EagerLoRALinear(torch.nn.Linear(64, 64, bias=False, device=dev, dtype=dt), 16, 32.0, 0.0)
    module = LoRALinear.from_linear(torch.nn.Linear(64, 64, bias=False, device=dev, dtype=dt), r=16, alpha=32.0)
    with torch.no_grad():
        module.lora_B.normal_()
    weight, lora_A, lora_B = module.weight, module.lora_A, module.lora_B
    leaves3 = [x3] + [p for p in module.parameters() if p.requires_grad]
    leaves2 = [x2, lora_A, lora_B]

    def op(x):
        return lora_linear(x, weight, None, lora_A, lora_B, 2.0)

    def native(x):
        return torch.ops.lowpeft.native_lora_linear(x, weight, None, lora_A, lora_B, 2.0, 0.0, 0)

    eager_dropout = EagerLoRALinear(torch.nn.Linear(64, 64, bias=False, device=dev, dtype=dt), 16, 32.0, 0.1)
    module_dropout = LoRALinear.from_linear(torch.nn.Linear(64, 64, bias=False, device=dev, dtype=dt), r=16,
                                            alpha=32.0, dropout=0.1)
    def trainable(layer):
        return [p for p in layer.parameters() if p.requires_grad]

    cases = {
        "nn.Linear": (base, x3, g3, [x3]),
        "eager LoRA p=0.1": (eager_dropout, x3, g3, [x3] + trainable(eager_dropout)),
        "LoRALinear p=0.1": (module_dropout, x3, g3, [x3] + trainable(module_dropout)),
        "eager LoRA": (eager, x3, g3, [x3] + trainable(eager)),
        "LoRALinear": (module, x3, g3, leaves3),
        "ops.lora_linear (2-D)": (op, x2, g2, leaves2),
        "native_lora_linear (2-D)": (native, x2, g2, leaves2),
    }
    results = {}
    for name, (fn, x, g, leaves) in cases.items():
        def forward():
            with torch.no_grad():
                fn(x)

        def step():
            torch.autograd.grad(fn(x), leaves, g)

        results[name] = {"forward_us": host_us_per_call(forward, calls=2000),
                         "forward_backward_us": host_us_per_call(step, calls=2000)}
    fwd_only = host_us_per_call(
        lambda: torch.ops.lowpeft.native_lora_linear_fwd(x2.detach(), weight, None, lora_A.detach(), lora_B.detach(),
                                                          2.0, 0.0, 0), calls=2000)
    results["native_lora_linear_fwd (backend op)"] = {"forward_us": fwd_only, "forward_backward_us": None}
    print(f"{'call':40s} {'forward us':>11s} {'fwd+bwd us':>11s}")
    for name, row in results.items():
        fb = row["forward_backward_us"]
        print(f"{name:40s} {row['forward_us']:11.1f} {fb if fb is None else round(fb, 1)!s:>11s}")
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "host_layers.json"), "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    main()
