# H100 timings of the compiled cuda backend (issue 5's acceptance), written to $OUT/cuda_native.{json,md}:
#   LoRA forward + backward, bf16, 8192 x 4096 -> 4096, r = 16 (p = 0 and 0.1), against the frozen nn.Linear;
#   adapter forward + backward, bf16, 8192 x 4096, M = 64, against the copy floor (one copy of h + one of g);
#   eager PyTorch for context, the cuda ops' forward / backward alone, and a big-shape accuracy check.
# Trade-off: one script, every provider timed in the same process with do_bench medians side by side, so the
# ratios are taken on one machine state (the device is lent for minutes at a time).
import argparse
import os
import sys

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from lowpeft import _extension  # noqa: E402
from lowpeft.bench._common import environment, peak_memory_mib, time_ms, write_results  # noqa: E402
from lowpeft.ops.bottleneck_adapter import bottleneck_adapter  # noqa: E402
from lowpeft.ops.lora_linear import lora_linear  # noqa: E402

COLUMNS = ["case", "provider", "ms", "ratio", "ratio_to", "target", "peak_extra_mib", "rel_err"]


def _rel_err(ours, ref):
    return ((ours.float() - ref.float()).norm() / ref.float().norm()).item()


def lora_rows(tokens, k, n, rank, p, rows):
    dev, dt = "cuda", torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(tokens, k, device=dev, dtype=dt, generator=gen).requires_grad_()
    w = torch.randn(n, k, device=dev, dtype=dt, generator=gen) * k**-0.5
    b = torch.randn(n, device=dev, dtype=dt, generator=gen)
    a = (torch.randn(rank, k, device=dev, dtype=dt, generator=gen) * k**-0.5).requires_grad_()
    bb = (torch.randn(n, rank, device=dev, dtype=dt, generator=gen) * rank**-0.5).requires_grad_()
    g = torch.randn(tokens, n, device=dev, dtype=dt, generator=gen)
    seed = torch.tensor(1234)
    leaves = (x, a, bb)

    def clear():
        for t in leaves:
            t.grad = None

    def frozen():
        clear()
        F.linear(x, w, b).backward(g)

    def eager():
        clear()
        y = F.linear(x, w, b) + F.linear(F.linear(F.dropout(x, p, True), a), bb) * 2.0
        y.backward(g)

    def fused(backend):
        def step():
            clear()
            lora_linear(x, w, b, a, bb, 2.0, p, True, backend=backend, seed=seed).backward(g)

        return step

    with torch.no_grad():
        y_fwd, shrink = torch.ops.lowpeft.native_lora_linear_fwd(x, w, b, a, bb, 2.0, p, 1234)
    case = f"lora {tokens}x{k}->{n} r={rank} p={p} bf16 fwd+bwd"
    providers = {"frozen": frozen, "cuda": fused("cuda"), "eager": eager, "torch": fused("torch")}
    times = {name: time_ms(fn, dev, warmup_ms=100, rep_ms=500) for name, fn in providers.items()}
    # accuracy at this shape: cuda backend vs the torch backend's formula evaluated in float32
    clear()
    y = lora_linear(x, w, b, a, bb, 2.0, p, True, backend="cuda", seed=seed)
    y.backward(g)
    ours = [y.detach(), x.grad, a.grad, bb.grad]
    clear()
    leaves32 = [t.detach().float().requires_grad_() for t in (x, a, bb)]
    y32 = lora_linear(leaves32[0], w.float(), b.float(), leaves32[1], leaves32[2], 2.0, p, True, backend="torch", seed=seed)
    y32.backward(g.float())
    refs = [y32.detach()] + [t.grad for t in leaves32]
    err = max(_rel_err(o, r) for o, r in zip(ours, refs))
    for name, ms in times.items():
        rows.append({
            "case": case, "provider": name, "ms": ms, "ratio": ms / times["frozen"], "ratio_to": "frozen Linear",
            "target": "<= 1.15" if name == "cuda" and p == 0.0 else None,
            "peak_extra_mib": peak_memory_mib(providers[name], dev),
            "rel_err": err if name == "cuda" else None,
        })
    # the native ops alone (no autograd), to split the time
    fwd_ms = time_ms(lambda: torch.ops.lowpeft.native_lora_linear_fwd(x, w, b, a, bb, 2.0, p, 1234), dev)
    bwd_ms = time_ms(lambda: torch.ops.lowpeft.native_lora_linear_bwd(
        g, x, w, a, bb, shrink, 2.0, p, 1234, [True, True, True, False, False]), dev)
    gemm_fwd = time_ms(lambda: torch.addmm(b, x, w.t()), dev)
    gemm_bwd = time_ms(lambda: g @ w, dev)
    for name, ms, ref in (("native fwd op", fwd_ms, gemm_fwd), ("native bwd op", bwd_ms, gemm_bwd)):
        rows.append({"case": case, "provider": name, "ms": ms, "ratio": ms / ref, "ratio_to": "its cuBLAS GEMM alone"})
    rows.append({"case": case, "provider": "cuBLAS x Wᵀ + b", "ms": gemm_fwd})
    rows.append({"case": case, "provider": "cuBLAS g W", "ms": gemm_bwd})
    del y_fwd


def adapter_rows(tokens, dim, bottleneck, rows):
    dev, dt = "cuda", torch.bfloat16
    gen = torch.Generator(device=dev).manual_seed(0)
    h = torch.randn(tokens, dim, device=dev, dtype=dt, generator=gen).requires_grad_()
    dw = (torch.randn(bottleneck, dim, device=dev, dtype=dt, generator=gen) * dim**-0.5).requires_grad_()
    db = (torch.randn(bottleneck, device=dev, dtype=dt, generator=gen) * 0.1).requires_grad_()
    uw = (torch.randn(dim, bottleneck, device=dev, dtype=dt, generator=gen) * bottleneck**-0.5).requires_grad_()
    ub = (torch.randn(dim, device=dev, dtype=dt, generator=gen) * 0.1).requires_grad_()
    g = torch.randn(tokens, dim, device=dev, dtype=dt, generator=gen)
    leaves = (h, dw, db, uw, ub)
    buffer = torch.empty_like(g)

    def clear():
        for t in leaves:
            t.grad = None

    def copy_floor():
        buffer.copy_(h.detach())
        buffer.copy_(g)

    def eager():
        clear()
        (h + F.linear(F.gelu(F.linear(h, dw, db)), uw, ub)).backward(g)

    def fused(backend):
        def step():
            clear()
            bottleneck_adapter(h, dw, db, uw, ub, "gelu", 1.0, backend=backend).backward(g)

        return step

    case = f"adapter {tokens}x{dim} M={bottleneck} gelu bf16 fwd+bwd"
    providers = {"copy floor (h + g)": copy_floor, "cuda": fused("cuda"), "eager": eager, "torch": fused("torch")}
    times = {name: time_ms(fn, dev, warmup_ms=100, rep_ms=500) for name, fn in providers.items()}
    clear()
    out = bottleneck_adapter(h, dw, db, uw, ub, "gelu", 1.0, backend="cuda")
    out.backward(g)
    ours = [out.detach()] + [t.grad for t in leaves]
    clear()
    leaves32 = [t.detach().float().requires_grad_() for t in leaves]
    out32 = bottleneck_adapter(*leaves32, "gelu", 1.0, backend="torch")
    out32.backward(g.float())
    err = max(_rel_err(o, r) for o, r in zip(ours, [out32.detach()] + [t.grad for t in leaves32]))
    floor = times["copy floor (h + g)"]
    for name, ms in times.items():
        rows.append({
            "case": case, "provider": name, "ms": ms, "ratio": ms / floor, "ratio_to": "copy floor",
            "target": "<= 3.0" if name == "cuda" else None, "rel_err": err if name == "cuda" else None,
        })


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    args = parser.parse_args()
    _extension.load()  # registers the lowpeft::native_* ops timed directly below
    rows = []
    lora_rows(8192, 4096, 4096, 16, 0.0, rows)
    lora_rows(8192, 4096, 4096, 16, 0.1, rows)
    adapter_rows(8192, 4096, 64, rows)
    adapter_rows(4096, 1024, 64, rows)
    text = write_results(
        rows, COLUMNS, "lowpeft cuda backend on the GPU (do_bench medians)", environment("cuda"),
        json_path=os.path.join(args.out, "cuda_native.json"), md_path=os.path.join(args.out, "cuda_native.md"),
        notes="rel_err: max over outputs of ‖cuda bf16 − torch-backend float32‖ / ‖float32‖ at that shape.",
    )
    print(text)


if __name__ == "__main__":
    main()
