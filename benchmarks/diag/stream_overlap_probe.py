# Probe (one device call): can the no-dropout LoRA layer hide its skinny products behind the frozen GEMMs by running
# them on a second CUDA stream? The big GEMMs (y = x Wᵀ, dx = g W) are compute-bound and leave HBM bandwidth idle;
# the skinny ones (S = x Aᵀ, dS = s·g B, dB = s·gᵀ S, dA = dSᵀ x) are memory-bound and independent of them, so in
# principle they overlap. In practice a cuBLAS Hopper GEMM fills every SM with CTAs that take most of its shared
# memory, so a concurrent kernel may only fill the tail; torch's SM carve-out (cuBLAS told to target fewer SMs)
# leaves some SMs to the side stream at the big GEMM's expense. Timed as CUDA-graph replays (bf16, forward +
# backward as raw ops, no autograd): the frozen pair, today's serial order, the side-stream order, the side-stream
# order with carve-outs, and lowpeft's public op (autograd) for reference.
# Trade-off: raw cuBLAS ops through torch.mm, not lowpeft's kernels: it decides whether the native path should fork
# a stream, before any C++ is written.
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import torch  # noqa: E402

from lowpeft.bench._common import benchmark_stream, time_ms  # noqa: E402
from lowpeft.ops.lora_linear import lora_linear  # noqa: E402

CASES = ((8192, 4096, 4096, 16), (8192, 4096, 11008, 16), (8192, 2048, 5632, 16), (8192, 5632, 2048, 16),
         (8192, 2048, 2048, 16), (8192, 2048, 256, 16), (2048, 1024, 1024, 16))
SCALE = 2.0
CARVEOUTS = (8, 16, 32)


def probe_case(device, T, K, N, r):
    gen = torch.Generator(device=device).manual_seed(0)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, device=device, generator=gen) * scale).to(torch.bfloat16)

    x, g = rand(T, K), rand(T, N)
    W, A, B = rand(N, K, scale=0.02), rand(r, K, scale=0.02), rand(N, r, scale=0.02)
    Bs = B * SCALE
    side = torch.cuda.Stream(device)
    carveout = {"value": 0}

    def big(a, b):
        torch._C._set_sm_carveout_experimental(carveout["value"] or None)
        try:
            return torch.mm(a, b)
        finally:
            torch._C._set_sm_carveout_experimental(None)

    def frozen():
        torch.mm(x, W.t())
        torch.mm(g, W)

    def serial():
        S = torch.mm(x, A.t())
        y = torch.mm(x, W.t())
        y.addmm_(S, Bs.t())
        dS = torch.mm(g, Bs)
        torch.mm(g.t(), S).mul_(SCALE)
        dx = torch.mm(g, W)
        dx.addmm_(dS, A)
        torch.mm(dS.t(), x)

    def overlapped():
        main = torch.cuda.current_stream(device)
        side.wait_stream(main)
        with torch.cuda.stream(side):
            S = torch.mm(x, A.t())
        y = big(x, W.t())
        main.wait_stream(side)
        y.addmm_(S, Bs.t())
        side.wait_stream(main)
        with torch.cuda.stream(side):
            dS = torch.mm(g, Bs)
            torch.mm(g.t(), S).mul_(SCALE)
            torch.mm(dS.t(), x)
        dx = big(g, W)
        main.wait_stream(side)
        dx.addmm_(dS, A)

    def public_op():
        xl, Al, Bl = x.detach().requires_grad_(True), A.detach().requires_grad_(True), B.detach().requires_grad_(True)
        y = lora_linear(xl, W, None, Al, Bl, SCALE)
        y.backward(g)

    row = {"case": f"{T}x{K}->{N} r={r}"}
    row["frozen"] = time_ms(frozen, device, timing="graph")
    row["serial"] = time_ms(serial, device, timing="graph")
    row["overlapped"] = time_ms(overlapped, device, timing="graph")
    for value in CARVEOUTS:
        carveout["value"] = value
        row[f"overlapped_carveout{value}"] = time_ms(overlapped, device, timing="graph")
        row[f"big_gemm_carveout{value}"] = time_ms(lambda: big(x, W.t()), device, timing="graph")
    carveout["value"] = 0
    row["big_gemm"] = time_ms(lambda: big(x, W.t()), device, timing="graph")
    row["lowpeft_op"] = time_ms(public_op, device, timing="graph")
    return row


def main():
    device = torch.device("cuda")
    print("torch", torch.__version__, torch.cuda.get_device_name(device))
    with benchmark_stream(device, ("graph",)):
        for case in CASES:
            row = probe_case(device, *case)
            frozen = row["frozen"]
            print(row["case"], " ".join(f"{k}={v:.4f}({v / frozen:.3f}x)" for k, v in row.items()
                                        if k != "case"), flush=True)


if __name__ == "__main__":
    main()
