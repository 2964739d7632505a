# GPU probe (one device call): the time of every building block of the cuBLAS-strategy LoRA step and of a
# cuBLAS-composed bottleneck adapter, each alone, at the main benchmark shapes, plus the per-call host time of
# the layers at a launch-bound shape. It answers "which order of GEMMs, which fold of the low-rank term, and how
# much of a step is Philox / host work" before kernels are rewritten.
#
# Trade-off: a measurement script kept in the repo so NOTES_lora.md / NOTES_adapter.md numbers can be
# re-measured; it times raw torch / launcher calls, not the public op, so each row isolates one piece.
import json
import os
import sys
import time

import torch
import torch.nn.functional as F
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lowpeft import reference  # noqa: E402
from lowpeft.kernels import lora_linear as launch  # noqa: E402
from lowpeft.kernels.lora_expand import lora_expand_add  # noqa: E402
from lowpeft.kernels.lora_grad_weights import lora_grad_A  # noqa: E402
from lowpeft.kernels.lora_shrink import lora_shrink  # noqa: E402

rows = []


def bench(name, fn, **extra):
    ms = do_bench(fn, warmup=25, rep=100, return_mode="median")
    rows.append(dict(name=name, ms=ms, **extra))
    print(f"{name:60s} {ms * 1000:9.1f} us", flush=True)
    return ms


def lora_components(tokens, k, n, r, dt=torch.bfloat16):
    dev = "cuda"
    tag = f"{tokens}x{k}->{n} r{r}"
    x = torch.randn(tokens, k, device=dev, dtype=dt)
    W = torch.randn(n, k, device=dev, dtype=dt) / k ** 0.5
    A = torch.randn(r, k, device=dev, dtype=dt) / k ** 0.5
    B = torch.randn(n, r, device=dev, dtype=dt)
    g = torch.randn(tokens, n, device=dev, dtype=dt)
    S = x @ A.t()
    dS = g @ B
    y = torch.empty(tokens, n, device=dev, dtype=dt)
    dx = torch.empty(tokens, k, device=dev, dtype=dt)
    bench(f"{tag} mm x W^T (frozen fwd)", lambda: torch.mm(x, W.t(), out=y))
    bench(f"{tag} mm g W (frozen dx)", lambda: torch.mm(g, W, out=dx))
    bench(f"{tag} S = mm x A^T", lambda: torch.mm(x, A.t()))
    bench(f"{tag} y.addmm_(S, B^T) (skinny fold)", lambda: y.addmm_(S, B.t(), alpha=2.0))
    bench(f"{tag} y = mm(S, B^T)", lambda: torch.mm(S, B.t(), out=y))
    bench(f"{tag} y.addmm_(x, W^T) (beta=1 big)", lambda: y.addmm_(x, W.t()))
    bench(f"{tag} fwd current: S; y=xW^T; y+=SB^T",
          lambda: torch.mm(x, W.t(), out=y).addmm_(torch.mm(x, A.t()), B.t(), alpha=2.0))
    bench(f"{tag} fwd order b: S; y=SB^T; y+=xW^T",
          lambda: torch.mm(torch.mm(x, A.t()), B.t(), out=y).mul_(2.0).addmm_(x, W.t()))
    bench(f"{tag} fwd order c: S; y=addmm(SB^T*s, x, W^T) out",
          lambda: torch.addmm(torch.mm(torch.mm(x, A.t()), B.t()), x, W.t(), beta=2.0))
    bench(f"{tag} dS = mm g B", lambda: torch.mm(g, B))
    bench(f"{tag} dx.addmm_(dS, A) (skinny fold)", lambda: dx.addmm_(dS, A))
    bench(f"{tag} dx = mm(dS, A); dx += gW", lambda: torch.mm(dS, A, out=dx).addmm_(g, W))
    bench(f"{tag} dA = mm dS^T x", lambda: torch.mm(dS.t(), x))
    bench(f"{tag} dB = mm g^T S", lambda: torch.mm(g.t(), S))
    Sf = S.float()
    dSf = dS.float()
    kw = dict(rank_padded=launch.padded_rank(r), dot_precision="ieee")
    thr, inv = reference.dropout_threshold(0.1), 1 / 0.9
    for has_dropout in (False, True):
        d = dict(seed=123, threshold=thr if has_dropout else 0, inv_keep=inv if has_dropout else 1.0,
                 has_dropout=has_dropout)
        bench(f"{tag} triton shrink dropout={has_dropout}",
              lambda: lora_shrink(x, A.t(), Sf, scale=1.0, dot_upcast=False, **d, **kw))
        bench(f"{tag} triton expand_add dropout={has_dropout}",
              lambda: lora_expand_add(dSf, A, dx, **d, **kw))
        bench(f"{tag} triton grad_A dropout={has_dropout}",
              lambda: lora_grad_A(x, dSf, dot_upcast=False, **d, **kw))
    for p in (0.0, 0.1):
        out = launch.lora_linear_fwd(x, W, None, A, B, 2.0, p, 7)
        bench(f"{tag} launcher fwd p={p}", lambda: launch.lora_linear_fwd(x, W, None, A, B, 2.0, p, 7))
        bench(f"{tag} launcher bwd p={p}",
              lambda: launch.lora_linear_bwd(g, x, W, A, B, out[1], 2.0, p, 7, (True, True, True, False, False)))
    lin = torch.nn.Linear(k, n, bias=False, device=dev, dtype=dt).requires_grad_(False)
    xg = x.clone().requires_grad_(True)
    bench(f"{tag} frozen nn.Linear fwd+bwd", lambda: lin(xg).backward(g))


def adapter_components(tokens, d, m, dt=torch.bfloat16):
    dev = "cuda"
    tag = f"adapter {tokens}x{d} M{m}"
    h = torch.randn(tokens, d, device=dev, dtype=dt)
    g = torch.randn(tokens, d, device=dev, dtype=dt)
    Wd = torch.randn(m, d, device=dev, dtype=dt) / d ** 0.5
    bd = torch.zeros(m, device=dev, dtype=dt)
    Wu = torch.randn(d, m, device=dev, dtype=dt) / m ** 0.5
    floor = bench(f"{tag} floor: copy h + copy g", lambda: (h.clone(), g.clone()))
    z = torch.addmm(bd, h, Wd.t())
    a = F.gelu(z)
    bench(f"{tag} z = addmm(bd, h, Wd^T)", lambda: torch.addmm(bd, h, Wd.t()))
    bench(f"{tag} out = addmm(h, a, Wu^T)", lambda: torch.addmm(h, a, Wu.t(), alpha=0.5))
    bench(f"{tag} ga = mm(g, Wu)", lambda: torch.mm(g, Wu))
    bench(f"{tag} dh = addmm(g, dz, Wd)", lambda: torch.addmm(g, z, Wd))
    bench(f"{tag} dWu = mm(g^T, a)", lambda: torch.mm(g.t(), a))
    bench(f"{tag} dWd = mm(dz^T, h)", lambda: torch.mm(z.t(), h))
    bench(f"{tag} dbu = g.sum(0)", lambda: g.sum(0))
    ones = torch.ones(tokens, 1, device=dev, dtype=dt)
    a1 = torch.cat([a, ones, torch.zeros(tokens, 7, device=dev, dtype=dt)], 1)
    bench(f"{tag} [dWu|dbu] = mm(g^T, [a,1,0])", lambda: torch.mm(g.t(), a1))

    def composed():
        z = torch.addmm(bd, h, Wd.t())
        a = F.gelu(z)
        out = torch.addmm(h, a, Wu.t(), alpha=0.5)
        ga = torch.mm(g, Wu).mul_(0.5)
        dz = torch.ops.aten.gelu_backward(ga, z)
        dh = torch.addmm(g, dz, Wd)
        dWu = torch.mm(g.t(), a)
        dbu = g.sum(0)
        dWd = torch.mm(dz.t(), h)
        dbd = dz.sum(0)
        return out, dh, dWu, dbu, dWd, dbd

    ms = bench(f"{tag} cuBLAS-composed fwd+bwd", composed)
    rows[-1]["ratio_to_floor"] = ms / floor
    print(f"   composed / floor = {ms / floor:.2f}")


def host_us_per_call(fn, calls=500, warmup=50):
    """Wall time per fn() call in microseconds over `calls` back-to-back calls after `warmup` ones, synchronised
    at both ends: the host cost of a call whenever its GPU work is shorter than its launch work."""
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    torch.cuda.synchronize()
    return (time.perf_counter() - start) / calls * 1e6


def kernel_table(step, steps):
    """CUDA kernels of `steps` back-to-back step() calls under torch.profiler: [(µs per step, calls per step,
    kernel name)], the most expensive first."""
    from torch.autograd import DeviceType

    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            step()
        torch.cuda.synchronize()
    per_kernel = {}
    for event in prof.events():
        if event.device_type == DeviceType.CUDA:
            count, us = per_kernel.get(event.name, (0, 0.0))
            per_kernel[event.name] = (count + 1, us + event.time_range.elapsed_us())
    return sorted(((us / steps, count / steps, kernel) for kernel, (count, us) in per_kernel.items()), reverse=True)


def host_times():
    """Per-call wall time of a forward + backward at a launch-bound size (16 x 64 -> 64): host work only."""
    from lowpeft import LoRALinear

    dev, dt = "cuda", torch.bfloat16
    base = torch.nn.Linear(64, 64, device=dev, dtype=dt)
    x = torch.randn(16, 64, device=dev, dtype=dt, requires_grad=True)
    g = torch.randn(16, 64, device=dev, dtype=dt)
    A = torch.randn(16, 64, device=dev, dtype=dt, requires_grad=True)
    B = torch.randn(64, 16, device=dev, dtype=dt, requires_grad=True)
    base.requires_grad_(False)

    def eager():
        y = base(x) + (x @ A.t()) @ B.t() * 2.0
        y.backward(g)

    def frozen():
        base(x).backward(g)

    layers = {}
    for backend in ("triton", "cuda"):
        try:
            layers[backend] = LoRALinear.from_linear(base, r=16, alpha=32, backend=backend)
        except Exception as exc:  # noqa: BLE001 — report, keep probing
            print("host probe: no", backend, exc)
    cases = {"frozen nn.Linear": frozen, "eager LoRA": eager}
    for name, layer in layers.items():
        cases[f"lowpeft {name}"] = (lambda layer: lambda: layer(x).backward(g))(layer)
    for name, fn in cases.items():
        us = host_us_per_call(fn)
        rows.append(dict(name=f"host fwd+bwd {name}", us=us))
        print(f"host fwd+bwd per call {name:30s} {us:8.1f} us", flush=True)


if __name__ == "__main__":
    torch.manual_seed(0)
    host_times()
    if "--host-only" in sys.argv:
        sys.exit(0)
    lora_components(8192, 4096, 4096, 16)
    adapter_components(8192, 4096, 64)
    adapter_components(4096, 1024, 64)
    out = os.environ.get("OUT", "/tmp")
    with open(os.path.join(out, "probe_components.json"), "w") as fh:
        json.dump(dict(gpu=torch.cuda.get_device_name(), torch=torch.__version__, rows=rows), fh, indent=1)
