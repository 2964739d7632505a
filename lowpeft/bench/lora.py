# `lowpeft bench lora`: one LoRA linear layer (y = x Wᵀ + s · dropout(x) Aᵀ Bᵀ) against the frozen nn.Linear alone,
# PEFT, a hand-written eager LoRA and torch.compile of it; forward, backward and forward + backward as do_bench
# medians, TFLOP/s, the ratio to the frozen layer measured in the same run, and the step's peak extra memory.
#
# Each provider is a factory in PROVIDERS taking the case's tensors and returning a callable (x -> y) plus the
# leaves whose gradients the step computes, so a new backend is one line (e.g. "cuda": _op_provider("cuda")).
# Trade-off: steps call torch.autograd.grad rather than backward(), so no provider pays for accumulating into
# .grad; the "backward" mode replays one recorded graph with retain_graph=True. The frozen provider computes only
# dx (its weight is frozen); the LoRA providers compute dx, dA and dB. Every provider's outputs are compared with
# the eager LoRA's before timing (p = 0), and a provider that fails is recorded with its error, not skipped.
# --timing graph also times CUDA-graph replays of each step (no host time; see _common); the "backward" mode,
# which replays a retained autograd graph recorded outside any capture, is timed with launches only.
# A progress bar over cases x providers goes to stderr (--no-progress turns it off).
from __future__ import annotations

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn

from ._common import (ProgressBar, benchmark_stream, check_output_paths, device_argument, environment, peak_memory_mib,
                      provider_list, time_ms, timing_list, write_results)

__all__ = ["main", "PROVIDERS", "DEFAULT_CASES", "TARGETS"]

# (tokens, in_features, out_features, r, p): the DESIGN §5 table plus the rank / dropout sweep at the main shape.
DEFAULT_CASES = (
    [(8192, 4096, 4096, r, p) for p in (0.0, 0.1) for r in (8, 16, 64, 128)]
    + [(8192, 4096, 11008, 16, 0.0), (4096, 2048, 2048, 16, 0.0), (2048, 1024, 1024, 16, 0.0)]
)
# Acceptance (issue 3): forward + backward ratio to the frozen nn.Linear.
TARGETS = {
    (8192, 4096, 4096, 16, 0.0): 1.10,
    (8192, 4096, 4096, 64, 0.0): 1.12,
    (8192, 4096, 4096, 16, 0.1): 1.12,
    (8192, 4096, 11008, 16, 0.0): 1.08,
    (4096, 2048, 2048, 16, 0.0): 1.5,
    (2048, 1024, 1024, 16, 0.0): 1.5,
}
MODES = ("forward", "backward", "forward+backward")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def eager_lora(x, weight, lora_A, lora_B, scaling, dropout_p):
    """LoRA as a user writes it by hand: the frozen product plus the low-rank path on the dropped-out input."""
    return x @ weight.t() + (F.dropout(x, dropout_p, training=True) @ lora_A.t() @ lora_B.t()) * scaling


def _frozen_provider(case):
    linear = nn.Linear(case["in"], case["out"], bias=False, device=case["device"], dtype=case["dtype"])
    linear.weight.data.copy_(case["weight"])
    linear.weight.requires_grad_(False)
    return linear, []


def _eager_provider(case):
    def fn(x):
        return eager_lora(x, case["weight"], case["lora_A"], case["lora_B"], case["scaling"], case["p"])

    return fn, [case["lora_A"], case["lora_B"]]


def _compile_provider(case):
    compiled = torch.compile(eager_lora, dynamic=False)

    def fn(x):
        return compiled(x, case["weight"], case["lora_A"], case["lora_B"], case["scaling"], case["p"])

    def fn_for_replayed_backward(x):
        # AOTAutograd's donated buffers forbid retain_graph; the "backward" mode replays one graph, so it
        # records that graph from a compilation without them (the other modes use the default one).
        from torch._functorch import config as functorch_config

        def eager_lora_without_donation(*args):  # its own code object: not dynamo's cached eager_lora
            return eager_lora(*args)

        with functorch_config.patch(donated_buffer=False):
            return torch.compile(eager_lora_without_donation, dynamic=False)(
                x, case["weight"], case["lora_A"], case["lora_B"], case["scaling"], case["p"])

    fn.for_replayed_backward = fn_for_replayed_backward
    return fn, [case["lora_A"], case["lora_B"]]


def _op_provider(backend):
    def make(case):
        from ..ops.lora_linear import draw_dropout_seed, lora_linear

        def fn(x):
            # The seed drawn here is what lora_linear draws itself when given none; passing it keeps the call
            # capturable in a CUDA graph (where the op refuses to draw one: replays would reuse its mask).
            seed = draw_dropout_seed() if case["p"] > 0 else None
            return lora_linear(x, case["weight"], None, case["lora_A"], case["lora_B"], case["scaling"], case["p"],
                               training=True, backend=backend, seed=seed)

        return fn, [case["lora_A"], case["lora_B"]]

    return make


def _int8_provider(case):
    """lowpeft's LoRA over the case's weight quantized to int8 (lowpeft.quantize_base's format); its error against
    eager includes the base's quantization error."""
    from ..ops.dequantize_int8 import quantize_int8
    from ..ops.int8_lora_linear import int8_lora_linear
    from ..ops.lora_linear import draw_dropout_seed

    qweight, scale = quantize_int8(case["weight"])

    def fn(x):
        seed = draw_dropout_seed() if case["p"] > 0 else None
        return int8_lora_linear(x, qweight, scale, None, case["lora_A"], case["lora_B"], case["scaling"], case["p"],
                                training=True, seed=seed)

    return fn, [case["lora_A"], case["lora_B"]]


def _peft_provider(case):
    import peft

    class OneLinear(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(case["in"], case["out"], bias=False, device=case["device"], dtype=case["dtype"])

    base = OneLinear()
    base.proj.weight.data.copy_(case["weight"])
    config = peft.LoraConfig(r=case["r"], lora_alpha=case["alpha"], lora_dropout=case["p"], target_modules=["proj"])
    model = peft.get_peft_model(base, config)
    model.train()
    layer = model.base_model.model.proj
    layer.lora_A["default"].weight.data.copy_(case["lora_A"])
    layer.lora_B["default"].weight.data.copy_(case["lora_B"])
    leaves = [layer.lora_A["default"].weight, layer.lora_B["default"].weight]
    return (lambda x: model.base_model.model.proj(x)), leaves


PROVIDERS = {
    "frozen": _frozen_provider,
    "lowpeft": _op_provider("auto"),
    "lowpeft_cuda": _op_provider("cuda"),
    "lowpeft_int8": _int8_provider,
    "peft": _peft_provider,
    "eager": _eager_provider,
    "compile": _compile_provider,
}


def _make_case(tokens, width, out, rank, p, dtype, device):
    generator = torch.Generator(device="cpu").manual_seed(tokens * 31 + width * 7 + out + rank)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=generator) * scale).to(device=device, dtype=dtype)

    alpha = 2 * rank
    return {
        "tokens": tokens, "in": width, "out": out, "r": rank, "p": p, "alpha": alpha, "scaling": alpha / rank,
        "dtype": dtype, "device": device,
        "x": randn(tokens, width).requires_grad_(True),
        "grad_out": randn(tokens, out),
        "weight": randn(out, width, scale=width**-0.5),
        "lora_A": randn(rank, width, scale=width**-0.5).requires_grad_(True),
        "lora_B": randn(out, rank, scale=rank**-0.5).requires_grad_(True),
    }


def _flops(case, mode, lora):
    """FLOPs of the step's GEMMs: 2·T·K·N per frozen product (the forward, and dx in the backward); the LoRA path
    2·T·r·(K+N) forward and 4·T·r·(K+N) backward (dx, dA, dB). bench adapter counts its 12·T·D·M the same way."""
    t, k, n, r = case["tokens"], case["in"], case["out"], case["r"]
    forward = 2 * t * k * n + (2 * t * r * (k + n) if lora else 0)
    backward = 2 * t * k * n + (4 * t * r * (k + n) if lora else 0)
    return {"forward": forward, "backward": backward, "forward+backward": forward + backward}[mode]


def _steps(fn, leaves, case):
    x, grad_out = case["x"], case["grad_out"]
    inputs = [x] + leaves

    def forward():
        return fn(x)

    def forward_backward():
        torch.autograd.grad(fn(x), inputs, grad_out)

    recorded = {}

    def backward():
        if "y" not in recorded:
            recorded["y"] = getattr(fn, "for_replayed_backward", fn)(x)
        torch.autograd.grad(recorded["y"], inputs, grad_out, retain_graph=True)

    return {"forward": forward, "backward": backward, "forward+backward": forward_backward}


def _max_relative_error(fn, leaves, case, reference_outputs):
    if case["p"] != 0.0:
        return None
    y = fn(case["x"])
    grads = torch.autograd.grad(y, [case["x"]] + leaves, case["grad_out"])
    ours = [y] + list(grads)
    worst = 0.0
    for mine, ref in zip(ours, reference_outputs):
        ref = ref.float()
        worst = max(worst, ((mine.float() - ref).abs().max() / ref.abs().max().clamp_min(1e-30)).item())
    return worst


def run(cases, providers, modes, dtype, device, progress=print, case_done=None, timings=("launch",),
        show_progress=False):
    """Benchmark every case under each timing; case_done(rows) is called after each case (so partial results
    can be saved); show_progress draws a bar over cases x providers on stderr."""
    with benchmark_stream(device, timings), ProgressBar(len(cases) * len(providers), "bench lora",
                                                        enabled=show_progress) as bar:
        return _run_cases(cases, providers, modes, dtype, device, progress, case_done, timings, bar)


def _run_cases(cases, providers, modes, dtype, device, progress, case_done, timings, bar):
    rows = []
    for tokens, width, out, rank, p in cases:
        case = _make_case(tokens, width, out, rank, p, dtype, device)
        label = f"{tokens}x{width}->{out}"
        eager_fn, eager_leaves = _eager_provider(case)
        y_ref = eager_fn(case["x"])
        reference_outputs = [y_ref.detach()] + list(
            torch.autograd.grad(y_ref, [case["x"]] + eager_leaves, case["grad_out"]))
        del y_ref  # its autograd graph would keep the leaves' gradient-accumulator nodes alive
        frozen_ms, frozen_mem = {}, None
        for name in providers:
            lora = name != "frozen"
            try:
                fn, leaves = PROVIDERS[name](case)
                error = _max_relative_error(fn, leaves, case, reference_outputs) if lora else None
                steps = _steps(fn, leaves, case)
                memory = peak_memory_mib(steps["forward+backward"], device)
            except Exception as exc:  # recorded in the results, never silently dropped
                rows.append({"shape": label, "r": rank, "p": p, "provider": name, "error": repr(exc)[:200]})
                progress(f"{label} r={rank} p={p} {name}: FAILED {exc!r}")
                bar.advance(f"{label} r={rank} p={p} {name} failed")
                continue
            if name == "frozen":
                frozen_mem = memory
            for mode, timing in [(m, t) for t in timings for m in modes if not (t == "graph" and m == "backward")]:
                try:
                    ms = time_ms(steps[mode], device, timing=timing)
                except Exception as exc:
                    rows.append({"shape": label, "r": rank, "p": p, "provider": name, "mode": mode,
                                 "timing": timing, "error": repr(exc)[:200]})
                    progress(f"{label} r={rank} p={p} {name} {mode} {timing}: FAILED {exc!r}")
                    continue
                if name == "frozen":
                    frozen_ms[mode, timing] = ms
                row = {
                    "shape": label, "r": rank, "p": p, "provider": name, "mode": mode, "timing": timing, "ms": ms,
                    "tflops": _flops(case, mode, lora) / ms / 1e9,
                    "vs_frozen": ms / frozen_ms[mode, timing] if (mode, timing) in frozen_ms else None,
                    "peak_extra_mib": memory if mode == "forward+backward" else None,
                    "mem_vs_frozen": (memory / frozen_mem if mode == "forward+backward" and frozen_mem and memory
                                      else None),
                    "max_rel_err_vs_eager": error,
                }
                rows.append(row)
                progress(f"{label} r={rank} p={p} {name:8s} {mode:17s} {timing:6s} {ms:8.3f} ms  "
                         f"x{row['vs_frozen'] or float('nan'):.3f} vs frozen")
            bar.advance(f"{label} r={rank} p={p} {name}")
        del case
        if case_done is not None:
            case_done(rows)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def summarize(rows, providers):
    """Markdown: forward + backward ratio to the frozen layer per case and provider, with the targets."""
    table = {}
    for row in rows:
        if row.get("mode") == "forward+backward" and "ms" in row:
            key = (row.get("timing", "launch"), row["shape"], row["r"], row["p"])
            table.setdefault(key, {})[row["provider"]] = row
    shown = [p for p in providers if p != "frozen"]
    lines = ["| timing | case | frozen ms | " + " | ".join(f"{p} ×" for p in shown)
             + " | lowpeft mem × | target | met |",
             "| --- | --- | --- | " + " | ".join("---" for _ in shown) + " | --- | --- | --- |"]
    slower_than_eager = []
    for (timing, shape, rank, p), by_provider in table.items():
        tokens, rest = shape.split("x", 1)
        width, out = rest.split("->")
        target = TARGETS.get((int(tokens), int(width), int(out), rank, p))
        ours = by_provider.get("lowpeft", {}).get("vs_frozen")
        met = "" if target is None or ours is None else ("yes" if ours <= target else "NO")
        eager = by_provider.get("eager", {}).get("vs_frozen")
        if ours is not None and eager is not None and ours > eager:
            slower_than_eager.append(f"{shape} r={rank} p={p} ({timing})")
        frozen = by_provider.get("frozen", {}).get("ms")
        cells = [f"{by_provider[p]['vs_frozen']:.3f}" if p in by_provider and by_provider[p].get("vs_frozen")
                 else "" for p in shown]
        mem = by_provider.get("lowpeft", {}).get("mem_vs_frozen")
        frozen_text = "failed" if frozen is None else f"{frozen:.3f}"
        lines.append(f"| {timing} | {shape} r={rank} p={p} | {frozen_text} | " + " | ".join(cells)
                     + f" | {'' if mem is None else f'{mem:.2f}'} | {target or ''} | {met} |")
    lines.append("")
    failed = sorted({f"{row['provider']}: {row['error']}" for row in rows if row.get("error")})
    ran = any(row.get("provider") == "lowpeft" and "ms" in row for row in rows)
    if ran:
        lines.append("lowpeft slower than eager LoRA at: " + (", ".join(slower_than_eager) or "no benchmarked case"))
    if failed:
        lines.append("Providers that failed (no numbers): " + "; ".join(failed))
    return "\n".join(lines)


def _parse_cases(text):
    cases = []
    for item in text.split(","):
        parts = item.strip().split(":")
        dims = parts[0].split("x")
        if len(dims) != 3 or len(parts) > 3:
            raise ValueError(f"--cases: expected TxKxN[:r[:p]] items, got {item!r}")
        try:
            case = (int(dims[0]), int(dims[1]), int(dims[2]), int(parts[1]) if len(parts) > 1 else 16,
                    float(parts[2]) if len(parts) > 2 else 0.0)
        except ValueError:
            raise ValueError(f"--cases: expected TxKxN[:r[:p]] items with integers T, K, N, r, got {item!r}") from None
        if min(case[:4]) < 1 or not 0.0 <= case[4] < 1.0:
            raise ValueError(f"--cases: expected positive T, K, N, r and 0 <= p < 1, got {item!r}")
        cases.append(case)
    return cases


def main(argv=None, parents=()) -> int:
    """The harness's command line; `parents` are argparse parents whose options a caller (lowpeft.cli) handles
    itself before calling this, listed by --help."""
    parser = argparse.ArgumentParser(prog="lowpeft bench lora", description="fused LoRA layer benchmark",
                                     parents=list(parents))
    parser.add_argument("--cases", default=None,
                        help="comma-separated TxKxN[:r[:p]] (default: DESIGN §5 shapes and the r / p sweep)")
    parser.add_argument("--shapes", default=None, help="comma-separated TxKxN; crossed with --ranks and --dropouts")
    parser.add_argument("--ranks", default="8,16,64,128", help="ranks crossed with --shapes")
    parser.add_argument("--dropouts", default="0,0.1", help="dropout probabilities crossed with --shapes")
    parser.add_argument("--providers", type=provider_list(PROVIDERS), default="frozen,lowpeft,peft,eager,compile",
                        help=f"subset of {','.join(PROVIDERS)} (default: all but lowpeft_cuda and lowpeft_int8)")
    parser.add_argument("--modes", default=",".join(MODES), help=f"subset of {','.join(MODES)}")
    parser.add_argument("--timing", type=timing_list, default="launch",
                        help="launch (kernels launched from Python each call), graph (CUDA-graph replays: the GPU "
                             "cost without host time) or both, comma-separated (default: launch)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--json", help="write the rows and environment as JSON here")
    parser.add_argument("--md", help="write a markdown table here")
    parser.add_argument("--csv", help="write a CSV table here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    # Every ratio is taken against the frozen layer of the same run, so it runs first whether listed or not.
    providers = ["frozen"] + [name for name in args.providers if name != "frozen"]
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if any(m not in MODES for m in modes):
        parser.error(f"--modes: expected a subset of {MODES}, got {modes}")
    try:
        if args.shapes:
            cases = _parse_cases(",".join(f"{shape}:{r}:{p}" for shape in args.shapes.split(",")
                                          for r in args.ranks.split(",") for p in args.dropouts.split(",")))
        elif args.cases:
            cases = _parse_cases(args.cases)
        else:
            cases = list(DEFAULT_CASES)
    except ValueError as error:
        parser.error(str(error) if not args.shapes else f"--shapes / --ranks / --dropouts: {str(error).removeprefix('--cases: ')}")
    device = device_argument(parser, args.device, kinds=("cpu", "cuda"))
    check_output_paths(parser, json=args.json, md=args.md, csv=args.csv)
    if device.type == "cuda":
        from torch import _dynamo

        _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 4 * len(cases) + 8)
    dtype = _DTYPES[args.dtype]
    env = environment(device)
    env["dtype"] = args.dtype
    env["LOWPEFT_AUTOTUNE"] = os.environ.get("LOWPEFT_AUTOTUNE", "1")
    env["LOWPEFT_TRITON_GEMM"] = os.environ.get("LOWPEFT_TRITON_GEMM", "cublas")
    columns = ["shape", "r", "p", "provider", "mode", "timing", "ms", "tflops", "vs_frozen", "peak_extra_mib", "mem_vs_frozen",
               "max_rel_err_vs_eager", "error"]

    def save(rows):
        return write_results(rows, columns, "LoRA linear layer: forward / backward", env, json_path=args.json,
                             md_path=args.md, csv_path=args.csv, notes=_notes(rows, providers))

    if "graph" in args.timing and device.type != "cuda":
        parser.error(f"--timing graph needs a CUDA device, got {device}")
    rows = run(cases, providers, modes, dtype, device, case_done=save, timings=args.timing,
               show_progress=not args.no_progress)
    print(save(rows))
    return 0


def _auto_backend_text():
    from ..ops import _dispatch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    return f"here: {_dispatch.resolve('auto', torch.device(device))} on {device}"


def _notes(rows, providers):
    return ("## Forward + backward, ratio to the frozen nn.Linear (same run)\n\n" + summarize(rows, providers)
             + "\n\nlowpeft = backend 'auto' (" + _auto_backend_text() + "); the triton backend runs the GEMM strategy in "
             "$LOWPEFT_TRITON_GEMM (environment above; default "
             "'cublas': frozen GEMMs in cuBLAS with the LoRA terms folded in, Triton kernels for the masked LoRA parts; "
             "'fused': persistent TMA Triton GEMMs whose accumulators take the LoRA terms); lowpeft_cuda = the compiled "
             "cuda backend; lowpeft_int8 = the same layer over the weight quantized to int8 (lowpeft.quantize_base: "
             "half the weight's memory; its error against eager includes the quantization error). "
               "peak_extra_mib = torch.cuda.max_memory_allocated during one forward + backward minus what was "
               "allocated before (inputs, weights). max_rel_err_vs_eager: max |ours - eager| / max |eager| over y, dx, "
               "dA, dB (p = 0 only). timing: launch = kernels launched from Python on every timed call; graph = "
               "replays of a CUDA graph captured from one call (the GPU's cost alone; the backward-only mode is "
               "not captured).")


if __name__ == "__main__":
    sys.exit(main())
