# Probe (one device call): could the no-dropout LoRA layer fold its low-rank term into the weight operand?
# y = x (W + s·B A)ᵀ and dx = g (W + s·B A) are each one cuBLAS GEMM on a transient merged weight W_eff (built by
# one addmm, N × K read and written; rebuilt in the backward rather than kept, so no per-layer weight copy lives
# across the step), leaving three skinny passes: S = x Aᵀ (saved, for dB), dS = g B with dB = s·gᵀ S, and
# dA = s·dSᵀ x. Against today's path (cuBLAS GEMM + a beta = 1 fold per direction, ~0.26 ms over the frozen
# layer at 8192 x 4096 -> 4096, r = 16) the forward and dx lose their folds but pay 2 × N·K of weight traffic.
# Timed side by side as CUDA-graph replays (bf16, forward + backward, raw ops, no autograd for the probe's
# strategies): the frozen layer's two GEMMs, lowpeft's public op (autograd, default backend), eager LoRA
# (autograd) and the merged strategy; with the merged strategy's relative error against the float64 oracle next to
# eager bf16's (the merged weight is rounded to bf16, which eager never does), for y as a whole and for the LoRA term
# in it (y - x Wᵀ against s·x Aᵀ Bᵀ, both in float64): how much of the adapter's signal survives.
# Trade-off: a standalone probe with its own raw-op strategy, not wired into lowpeft: it decides whether the
# cuda backend's LoRA should be rebuilt around a merged weight. Outcome (runs 60-61, benchmarks/NOTES_lora.md,
# session 6): 9 % faster at the ~1B model's shapes, but in training the bf16 merged weight rounds away the small
# early LoRA term (loss 9.5e-2 off PEFT's against a 4.8e-3 noise floor), which this probe's large random B hides.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from lowpeft.bench._common import benchmark_stream, time_ms  # noqa: E402
from lowpeft.ops.lora_linear import lora_linear  # noqa: E402

CASES = ((8192, 4096, 4096, 16), (8192, 4096, 11008, 16), (8192, 4096, 4096, 64), (4096, 2048, 2048, 16),
         (2048, 1024, 1024, 16), (8192, 2048, 5632, 16), (8192, 5632, 2048, 16))
SCALE = 2.0


def relative_error(ours, reference):
    return float((ours.double() - reference).norm() / reference.norm())


def probe_case(device, T, K, N, r):
    """One case's row: times relative to the frozen layer, then the errors against the float64 oracle."""
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=gen) * scale).to(torch.bfloat16)

    x, W, g = rand(T, K), rand(N, K, scale=K ** -0.5), rand(T, N)
    A, B = rand(r, K, scale=K ** -0.5), rand(N, r, scale=0.02)
    xg, Ag, Bg = (t.clone().requires_grad_(True) for t in (x, A, B))

    def frozen():
        x @ W.t()
        g @ W

    def lowpeft():
        y = lora_linear(xg, W, None, Ag, Bg, SCALE)
        torch.autograd.grad(y, (xg, Ag, Bg), g)

    def eager():
        y = xg @ W.t() + SCALE * ((xg @ Ag.t()) @ Bg.t())
        torch.autograd.grad(y, (xg, Ag, Bg), g)

    def merged():
        merged_weight = torch.addmm(W, B, A, alpha=SCALE)
        S = x @ A.t()
        y = x @ merged_weight.t()
        del merged_weight
        merged_weight = torch.addmm(W, B, A, alpha=SCALE)
        dx = g @ merged_weight
        dS = g @ B
        dB = SCALE * (g.t() @ S)
        dA = SCALE * (dS.t() @ x)
        return y, dx, dA, dB

    times = {name: time_ms(fn, device, timing="graph") for name, fn in
             (("frozen", frozen), ("lowpeft", lowpeft), ("eager", eager), ("merged", merged))}
    y, dx, _, _ = merged()
    x64, W64, A64, B64, g64 = (t.double() for t in (x, W, A, B, g))
    base64 = x64 @ W64.t()
    delta64 = SCALE * (x64 @ A64.t()) @ B64.t()
    y64 = base64 + delta64
    dx64 = g64 @ W64 + SCALE * (g64 @ B64) @ A64
    y_eager = x @ W.t() + SCALE * ((x @ A.t()) @ B.t())
    dx_eager = g @ W + (SCALE * (g @ B)) @ A
    frozen_ms = times["frozen"]
    return (f"{T}x{K}->{N}, {r} | {frozen_ms:.3f} | {times['lowpeft'] / frozen_ms:.3f} | "
            f"{times['eager'] / frozen_ms:.3f} | {times['merged'] / frozen_ms:.3f} | "
            f"{relative_error(y, y64):.2e} | {relative_error(y_eager, y64):.2e} | "
            f"{relative_error(dx, dx64):.2e} | {relative_error(dx_eager, dx64):.2e} | "
            f"{relative_error(y.double() - base64, delta64):.2e} | "
            f"{relative_error(y_eager.double() - base64, delta64):.2e}")


def main():
    device = torch.device("cuda")
    print("T x K -> N, r | frozen ms | lowpeft x | eager x | merged x | merged y err | eager y err | merged dx err |"
          " eager dx err | merged LoRA-term err | eager LoRA-term err")
    for T, K, N, r in CASES:
        print(probe_case(device, T, K, N, r), flush=True)
        torch.cuda.empty_cache()


if __name__ == "__main__":
    with benchmark_stream("cuda", ("graph",)):
        main()
