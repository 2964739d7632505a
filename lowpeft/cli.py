# lowpeft.cli: the `lowpeft` command.
#
#   lowpeft [demo] [...]                 the demo (the default command): fine-tune, save, reload, merge, report
#   lowpeft info [--json]                versions, device, and each backend: available, or why not (an invalid
#                                        LOWPEFT_BACKEND: the report, a line naming it, exit status 2)
#   lowpeft bench lora|adapter [...]     one layer, fused vs unfused, on your shapes: --tokens --in --out --rank
#                                        --dropout (comma lists, crossed), --plot PNG; other flags go to the harness,
#                                        whose --help lists these flags too (passed in as argparse parents)
#   lowpeft bench model [...]            LoRA training steps of a Llama built from a config, four providers
#   lowpeft bench plot RESULTS.json --out PNG
#
# Trade-off: this file only routes. Each subcommand's arguments are parsed by the module that runs it (its
# `main(argv)`), so `lowpeft bench lora --help` shows the harness's own flags and the harness stays usable on
# its own (benchmarks/*.py); the price is one hand-written dispatch instead of one argparse tree. Heavy modules
# (transformers, peft, triton, matplotlib) are imported only by the subcommand that needs them, and a missing
# optional package is a one-line error naming it.
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import sys
import tempfile
import warnings

__all__ = ["main", "info"]

_BENCHES = {
    "lora": "lowpeft.bench.lora",
    "adapter": "lowpeft.bench.adapter",
    "model": "lowpeft.bench.model",
    "plot": "lowpeft.bench.plot",
}
_COMMANDS = ("demo", "info", "bench")
_USAGE = """usage: lowpeft [demo|info|bench] ...

  lowpeft [demo] [--steps N] ...      fine-tune a small Llama with LoRA on the CPU or GPU, save, reload, merge
  lowpeft info [--json]               versions, device, backends (available, or why not)
  lowpeft bench lora [...]            fused vs unfused LoRA layer: --tokens T --in K --out N --rank r --dropout p
                                      (comma lists are crossed), --dtype, --providers, --json/--csv/--md,
                                      --timing launch,graph (CUDA-graph replays: GPU time alone),
                                      --plot PNG (a speedup chart)
  lowpeft bench adapter [...]         fused vs unfused bottleneck adapter: --tokens T --in D --bottleneck M
  lowpeft bench model [...]           training steps of a Llama from a config: frozen / lowpeft / PEFT / eager
  lowpeft bench plot RESULTS --out PNG
  lowpeft --version

`lowpeft COMMAND --help` shows a command's options.
"""


class UsageError(Exception):
    """A command line the router cannot route."""


def _package_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def info() -> dict:
    """Versions, device and backends, as `lowpeft info --json` prints them."""
    import torch

    import lowpeft
    from lowpeft import _extension
    from lowpeft.ops import _dispatch

    versions = {"lowpeft": lowpeft.__version__, "python": platform.python_version(), "torch": torch.__version__}
    for package in ("triton", "peft", "transformers", "safetensors", "numpy", "tqdm", "matplotlib"):
        versions[package] = _package_version(package)
    versions["torch built with CUDA"] = torch.version.cuda or "no (CPU build)"
    if torch.cuda.is_available():
        index = torch.cuda.current_device()
        properties = torch.cuda.get_device_properties(index)
        device = {
            "type": "cuda",
            "name": properties.name,
            "compute_capability": f"{properties.major}.{properties.minor}",
            "memory_gib": round(properties.total_memory / 2**30, 1),
            "count": torch.cuda.device_count(),
        }
    else:
        device = {"type": "cpu", "name": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    try:
        global_backend, backend_error = _dispatch.get_backend(), None
    except ValueError as exc:  # an invalid $LOWPEFT_BACKEND: reported
        global_backend, backend_error = None, str(exc)
    # The tables show each backend and what "auto" picks, so they are computed with $LOWPEFT_BACKEND unset: a valid
    # setting that cannot run on one device type (cuda for cpu tensors) is a note there, not a failed report.
    setting = os.environ.pop("LOWPEFT_BACKEND", None)
    try:
        with warnings.catch_warnings():
            # resolving "auto" warns when it passes over a backend; the report below says so itself.
            warnings.simplefilter("ignore")
            backends = {device_type: _dispatch.backends(device_type)
                        for device_type in (("cuda", "cpu") if device["type"] == "cuda" else ("cpu",))}
    finally:
        if setting is not None:
            os.environ["LOWPEFT_BACKEND"] = setting
    return {
        "versions": versions,
        "device": device,
        "backends": backends,
        "global_backend": global_backend,
        "global_backend_error": backend_error,
        "extension": _extension.unavailable_reason() or "lowpeft._C loaded",
        "triton_interpret": os.environ.get("TRITON_INTERPRET") == "1",
    }


def _print_info(report: dict) -> None:
    print("lowpeft info")
    print("versions:")
    for name, version in report["versions"].items():
        print(f"  {name:<24} {version or 'not installed'}")
    device = report["device"]
    print("device:")
    print("  " + ", ".join(f"{key} {value}" for key, value in device.items()))
    if report["global_backend_error"]:
        print(f"backend setting: INVALID, {report['global_backend_error']} (the backends below are shown as if "
              "LOWPEFT_BACKEND were unset)")
    else:
        print(f"backend setting: {report['global_backend']} (lowpeft.set_backend or LOWPEFT_BACKEND)")
    for device_type, table in report["backends"].items():
        print(f"backends for {device_type} tensors:")
        chosen = table.get(report["global_backend"])
        if report["global_backend"] != "auto" and chosen is not None and not chosen["available"]:
            print(f"  note: the backend setting {report['global_backend']!r} cannot run on {device_type} tensors")
        for name, entry in table.items():
            if name == "auto" and not entry["available"]:
                print(f"  {'auto':<7} cannot run: {entry['reason']}")
            elif name == "auto":
                line = f"  {'auto':<7} picks {entry['picks']}"
                if set(entry["adapter_picks"].values()) != {entry["picks"]}:
                    by_width = ", ".join(f"{width}: {pick}" for width, pick in entry["adapter_picks"].items())
                    line += f" (bottleneck adapters, {by_width})"
                print(line)
            elif entry["available"]:
                print(f"  {name:<7} available")
            else:
                print(f"  {name:<7} unavailable: {entry['reason']}")
    print(f"compiled extension: {report['extension']}")


def _info_main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="lowpeft info", description="Versions, device and backends.")
    parser.add_argument("--json", action="store_true", help="print the report as JSON")
    args = parser.parse_args(argv)
    report = info()
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        _print_info(report)
    if report["global_backend_error"]:
        print(f"lowpeft: error: {report['global_backend_error']} (unset it or pick a valid one)", file=sys.stderr)
        return 2
    return 0


def _is_flag(item: str) -> bool:
    """Whether a command-line item is an option rather than a value (a negative number such as -5 is a value)."""
    if not item.startswith("-"):
        return False
    try:
        float(item.split(",")[0])
    except ValueError:
        return True
    return False


def _take_option(argv: list[str], name: str) -> tuple[str | None, list[str]]:
    """Remove `name VALUE` or `name=VALUE` from argv; return (VALUE or None, the rest)."""
    rest, value, index = [], None, 0
    while index < len(argv):
        item = argv[index]
        if item == name:
            if index + 1 >= len(argv) or _is_flag(argv[index + 1]):
                raise UsageError(f"argument {name}: expected a value after {name}")
            value = argv[index + 1]
            index += 2
            continue
        if item.startswith(name + "="):
            value = item[len(name) + 1:]
        else:
            rest.append(item)
        index += 1
    return value, rest


_DTYPE_ALIASES = {"bfloat16": "bf16", "float16": "fp16", "float32": "fp32"}


def _numbers(flag: str, text: str, kind=int) -> list:
    try:
        values = [kind(item) for item in text.split(",")]
    except ValueError:
        raise UsageError(f"argument {flag}: expected comma-separated {kind.__name__}s, got {text!r}") from None
    if kind is int and any(value < 1 for value in values):
        raise UsageError(f"argument {flag}: expected positive integers, got {text!r}")
    if kind is float and any(not 0.0 <= value < 1.0 for value in values):
        raise UsageError(f"argument {flag}: expected dropout values in [0, 1), got {text!r}")
    return values


def _shape_flags(name: str, argv: list[str]) -> list[str]:
    """Turn the per-dimension flags (--tokens T --in K --out N --rank r --dropout p, comma lists crossed) into the
    harness's case list (lora: --cases TxKxN:r:p,...; adapter: --shapes TxD,... and --bottlenecks), and long
    dtype names into the harness's short ones."""
    given = {}
    for flag in ("--tokens", "--in", "--out", "--rank", "--dropout", "--bottleneck"):
        given[flag], argv = _take_option(argv, flag)
    dtype, argv = _take_option(argv, "--dtype")
    if dtype is not None:
        argv = argv + ["--dtype", _DTYPE_ALIASES.get(dtype, dtype)]
    if all(value is None for value in given.values()):
        return argv
    own = ("--cases", "--shapes") if name == "lora" else ("--shapes", "--bottlenecks")
    clash = [item for item in argv if item.split("=")[0] in own]
    if clash:
        raise UsageError(f"bench {name}: --tokens/--in/... describe the cases; give them or {'/'.join(own)}, not both")
    tokens = _numbers("--tokens", given["--tokens"] or "8192")
    widths = _numbers("--in", given["--in"] or "4096")
    if name == "adapter":
        for flag in ("--out", "--rank", "--dropout"):
            if given[flag] is not None:
                raise UsageError(f"argument {flag}: does not apply to bench adapter (a [tokens, in] input; "
                                 "--bottleneck sets M)")
        argv = argv + ["--shapes", ",".join(f"{t}x{d}" for t in tokens for d in widths)]
        if given["--bottleneck"] is not None:
            argv = argv + ["--bottlenecks", ",".join(map(str, _numbers("--bottleneck", given["--bottleneck"])))]
        return argv
    if given["--bottleneck"] is not None:
        raise UsageError("argument --bottleneck: applies to bench adapter, not bench lora (use --rank)")
    outs = _numbers("--out", given["--out"]) if given["--out"] is not None else None
    ranks = _numbers("--rank", given["--rank"] or "16")
    dropouts = _numbers("--dropout", given["--dropout"] or "0", float)
    cases = [f"{t}x{k}x{n}:{r}:{p:g}" for t in tokens for k in widths for n in (outs or [k]) for r in ranks
             for p in dropouts]
    return argv + ["--cases", ",".join(cases)]


def _router_flags(name: str) -> argparse.ArgumentParser:
    """The flags _bench_main handles before the lora / adapter harness parses the rest, as an argparse parent of
    the harness's parser, so that `lowpeft bench lora|adapter --help` lists them with the harness's own."""
    parser = argparse.ArgumentParser(add_help=False)
    group = parser.add_argument_group(f"shapes and plot (lowpeft bench {name}; comma lists are crossed)")
    group.add_argument("--tokens", metavar="T", help="tokens per case (default 8192 when any shape flag is given)")
    if name == "lora":
        group.add_argument("--in", metavar="K", help="in_features (default 4096)")
        group.add_argument("--out", metavar="N", help="out_features (default: --in)")
        group.add_argument("--rank", metavar="r", help="LoRA rank (default 16)")
        group.add_argument("--dropout", metavar="p", help="LoRA dropout in [0, 1) (default 0)")
    else:
        group.add_argument("--in", metavar="D", help="hidden width (default 4096)")
        group.add_argument("--bottleneck", metavar="M", help="bottleneck width (default: the harness's --bottlenecks)")
    group.add_argument("--plot", metavar="PNG", help="draw lowpeft's speedup over each other provider per shape "
                                                     "(needs matplotlib)")
    return parser


def _bench_main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: lowpeft bench {" + ",".join(_BENCHES) + "} [options]\n\n" + _USAGE)
        return 0 if argv else 2
    name, rest = argv[0], argv[1:]
    if name not in _BENCHES:
        raise UsageError(f"bench: expected one of {', '.join(_BENCHES)}, got {name!r}")
    module = importlib.import_module(_BENCHES[name])
    if name in ("model", "plot"):
        return module.main(rest, prog=f"lowpeft bench {name}") or 0
    # lora / adapter: the per-dimension flags and `--plot PNG` are handled here, the rest goes to the harness.
    rest = _shape_flags(name, rest)
    png, rest = _take_option(rest, "--plot")
    parents = [_router_flags(name)]
    if png is None:
        return module.main(rest, parents=parents) or 0
    from lowpeft.bench import plot

    plot.pyplot()  # a missing matplotlib is reported before the benchmark runs, not after
    problem = plot.image_path_problem(png)
    if problem is not None:
        raise UsageError(f"argument --plot: {problem}")
    json_path, _ = _take_option(rest, "--json")
    with tempfile.TemporaryDirectory() as scratch:
        if json_path is None:
            json_path = os.path.join(scratch, f"{name}.json")
            rest = rest + ["--json", json_path]
        status = module.main(rest, parents=parents) or 0
        if status == 0:
            try:
                print(f"wrote {plot.plot_speedups(json_path, png)}")
            except ValueError as exc:
                print(f"lowpeft: error: --plot {png}: {exc}", file=sys.stderr)
                return 1
    return status


def main(argv=None) -> int:
    """Entry point of the `lowpeft` console script; returns the exit status."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        if argv and argv[0] in ("-h", "--help"):
            print(_USAGE)
            return 0
        if argv and argv[0] == "--version":
            import lowpeft

            print(f"lowpeft {lowpeft.__version__}")
            return 0
        if argv and not argv[0].startswith("-") and argv[0] not in _COMMANDS:
            raise UsageError(f"command: expected one of {', '.join(_COMMANDS)}, got {argv[0]!r}")
        command, rest = (argv[0], argv[1:]) if argv and argv[0] in _COMMANDS else ("demo", argv)
        if command == "info":
            return _info_main(rest)
        if command == "bench":
            return _bench_main(rest)
        from lowpeft.demo import main as demo_main

        return demo_main(rest) or 0
    except UsageError as exc:
        print(f"lowpeft: error: {exc}\n\n{_USAGE}", file=sys.stderr)
        return 2
    except ImportError as exc:
        print(f"lowpeft: error: {exc}", file=sys.stderr)
        return 1
