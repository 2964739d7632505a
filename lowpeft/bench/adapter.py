# `lowpeft bench adapter`: forward + backward of one bottleneck adapter (out = h + s·(act(h W_downᵀ + b_down) W_upᵀ
# + b_up)) against the copy floor, an eager PyTorch adapter and torch.compile of it, as do_bench medians in one run,
# with each provider's TFLOP/s (12·T·D·M: the six GEMMs of forward + backward) and the step's peak extra memory.
#
# The floor is what any adapter step must at least do with [T, D] tensors: one copy of h and one copy of g (two
# tensor.copy_ calls, each reading and writing T·D elements). Each provider is a factory in PROVIDERS taking the
# inputs and returning a zero-argument step, so a new backend is one line (e.g. "cuda": _op_provider("cuda")).
# Trade-off: the steps call torch.autograd.grad rather than backward() so that no provider pays for gradient
# accumulation into .grad, and every step computes all five gradients (h and the four adapter parameters).
# --timing graph adds rows timed as CUDA-graph replays of each step (the GPU's cost without host time).
# A progress bar over cases x providers goes to stderr (--no-progress turns it off).
from __future__ import annotations

import argparse
import sys

import torch
import torch.nn.functional as F

from .. import reference
from ._common import (ProgressBar, benchmark_stream, check_output_paths, device_argument, environment, peak_memory_mib,
                      provider_list, time_ms, timing_list, write_results)

__all__ = ["main", "PROVIDERS", "DEFAULT_SHAPES", "DEFAULT_BOTTLENECKS"]

DEFAULT_SHAPES = ((8192, 4096), (4096, 1024), (16384, 8192))
DEFAULT_BOTTLENECKS = (16, 64, 256)
# Acceptance (issue 4): ratio to the floor at M = 64, and at least 2x faster than eager everywhere.
FLOOR_TARGETS = {(8192, 4096, 64): 2.5, (4096, 1024, 64): 5.0}
MIN_SPEEDUP_VS_EAGER = 2.0
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def eager_adapter(h, down_weight, down_bias, up_weight, up_bias, activation="gelu", scale=1.0):
    """The adapter as AdapterHub-style code writes it: two F.linear calls, the activation and the residual."""
    a = reference.activation_forward(F.linear(h, down_weight, down_bias), activation)
    return h + scale * F.linear(a, up_weight, up_bias)


def _floor_provider(inputs, activation, scale):
    h, g = inputs["h"], inputs["grad_out"]
    h_copy, g_copy = torch.empty_like(h), torch.empty_like(g)

    def step():
        h_copy.copy_(h)
        g_copy.copy_(g)

    return step


def _autograd_step(fn, inputs):
    leaves = [inputs[name] for name in ("h", "down_weight", "down_bias", "up_weight", "up_bias")]
    grad_out = inputs["grad_out"]

    def step():
        out = fn(*leaves)
        torch.autograd.grad(out, leaves, grad_out)

    return step


def _op_provider(backend):
    def make(inputs, activation, scale):
        from ..ops.bottleneck_adapter import bottleneck_adapter

        return _autograd_step(lambda *a: bottleneck_adapter(*a, activation, scale, backend=backend), inputs)

    return make


def _eager_provider(inputs, activation, scale):
    return _autograd_step(lambda *a: eager_adapter(*a, activation, scale), inputs)


def _compile_provider(inputs, activation, scale):
    compiled = torch.compile(eager_adapter)
    return _autograd_step(lambda *a: compiled(*a, activation, scale), inputs)


PROVIDERS = {
    "floor": _floor_provider,
    "triton": _op_provider("triton"),
    "cuda": _op_provider("cuda"),
    "cpu": _op_provider("cpu"),
    "auto": _op_provider("auto"),
    "eager": _eager_provider,
    "compile": _compile_provider,
}


def make_inputs(tokens, dim, bottleneck, dtype, device, seed=0):
    gen = torch.Generator(device=device).manual_seed(seed)

    def rand(*shape, scale=1.0, grad=True):
        t = torch.randn(*shape, generator=gen, device=device, dtype=torch.float32).mul_(scale).to(dtype)
        return t.requires_grad_(grad)

    return {
        "h": rand(tokens, dim),
        "down_weight": rand(bottleneck, dim, scale=dim**-0.5),
        "down_bias": rand(bottleneck, scale=0.1),
        "up_weight": rand(dim, bottleneck, scale=bottleneck**-0.5),
        "up_bias": rand(dim, scale=0.1),
        "grad_out": rand(tokens, dim, grad=False),
    }


def _kernel_breakdown(inputs, activation, scale, device):
    """Forward and backward launchers of the triton backend called directly (no autograd, no custom op)."""
    from ..kernels.bottleneck_adapter import bottleneck_adapter_bwd, bottleneck_adapter_fwd

    args = [inputs[k].detach() for k in ("h", "down_weight", "down_bias", "up_weight", "up_bias")]
    _, z = bottleneck_adapter_fwd(*args, activation, scale)
    fwd = time_ms(lambda: bottleneck_adapter_fwd(*args, activation, scale), device)
    bwd = time_ms(lambda: bottleneck_adapter_bwd(inputs["grad_out"], args[0], args[1], args[2], args[3], z,
                                                 activation, scale, (True,) * 5), device)
    return fwd, bwd


def adapter_flops(tokens, dim, bottleneck):
    """FLOPs of one forward + backward of the adapter, counting its GEMMs only: 6 GEMMs of 2·T·D·M each (forward:
    down and up projections; backward: dh, dW_down through the down projection and da, dW_up through the up
    one), 12·T·D·M in all (bench lora counts its layer the same way: 2·T·K·N per GEMM)."""
    return 12 * tokens * dim * bottleneck


def run(shapes, bottlenecks, dtype, providers, activation="gelu", scale=1.0, device=None, breakdown=True,
        timings=("launch",), show_progress=False):
    """One row per shape, bottleneck and timing; show_progress draws a bar over cases x providers on stderr."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    from torch import _dynamo

    # One compiled graph per shape for the torch.compile provider, so no recompilation limit is hit.
    _dynamo.config.cache_size_limit = max(_dynamo.config.cache_size_limit, 8 * len(shapes) * len(bottlenecks))
    total = len(shapes) * len(bottlenecks) * len(timings) * len(providers)
    with benchmark_stream(device, timings), ProgressBar(total, "bench adapter", enabled=show_progress) as bar:
        return _run_shapes(shapes, bottlenecks, dtype, providers, activation, scale, device, breakdown, timings, bar)


def _run_shapes(shapes, bottlenecks, dtype, providers, activation, scale, device, breakdown, timings, bar):
    rows = []
    for tokens, dim in shapes:
        for bottleneck in bottlenecks:
            inputs = make_inputs(tokens, dim, bottleneck, dtype, device)
            steps = {name: PROVIDERS[name](inputs, activation, scale) for name in providers}
            memory = {}
            for timing in timings:
                row = {"shape": f"{tokens}x{dim}", "M": bottleneck, "timing": timing}
                for name in providers:
                    try:
                        if name not in memory:
                            memory[name] = peak_memory_mib(steps[name], device)
                        row[f"{name}_ms"] = time_ms(steps[name], device, timing=timing)
                    except Exception as exc:  # a provider that cannot run here is a row entry, not the end of the run
                        row[f"{name}_error"] = f"{type(exc).__name__}: {exc}"[:300]
                    else:
                        if name != "floor":  # the floor copies, it runs no GEMM
                            row[f"{name}_tflops"] = adapter_flops(tokens, dim, bottleneck) / row[f"{name}_ms"] / 1e9
                        row[f"{name}_peak_extra_mib"] = memory[name]
                    bar.advance(f"{tokens}x{dim} M={bottleneck} {timing} {name}")
                timed = [name for name in providers if f"{name}_ms" in row]
                if breakdown and timing == "launch" and "triton" in timed:
                    row["triton_fwd_ms"], row["triton_bwd_ms"] = _kernel_breakdown(inputs, activation, scale, device)
                floor = row.get("floor_ms")
                for name in timed:
                    if floor and name != "floor":
                        row[f"{name}_x_floor"] = row[f"{name}_ms"] / floor
                if "eager_ms" in row:
                    for name in timed:
                        if name not in ("floor", "eager"):
                            row[f"{name}_speedup_vs_eager"] = row["eager_ms"] / row[f"{name}_ms"]
                row["meets_target"] = _meets_target(row, tokens, dim, bottleneck)
                rows.append(row)
                print(_progress(row), flush=True)
            del inputs, steps
    return rows


def _meets_target(row, tokens, dim, bottleneck):
    if "triton_ms" not in row:
        return None
    ok = True
    target = FLOOR_TARGETS.get((tokens, dim, bottleneck))
    if target is not None and "triton_x_floor" in row:
        ok &= row["triton_x_floor"] <= target
    if "triton_speedup_vs_eager" in row:
        ok &= row["triton_speedup_vs_eager"] >= MIN_SPEEDUP_VS_EAGER
    return bool(ok)


def _progress(row):
    return "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items())


def _parse_shapes(text):
    """[(tokens, dim)] from "TxD,TxD"; ValueError naming the item for anything else."""
    shapes = []
    for item in text.split(","):
        parts = item.lower().split("x")
        if len(parts) != 2 or not all(part.strip().isdigit() and int(part) > 0 for part in parts):
            raise ValueError(f"--shapes: expected TOKENSxDIM with positive integers, got {item!r}")
        shapes.append((int(parts[0]), int(parts[1])))
    return shapes


def main(argv=None, parents=()) -> int:
    """The harness's command line; `parents` are argparse parents whose options a caller (lowpeft.cli) handles
    itself before calling this, listed by --help."""
    parser = argparse.ArgumentParser(prog="lowpeft bench adapter", description="bottleneck adapter benchmark",
                                     parents=list(parents))
    parser.add_argument("--shapes", default=",".join(f"{t}x{d}" for t, d in DEFAULT_SHAPES),
                        help="comma-separated TOKENSxDIM list (default: %(default)s)")
    parser.add_argument("--bottlenecks", default=",".join(map(str, DEFAULT_BOTTLENECKS)),
                        help="comma-separated bottleneck widths M (default: %(default)s)")
    parser.add_argument("--dtype", choices=sorted(_DTYPES), default="bf16")
    parser.add_argument("--activation", default="gelu", choices=("gelu", "gelu_tanh", "relu", "silu"))
    parser.add_argument("--providers", type=provider_list(PROVIDERS), default=None,
                        help=f"comma-separated subset of {sorted(PROVIDERS)} (default: floor, triton, eager, compile "
                             "on a GPU; floor, cpu, eager on the CPU)")
    parser.add_argument("--device", default=None, help="cuda (default when present) or cpu")
    parser.add_argument("--timing", type=timing_list, default="launch",
                        help="launch (kernels launched from Python each call), graph (CUDA-graph replays: the GPU "
                             "cost without host time) or both, comma-separated (default: launch)")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the direct forward / backward kernel timings")
    parser.add_argument("--json", help="write the rows and environment as JSON here")
    parser.add_argument("--md", help="write a markdown table here")
    parser.add_argument("--csv", help="write a CSV table here")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    args = parser.parse_args(argv)

    try:
        shapes = _parse_shapes(args.shapes)
        bottlenecks = [int(m) for m in args.bottlenecks.split(",")]
    except ValueError as error:
        parser.error(str(error) if str(error).startswith("--") else f"--bottlenecks: {error}")
    if any(m < 1 for m in bottlenecks):
        parser.error(f"--bottlenecks: expected positive integers, got {args.bottlenecks!r}")
    device = device_argument(parser, args.device, kinds=("cpu", "cuda"))
    check_output_paths(parser, json=args.json, md=args.md, csv=args.csv)
    # By default the providers this device runs: lowpeft's own backend there, the floor and eager PyTorch.
    providers = args.providers or (["floor", "triton", "eager", "compile"] if device.type == "cuda"
                                   else ["floor", "cpu", "eager"])
    if "graph" in args.timing and device.type != "cuda":
        parser.error(f"--timing graph needs a CUDA device, got {device}")
    rows = run(shapes, bottlenecks, _DTYPES[args.dtype], providers, args.activation, device=device,
               breakdown=not args.no_breakdown, timings=args.timing, show_progress=not args.no_progress)
    env = environment(device)
    env.update({"dtype": args.dtype, "activation": args.activation,
                "timing": ("do_bench" if device.type == "cuda" else "perf_counter") + " median (ms), fwd+bwd"})
    columns = ["shape", "M", "timing"] + [f"{p}_ms" for p in providers]
    columns += [f"{p}_tflops" for p in providers if p != "floor"]
    columns += [f"{p}_peak_extra_mib" for p in providers]
    columns += [f"{p}_error" for p in providers if any(f"{p}_error" in row for row in rows)]
    columns += [f"{p}_x_floor" for p in providers if p != "floor" and "floor" in providers]
    columns += [f"{p}_speedup_vs_eager" for p in providers if p not in ("floor", "eager") and "eager" in providers]
    if not args.no_breakdown and "triton" in providers:
        columns += ["triton_fwd_ms", "triton_bwd_ms"]
    columns.append("meets_target")
    notes = ("Floor: h.copy_ + g.copy_ (one read and one write of h and of g). <provider>_tflops: 12·T·D·M FLOPs "
             "(the six GEMMs of forward + backward, 2·T·D·M each) / median time. <provider>_peak_extra_mib: "
             "torch.cuda.max_memory_allocated during one forward + backward minus what was allocated before (inputs, "
             "weights; empty on the CPU). Targets (issue 4): 8192x4096 M=64 "
             "<= 2.5x floor, 4096x1024 M=64 <= 5x floor, >= 2x faster than eager everywhere. triton_fwd_ms / "
             "triton_bwd_ms: the kernel launchers alone, without autograd and the custom op (launch timing). timing: "
             "launch = kernels launched from Python on every timed call; graph = replays of a CUDA graph captured "
             "from one call (the GPU's cost alone).")
    text = write_results(rows, columns, "Bottleneck adapter, forward + backward", env, json_path=args.json,
                         md_path=args.md, csv_path=args.csv, notes=notes)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
