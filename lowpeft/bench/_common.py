# Shared benchmark plumbing: timing (do_bench medians on CUDA, perf_counter medians on the CPU; on CUDA either
# eager launches or replays of a CUDA graph of the step), peak memory, the environment header every result file
# carries, JSON / CSV / markdown writers, the checks of output paths, the progress bar, and the --providers / --timing
# argument types of the harnesses.
#
# Trade-off: one small module used by every benchmark (lora, adapter, model, cpu) so that every committed
# result carries the same provenance (device, versions, date) and every ratio is taken inside one run. The
# graph timing exists because a single layer's step is short enough that the host's launch time can exceed the
# GPU's work (then launched timing measures the CPU); inside a model the host runs ahead of the GPU, or
# torch.compile(mode="reduce-overhead") replays graphs, so the graph timing is the GPU cost a model pays.
from __future__ import annotations

import argparse
import contextlib
import csv
import datetime
import gc
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import torch

__all__ = ["environment", "time_ms", "peak_memory_mib", "write_results", "markdown_table", "provider_list",
           "timing_list", "benchmark_stream", "TIMINGS", "ProgressBar",
           "check_output_paths", "check_output_directory", "output_path_problem"]

# "launch": each timed call launches its kernels from Python; "graph": each timed call replays a CUDA graph
# captured from one call (no host time; CUDA only).
TIMINGS = ("launch", "graph")


def provider_list(known):
    """An argparse type for --providers: a comma-separated, non-empty subset of `known` (names kept in order)."""

    def parse(text: str) -> list[str]:
        names = [name.strip() for name in text.split(",") if name.strip()]
        if not names or any(name not in known for name in names):
            raise argparse.ArgumentTypeError(f"expected comma-separated names from {','.join(known)}, got {text!r}")
        return names

    return parse


# The argparse type for --timing: a comma-separated, non-empty subset of TIMINGS (the --providers parser).
timing_list = provider_list(TIMINGS)


class ProgressBar:
    """A progress bar on stderr: tqdm when it is installed, else a one-line text bar (no dependency needed)."""

    def __init__(self, total: int, description: str, *, enabled: bool = True, stream=None):
        self.total, self.description, self.enabled = total, description, enabled
        self.stream = stream if stream is not None else sys.stderr
        self.count, self._note, self._last_draw, self._start = 0, "", 0.0, time.perf_counter()
        self._tqdm = None
        if enabled:
            try:
                from tqdm.auto import tqdm
            except ImportError:
                tqdm = None
            if tqdm is not None:
                self._tqdm = tqdm(total=total, desc=description, file=self.stream, dynamic_ncols=True, leave=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc_info):
        self.close()

    def advance(self, note: str = "") -> None:
        """One step done; `note` (e.g. the loss) is shown beside the bar."""
        self.count += 1
        self._note = note
        if not self.enabled:
            return
        if self._tqdm is not None:
            if note:
                self._tqdm.set_postfix_str(note, refresh=False)
            self._tqdm.update(1)
            return
        now = time.perf_counter()
        if now - self._last_draw >= 0.2 or self.count == self.total:
            self._last_draw = now
            self._draw(now)

    def _draw(self, now: float) -> None:
        width = 30
        filled = width * self.count // max(self.total, 1)
        elapsed = now - self._start
        rate = self.count / elapsed if elapsed > 0 else 0.0
        line = f"\r{self.description}: {self.count}/{self.total} |{'#' * filled}{'.' * (width - filled)}| {elapsed:.1f}s, {rate:.1f} it/s"
        self.stream.write(line + (f", {self._note}" if self._note else ""))
        self.stream.flush()

    def close(self) -> None:
        if not self.enabled:
            return
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self.count:
            self._draw(time.perf_counter())
            self.stream.write("\n")
            self.stream.flush()
            self.count = 0


def benchmark_stream(device: torch.device | str, timings=("launch",)):
    """The stream a harness runs its cases on: a fresh non-default CUDA stream when graph timing is asked for
    (a CUDA graph cannot be captured on the default stream, and the autograd engine runs each backward node
    on its forward's stream, so setup, launches, warm-up and capture must share one stream), else nothing."""
    device = torch.device(device)
    if device.type != "cuda" or "graph" not in timings:
        return contextlib.nullcontext()
    return torch.cuda.stream(torch.cuda.Stream(device))


def _capture_cuda_graph(fn, device: torch.device):
    """A CUDA graph of one fn() call, captured on the current stream after three warm-up calls there (lazy
    initialisation, autotuning and compilation happen outside the capture)."""
    stream = torch.cuda.current_stream(device)
    if stream == torch.cuda.default_stream(device):
        raise ValueError("timing: 'graph' must run on a non-default CUDA stream (wrap the run in "
                         "benchmark_stream(device, timings)), got the default stream")
    for _ in range(3):
        fn()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph, stream=stream):
        fn()
    return graph


def output_path_problem(path: str) -> str | None:
    """Why a file cannot be written at path (its directory missing or unwritable, or path a directory), else
    None; nothing is left behind by the check."""
    existed = os.path.exists(path)
    try:
        with open(path, "a"):
            pass
    except OSError as error:
        return error.strerror
    if not existed:
        os.remove(path)
    return None


def check_output_paths(parser: argparse.ArgumentParser, **paths) -> None:
    """parser.error, before any work, for an output path (--name=path) whose directory cannot be written."""
    for name, path in paths.items():
        if path is not None and (problem := output_path_problem(path)) is not None:
            parser.error(f"--{name}: cannot write {path!r} ({problem})")


def check_output_directory(parser: argparse.ArgumentParser, name: str, path: str | None) -> None:
    """parser.error, before any work, for an output directory (--name=path) that is a file or cannot be created
    or written; missing directories are created by the check and removed again."""
    if path is None:
        return
    if os.path.exists(path) and not os.path.isdir(path):
        parser.error(f"--{name}: expected a directory to write into, got {path!r}, an existing file")
    created = os.path.abspath(path)
    while not os.path.exists(os.path.dirname(created)):
        created = os.path.dirname(created)
    existed = os.path.exists(path)
    try:
        os.makedirs(path, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as error:
        parser.error(f"--{name}: cannot write into the directory {path!r} ({error.strerror})")
    finally:
        if not existed and os.path.isdir(created):
            shutil.rmtree(created)


def device_argument(parser: argparse.ArgumentParser, text, kinds=None) -> torch.device:
    """The --device value as a torch.device (default: cuda when present, else cpu); parser.error for a device
    that is not a device, not available here, or (with `kinds`) not one of those device types."""
    try:
        device = torch.device(text or ("cuda" if torch.cuda.is_available() else "cpu"))
    except (RuntimeError, TypeError):
        parser.error(f"argument --device: expected a torch device such as cuda or cpu, got {text!r}")
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("argument --device: cuda was requested but torch sees no CUDA GPU")
    if kinds is not None and device.type not in kinds:
        parser.error(f"argument --device: expected one of the device types {kinds}, got {text!r}")
    return device


def _lowpeft_version() -> str:
    """The installed version, with the git commit (and "+dirty") when run from a checkout."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        text = version("lowpeft")
    except PackageNotFoundError:
        text = "unknown"
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return text
    return f"{text} ({commit}{'+dirty' if dirty else ''})" if commit else text


def environment(device: torch.device | str | None = None) -> dict:
    """Where and with what a result was measured."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    env = {
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or platform.machine(),
        "cpu_threads": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "lowpeft": _lowpeft_version(),
    }
    for package in ("triton", "peft", "transformers"):
        try:
            env[package] = __import__(package).__version__
        except ImportError:
            env[package] = None
    return env


def time_ms(fn, device: torch.device | str, *, warmup_ms: float = 25, rep_ms: float = 100, min_reps: int = 5,
            timing: str = "launch") -> float:
    """Median wall time of fn() in milliseconds: triton.testing.do_bench on CUDA, perf_counter on the CPU.
    timing="graph" (CUDA only) times replays of a CUDA graph captured from one fn() call."""
    device = torch.device(device)
    if timing not in TIMINGS:
        raise ValueError(f"timing: expected one of {TIMINGS}, got {timing!r}")
    if timing == "graph" and device.type != "cuda":
        raise ValueError(f"timing: 'graph' needs a CUDA device, got {device}")
    if device.type == "cuda":
        from triton.testing import do_bench

        if timing == "graph":
            graph = _capture_cuda_graph(fn, device)
            try:
                return float(do_bench(graph.replay, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
            finally:
                del graph
                torch.cuda.empty_cache()
        return float(do_bench(fn, warmup=warmup_ms, rep=rep_ms, return_mode="median"))
    fn()
    start = time.perf_counter()
    fn()
    once = max(time.perf_counter() - start, 1e-6)
    for _ in range(max(0, int(warmup_ms / 1e3 / once) - 1)):
        fn()
    samples = []
    for _ in range(max(min_reps, int(rep_ms / 1e3 / once))):
        start = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - start)
    return 1e3 * statistics.median(samples)


def peak_memory_mib(fn, device: torch.device | str) -> float | None:
    """Peak CUDA memory allocated during fn() above what was allocated before it (None on the CPU), in the
    steady state: fn() runs once first, so a first call's one-time work (compilation, the autotuner's
    benchmark with its L2-flush buffer and restore copies) is not counted as the step's memory."""
    device = torch.device(device)
    if device.type != "cuda":
        return None
    fn()
    # Collect garbage first: autograd graphs of Python Functions form reference cycles, and a collection that
    # fires inside fn() would free earlier steps' tensors counted in the base (run 22 read 0.5 MiB that way).
    gc.collect()
    torch.cuda.synchronize(device)
    base = torch.cuda.memory_allocated(device)
    torch.cuda.reset_peak_memory_stats(device)
    fn()
    torch.cuda.synchronize(device)
    return (torch.cuda.max_memory_allocated(device) - base) / 2**20


def markdown_table(rows: list[dict], columns: list[str]) -> str:
    def cell(value):
        if isinstance(value, float):
            return f"{value:.3f}" if abs(value) < 100 else f"{value:.1f}"
        return "" if value is None else str(value)

    lines = ["| " + " | ".join(columns) + " |", "| " + " | ".join("---" for _ in columns) + " |"]
    lines += ["| " + " | ".join(cell(row.get(c)) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_results(rows: list[dict], columns: list[str], title: str, env: dict, *, json_path=None, md_path=None,
                  csv_path=None, notes: str = "") -> str:
    """Write rows as JSON (with the environment), markdown (title, environment, table, notes) and CSV; return the
    markdown text."""
    text = f"# {title}\n\n" + "\n".join(f"- {k}: {v}" for k, v in env.items()) + "\n\n" + markdown_table(rows, columns)
    if notes:
        text += "\n\n" + notes.strip() + "\n"
    for path in (json_path, md_path, csv_path):
        if path:
            os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    if json_path:
        with open(json_path, "w") as handle:
            json.dump({"title": title, "environment": env, "rows": rows}, handle, indent=2)
    if md_path:
        with open(md_path, "w") as handle:
            handle.write(text + "\n")
    if csv_path:
        with open(csv_path, "w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)
    return text
