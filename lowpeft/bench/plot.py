# lowpeft.bench.plot: a PNG of lowpeft's speedup against the other providers, shape by shape, from the JSON that
# `lowpeft bench lora|adapter|model --json` writes.
#
# Trade-off: the reader is generic over the harnesses' rows (a "provider" column, a time column such as
# median_ms or step_ms, and whatever shape columns are present) instead of knowing each harness's schema, so a
# new harness or column needs no change here; matplotlib is an optional dependency, imported only when a PNG
# is drawn, and its absence is a clear message.
from __future__ import annotations

import argparse
import json
import os

from ._common import output_path_problem

__all__ = ["TIME_KEYS", "SHAPE_KEYS", "OURS", "speedups", "pyplot", "image_path_problem", "plot_speedups", "main"]

TIME_KEYS = ("median_ms", "ms", "time_ms", "step_ms")
# Columns that describe a measured case, in the order they appear in a case's label.
SHAPE_KEYS = ("preset", "shape", "tokens", "in", "out", "dim", "M", "bottleneck", "rank", "r", "dropout", "p",
              "activation", "bias", "dtype", "timing")
# Our provider's name, in order of preference: lowpeft's harnesses call it "lowpeft" or name the backend.
OURS = ("lowpeft", "triton", "cuda", "cpu")
# With a "mode" column (forward / backward / forward+backward), the training step is what is drawn.
MODE = "forward+backward"


def _long_rows(rows: list[dict]) -> list[dict]:
    """Rows with one provider each. Wide rows (one per case, a `<provider>_ms` column per provider, as the adapter
    harness writes) are split; a column such as triton_fwd_ms (a provider name with "_") is a breakdown, not a
    provider."""
    if all("provider" in row for row in rows):
        return rows
    long = []
    for row in rows:
        shape = {key: value for key, value in row.items() if key in SHAPE_KEYS}
        for key, value in row.items():
            name = key[: -len("_ms")]
            if key.endswith("_ms") and name and "_" not in name and isinstance(value, (int, float)):
                long.append({**shape, "provider": name, "ms": value})
    if not long:
        raise ValueError("rows: expected a 'provider' column or '<provider>_ms' columns, got neither")
    return long


def _time_key(rows: list[dict]) -> str:
    for key in TIME_KEYS:
        if all(isinstance(row.get(key), (int, float)) for row in rows):
            return key
    raise ValueError(f"rows: expected a time column named one of {TIME_KEYS} in every row, got columns {sorted(rows[0])}")


def _case_label(row: dict, keys: list[str]) -> str:
    values = {key: row.get(key) for key in keys}
    parts = []
    if values.get("tokens") is not None and values.get("in") is not None and values.get("out") is not None:
        parts.append(f"{values.pop('tokens')}×{values.pop('in')}→{values.pop('out')}")
    if values.get("shape") is not None:
        parts.append(str(values.pop("shape")))
    for key, value in values.items():
        if value is not None:
            parts.append(f"{key}={value:g}" if isinstance(value, float) else f"{key}={value}")
    return " ".join(parts) or "all"


def speedups(rows: list[dict], ours: str | None = None) -> tuple[list[str], dict[str, list[float | None]], str, str]:
    """For each measured case (rows sharing their shape columns): time_other / time_ours for every other provider.

    Rows that failed (no time) are left out; with a "mode" column only forward+backward rows count. Returns
    (case labels, {provider: speedups in case order, None where not measured}, the time column, our provider).
    """
    if not rows:
        raise ValueError("rows: expected at least one result row, got none")
    rows = _long_rows(rows)
    rows = [row for row in rows if any(isinstance(row.get(key), (int, float)) for key in TIME_KEYS)]
    if any("mode" in row for row in rows):
        rows = [row for row in rows if row.get("mode") == MODE]
    if not rows:
        raise ValueError(f"rows: expected timed rows (mode {MODE} where a mode is given), got none")
    providers = list(dict.fromkeys(row["provider"] for row in rows))
    if ours is None:
        ours = next((name for name in OURS if name in providers), None)
    if ours not in providers:
        raise ValueError(f"ours: expected one of the providers in the results {providers}, got {ours!r}")
    time_key = _time_key(rows)
    # A shape column counts if it varies across our rows; a column set only on some providers' rows (e.g. the
    # frozen baseline has no dropout) does not split cases.
    ours_rows = [row for row in rows if row["provider"] == ours]
    keys = [key for key in SHAPE_KEYS if len({json.dumps(row.get(key)) for row in ours_rows}) > 1]
    cases = list(dict.fromkeys(_case_label(row, keys) for row in ours_rows))
    ours_time = {_case_label(row, keys): row[time_key] for row in ours_rows}
    table = {}
    for provider in providers:
        if provider == ours:
            continue
        times = {}
        for row in (row for row in rows if row["provider"] == provider):
            if keys and all(row.get(key) is None for key in keys):
                times.update({case: row[time_key] for case in cases})  # a baseline row that holds for every case
            else:
                times[_case_label(row, keys)] = row[time_key]
        table[provider] = [times[case] / ours_time[case] if case in times else None for case in cases]
    return cases, table, time_key, ours


def pyplot():
    """matplotlib.pyplot on the file-only Agg backend, or an ImportError saying how to install it."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(
            "drawing a PNG needs matplotlib, which is not installed: pip install matplotlib "
            "(or pip install 'lowpeft[bench]')"
        ) from exc
    return plt


def image_path_problem(path: str) -> str | None:
    """Why an image cannot be drawn to path (a format matplotlib cannot write, judged by the extension: .png when
    matplotlib is missing; or a file that cannot be written there), else None; checked before any work."""
    try:
        from matplotlib.backend_bases import FigureCanvasBase

        formats = sorted(FigureCanvasBase.get_supported_filetypes())
    except ImportError:
        formats = ["png"]
    extension = os.path.splitext(path)[1].lower().lstrip(".")
    if extension not in formats:
        return f"expected an image file name ending in one of {', '.join('.' + f for f in formats)}, got {path!r}"
    problem = output_path_problem(path)
    return None if problem is None else f"cannot write {path!r} ({problem})"


def plot_speedups(results_path: str, png_path: str, ours: str | None = None, title: str | None = None) -> str:
    """Draw speedups(...) of a results JSON as grouped bars into png_path; return png_path."""
    try:
        with open(results_path) as handle:
            results = json.load(handle)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"results_path: expected a lowpeft results JSON, got {results_path!r}, which is not JSON "
                         f"({exc})") from None
    if not isinstance(results, dict) or not isinstance(results.get("rows"), list):
        raise ValueError(f"results_path: expected a lowpeft results JSON with a 'rows' list, got {results_path!r}")
    cases, table, time_key, ours = speedups(results["rows"], ours)
    plt = pyplot()
    width = 0.8 / max(len(table), 1)
    figure, axes = plt.subplots(figsize=(max(6.0, 1.6 * len(cases) + 2), 4.5))
    for index, (provider, values) in enumerate(table.items()):
        positions = [case + (index - (len(table) - 1) / 2) * width for case in range(len(cases))]
        heights = [value if value is not None else 0.0 for value in values]
        bars = axes.bar(positions, heights, width, label=f"vs {provider}")
        for bar, value in zip(bars, values):
            if value is not None:
                axes.annotate(f"{value:.2f}×", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                              ha="center", va="bottom", fontsize=7)
    axes.axhline(1.0, color="black", linewidth=0.8)
    axes.set_xticks(range(len(cases)))
    axes.set_xticklabels(cases, rotation=20, ha="right", fontsize=8)
    axes.set_ylabel(f"speedup of {ours} ({time_key} of other / {ours})")
    environment = results.get("environment", {})
    device = environment.get("device", "")
    axes.set_title(title or f"{results.get('title', 'lowpeft benchmark')}\n{device}", fontsize=9)
    axes.legend(fontsize=8)
    figure.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(png_path)), exist_ok=True)
    figure.savefig(png_path, dpi=130)
    plt.close(figure)
    return png_path


def main(argv=None, prog: str = "lowpeft bench plot") -> int:
    parser = argparse.ArgumentParser(prog=prog, description="PNG of lowpeft's speedup per shape from a results JSON.")
    parser.add_argument("results", help="a JSON written by lowpeft bench lora|adapter|model --json")
    parser.add_argument("--out", required=True, metavar="PNG", help="the PNG to write")
    parser.add_argument("--ours", default=None,
                        help=f"the provider whose speedup is drawn (default: the first present of {', '.join(OURS)})")
    parser.add_argument("--title", default=None)
    args = parser.parse_args(argv)
    if not os.path.isfile(args.results):
        parser.error(f"argument results: expected an existing JSON file, got {args.results!r}")
    problem = image_path_problem(args.out)
    if problem is not None:
        parser.error(f"argument --out: {problem}")
    try:
        path = plot_speedups(args.results, args.out, args.ours, args.title)
    except ValueError as exc:
        parser.error(f"argument results: {str(exc).removeprefix('results_path: ')}")
    print(f"wrote {path}")
    return 0
