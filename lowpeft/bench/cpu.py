# lowpeft.bench.cpu: the compiled cpu backend against eager PyTorch on the CPU, forward + backward, side by
# side in one run: LoRA (2048 x 1024 -> 1024, r = 16, p = 0 and 0.1) and the bottleneck adapter
# (2048 x 1024, M = 64, gelu). The frozen nn.Linear alone is timed too, as the floor LoRA cannot beat.
#
# Trade-off: the providers are timed interleaved (one call of each per round, median over the rounds)
# rather than one after the other, so that a neighbour's load on a shared CPU shifts every provider alike
# and the ratios stay meaningful even when the absolute times wander.
from __future__ import annotations

import argparse
import os
import statistics
import time

import torch
import torch.nn.functional as F

from ._common import environment, write_results

__all__ = ["LORA_CASES", "ADAPTER_CASES", "run", "main"]

# (tokens, in_features, out_features, rank, dropout_p)
LORA_CASES = ((2048, 1024, 1024, 16, 0.0), (2048, 1024, 1024, 16, 0.1))
# (tokens, dim, bottleneck)
ADAPTER_CASES = ((2048, 1024, 64),)
TARGETS = {"lora": 1.2, "adapter": 1.5}
COLUMNS = ["case", "provider", "ms", "speedup_vs_eager", "vs_frozen", "min_ms", "min_speedup_vs_eager", "target"]


def _interleaved_ms(fns: dict, rounds: int, warmup: int = 3) -> tuple[dict, dict]:
    """Median and minimum milliseconds of each callable, timed one call of each per round."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    samples = {name: [] for name in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    medians = {name: 1e3 * statistics.median(values) for name, values in samples.items()}
    minima = {name: 1e3 * min(values) for name, values in samples.items()}
    return medians, minima


def _lora_providers(tokens, in_features, out_features, rank, dropout_p, dtype):
    from lowpeft.ops.lora_linear import lora_linear

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(tokens, in_features, generator=gen, dtype=dtype).requires_grad_()
    weight = torch.randn(out_features, in_features, generator=gen, dtype=dtype) * in_features**-0.5
    bias = torch.randn(out_features, generator=gen, dtype=dtype)
    lora_A = (torch.randn(rank, in_features, generator=gen, dtype=dtype) * in_features**-0.5).requires_grad_()
    lora_B = (torch.randn(out_features, rank, generator=gen, dtype=dtype) * rank**-0.5).requires_grad_()
    grad_out = torch.randn(tokens, out_features, generator=gen, dtype=dtype)
    scaling = 2.0
    params = (x, lora_A, lora_B)

    def frozen():
        F.linear(x, weight, bias).backward(grad_out)

    def eager():  # what PEFT's LoRA layer does: base + B(A(dropout(x))) * scaling
        y = F.linear(x, weight, bias) + F.linear(F.linear(F.dropout(x, dropout_p, True), lora_A), lora_B) * scaling
        y.backward(grad_out)

    def fused():
        lora_linear(x, weight, bias, lora_A, lora_B, scaling, dropout_p, True, backend="cpu").backward(grad_out)

    def clear(fn):
        def step():
            for p in params:
                p.grad = None
            fn()

        return step

    return {"frozen": clear(frozen), "eager": clear(eager), "cpu": clear(fused)}


def _adapter_providers(tokens, dim, bottleneck, dtype):
    from lowpeft.ops.bottleneck_adapter import bottleneck_adapter

    gen = torch.Generator().manual_seed(0)
    h = torch.randn(tokens, dim, generator=gen, dtype=dtype).requires_grad_()
    down_weight = (torch.randn(bottleneck, dim, generator=gen, dtype=dtype) * dim**-0.5).requires_grad_()
    down_bias = (torch.randn(bottleneck, generator=gen, dtype=dtype) * 0.1).requires_grad_()
    up_weight = (torch.randn(dim, bottleneck, generator=gen, dtype=dtype) * bottleneck**-0.5).requires_grad_()
    up_bias = (torch.randn(dim, generator=gen, dtype=dtype) * 0.1).requires_grad_()
    grad_out = torch.randn(tokens, dim, generator=gen, dtype=dtype)
    params = (h, down_weight, down_bias, up_weight, up_bias)
    scale = 1.0

    def eager():
        out = h + scale * F.linear(F.gelu(F.linear(h, down_weight, down_bias)), up_weight, up_bias)
        out.backward(grad_out)

    def fused():
        out = bottleneck_adapter(h, down_weight, down_bias, up_weight, up_bias, "gelu", scale, backend="cpu")
        out.backward(grad_out)

    def clear(fn):
        def step():
            for p in params:
                p.grad = None
            fn()

        return step

    return {"eager": clear(eager), "cpu": clear(fused)}


def run(rounds: int = 30, dtype: torch.dtype = torch.float32) -> list[dict]:
    rows = []
    for tokens, in_features, out_features, rank, dropout_p in LORA_CASES:
        case = f"lora {tokens}x{in_features}->{out_features} r={rank} p={dropout_p}"
        ms, fastest = _interleaved_ms(_lora_providers(tokens, in_features, out_features, rank, dropout_p, dtype), rounds)
        for provider, value in ms.items():
            rows.append({
                "case": case, "provider": provider, "ms": value,
                "speedup_vs_eager": ms["eager"] / value, "vs_frozen": value / ms["frozen"],
                "min_ms": fastest[provider], "min_speedup_vs_eager": fastest["eager"] / fastest[provider],
                "target": f">= {TARGETS['lora']}x vs eager" if provider == "cpu" else None,
            })
    for tokens, dim, bottleneck in ADAPTER_CASES:
        case = f"adapter {tokens}x{dim} M={bottleneck} gelu"
        ms, fastest = _interleaved_ms(_adapter_providers(tokens, dim, bottleneck, dtype), rounds)
        for provider, value in ms.items():
            rows.append({
                "case": case, "provider": provider, "ms": value, "speedup_vs_eager": ms["eager"] / value,
                "min_ms": fastest[provider], "min_speedup_vs_eager": fastest["eager"] / fastest[provider],
                "vs_frozen": None, "target": f">= {TARGETS['adapter']}x vs eager" if provider == "cpu" else None,
            })
    return rows


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="bench_cpu", description="lowpeft cpu backend vs eager PyTorch on the CPU")
    parser.add_argument("--rounds", type=int, default=30, help="timed rounds per case (median taken)")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--out-dir", default=os.path.join("benchmarks", "results"), help="where results go")
    parser.add_argument("--name", default="cpu_native", help="result file stem (JSON + markdown)")
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    load_before = os.getloadavg()[0]
    rows = run(args.rounds)
    env = environment("cpu")
    env["load_average_1m"] = f"{load_before:.2f} before, {os.getloadavg()[0]:.2f} after (other processes share the cores)"
    text = write_results(
        rows, COLUMNS, "lowpeft cpu backend vs eager PyTorch (float32, forward + backward)", env,
        json_path=os.path.join(args.out_dir, args.name + ".json"),
        md_path=os.path.join(args.out_dir, args.name + ".md"),
        notes=f"Interleaved timing, median (and minimum) of {args.rounds} rounds; x / h require grad; eager LoRA is "
        "F.linear(x, W, b) + F.linear(F.linear(F.dropout(x), A), B) * s as PEFT computes it.",
    )
    print(text)
    return 0
