# Tests of the `lowpeft` command (lowpeft/cli.py) and the harnesses it routes to: `info`, `bench lora` on a tiny
# shape, `bench model --preset tiny` (every provider, the loss agreement it reports), `bench plot`'s speedup table,
# the progress bar, and bad arguments (each a clear error naming the argument, exit status 2).
#
# Trade-off: the commands are called in-process through lowpeft.cli.main (fast, and failures show a traceback);
# one subprocess run checks the console entry point (`python -m lowpeft`) and that the command module imports
# nothing heavy. Model runs use the tiny preset and 2-3 steps, so the whole file takes well under a minute on CPU.
import io
import json
import math
import os
import subprocess
import sys

import pytest
import torch

from lowpeft import cli
from lowpeft.bench import model as bench_model
from lowpeft.bench import plot

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def run_cli(capsys, *argv):
    status = cli.main(list(argv))
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def run_cli_expecting_usage_error(capsys, *argv):
    """Run a command line that argparse rejects: exit status 2 and the message on stderr."""
    with pytest.raises(SystemExit) as raised:
        cli.main(list(argv))
    assert raised.value.code == 2
    return capsys.readouterr().err


# ----------------------------------------------------------------------------------------------------
# info, version, routing
# ----------------------------------------------------------------------------------------------------
def test_info_lists_versions_device_and_every_backend(capsys):
    status, out, _ = run_cli(capsys, "info")
    assert status == 0
    assert torch.__version__ in out
    for name in ("lowpeft", "torch", "triton", "peft", "transformers"):
        assert f"  {name} " in out
    for backend in ("triton", "cuda", "cpu", "torch"):
        assert f"  {backend:<7} available" in out or f"  {backend:<7} unavailable: " in out
    assert "auto    picks " in out


def test_info_json_says_why_each_unavailable_backend_is_missing(capsys):
    status, out, _ = run_cli(capsys, "info", "--json")
    assert status == 0
    report = json.loads(out)
    device_type = "cuda" if torch.cuda.is_available() else "cpu"
    table = report["backends"][device_type]
    assert table["torch"]["available"] is True
    for name in ("triton", "cuda", "cpu"):
        entry = table[name]
        assert entry["available"] or (isinstance(entry["reason"], str) and entry["reason"])
    assert report["versions"]["torch"] == torch.__version__
    assert report["device"]["type"] == device_type


@pytest.mark.parametrize("as_json", [False, True])
def test_info_reports_an_invalid_backend_setting_and_exits_2(capsys, monkeypatch, as_json):
    monkeypatch.setenv("LOWPEFT_BACKEND", "bogus")
    status, out, err = run_cli(capsys, "info", *(["--json"] if as_json else []))
    assert status == 2
    assert "LOWPEFT_BACKEND: expected one of ('auto', 'triton', 'cuda', 'cpu', 'torch'), got 'bogus'" in err
    if as_json:
        report = json.loads(out)
        assert report["global_backend"] is None and "got 'bogus'" in report["global_backend_error"]
        assert report["backends"]["cpu"]["torch"]["available"] is True
    else:
        assert torch.__version__ in out and "auto    picks " in out
        assert "backend setting: INVALID, LOWPEFT_BACKEND: expected one of" in out
    assert os.environ["LOWPEFT_BACKEND"] == "bogus"


def test_info_notes_a_valid_backend_setting_that_cannot_run_on_a_device_type(capsys, monkeypatch):
    # LOWPEFT_BACKEND=cuda is a valid setting (for GPU work) that cannot run on cpu tensors: the report still prints,
    # with "auto"'s own picks in the tables and a note in the cpu table, and the status is 0 (it once was a traceback).
    monkeypatch.setenv("LOWPEFT_BACKEND", "cuda")
    status, out, _ = run_cli(capsys, "info")
    assert status == 0
    assert "backend setting: cuda" in out and "auto    picks " in out
    assert "note: the backend setting 'cuda' cannot run on cpu tensors" in out
    assert os.environ["LOWPEFT_BACKEND"] == "cuda"


def test_info_after_set_backend_that_cannot_run_says_so_for_auto(capsys, monkeypatch):
    # set_backend's choice is not the environment variable info sets aside: "auto" resolves through it and cannot run
    # on cpu tensors; the table says why instead of "picks None".
    from lowpeft.ops import _dispatch

    monkeypatch.setitem(_dispatch._global_backend, "name", "cuda")
    status, out, _ = run_cli(capsys, "info")
    assert status == 0 and "picks None" not in out
    assert "auto    cannot run: backend: 'cuda' was requested but cannot run on cpu" in out


def test_version_and_help(capsys):
    import lowpeft

    status, out, _ = run_cli(capsys, "--version")
    assert status == 0 and out.strip() == f"lowpeft {lowpeft.__version__}"
    status, out, _ = run_cli(capsys, "--help")
    assert status == 0 and "lowpeft bench model" in out and "lowpeft info" in out


def test_unknown_command_and_unknown_harness_are_usage_errors(capsys):
    status, _, err = run_cli(capsys, "frobnicate")
    assert status == 2 and "command: expected one of demo, info, bench, got 'frobnicate'" in err
    status, _, err = run_cli(capsys, "bench", "gpt")
    assert status == 2 and "bench: expected one of lora, adapter, model, plot, got 'gpt'" in err
    status, out, _ = run_cli(capsys, "bench")
    assert status == 2 and "usage: lowpeft bench" in out


def test_console_entry_point_runs_and_the_command_module_imports_nothing_heavy():
    env = {**os.environ, "PYTHONPATH": REPO + os.pathsep + os.environ.get("PYTHONPATH", "")}
    result = subprocess.run([sys.executable, "-m", "lowpeft", "--version"], capture_output=True, text=True, env=env,
                            cwd=REPO, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("lowpeft ")
    probe = ("import sys, lowpeft.cli; heavy = [m for m in ('triton', 'transformers', 'peft', 'matplotlib', "
             "'lowpeft._C') if m in sys.modules]; print(heavy)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, env=env, cwd=REPO,
                            timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"


# ----------------------------------------------------------------------------------------------------
# bench lora / adapter: flag translation, a tiny run
# ----------------------------------------------------------------------------------------------------
def test_shape_flags_are_crossed_into_the_lora_harness_cases():
    argv = cli._shape_flags("lora", ["--tokens", "7,123", "--in", "40", "--rank", "3", "--dropout", "0,0.1",
                                     "--dtype", "float32", "--providers", "frozen,eager"])
    cases = argv[argv.index("--cases") + 1].split(",")
    assert cases == ["7x40x40:3:0", "7x40x40:3:0.1", "123x40x40:3:0", "123x40x40:3:0.1"]
    assert argv[argv.index("--dtype") + 1] == "fp32"
    assert argv[argv.index("--providers") + 1] == "frozen,eager"
    argv = cli._shape_flags("lora", ["--tokens=9", "--in=16", "--out=24"])
    assert argv[argv.index("--cases") + 1] == "9x16x24:16:0"


def test_shape_flags_for_the_adapter_harness():
    argv = cli._shape_flags("adapter", ["--tokens", "1,7", "--in", "64", "--bottleneck", "8,16"])
    assert argv[argv.index("--shapes") + 1] == "1x64,7x64"
    assert argv[argv.index("--bottlenecks") + 1] == "8,16"
    assert cli._shape_flags("adapter", ["--dtype", "bf16"]) == ["--dtype", "bf16"]


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--tokens", "0"], "argument --tokens: expected positive integers, got '0'"),
        (["--in", "x"], "argument --in: expected comma-separated ints, got 'x'"),
        (["--dropout", "1.5"], "argument --dropout: expected dropout values in [0, 1), got '1.5'"),
        (["--tokens", "8", "--cases", "8x8x8"], "give them or --cases/--shapes, not both"),
        (["--bottleneck", "8"], "argument --bottleneck: applies to bench adapter"),
        (["--tokens"], "argument --tokens: expected a value after --tokens"),
        (["--tokens", "-5"], "argument --tokens: expected positive integers, got '-5'"),
        (["--tokens", "8,-5"], "argument --tokens: expected positive integers, got '8,-5'"),
        (["--dropout", "-0.1"], "argument --dropout: expected dropout values in [0, 1), got '-0.1'"),
        (["--tokens", "--in", "8"], "argument --tokens: expected a value after --tokens"),
    ],
)
def test_bad_lora_shape_flags_are_named(capsys, argv, message):
    status, _, err = run_cli(capsys, "bench", "lora", *argv)
    assert status == 2
    assert message in err


@pytest.mark.parametrize("harness,argv,message", [
    ("lora", ["--cases", "64x32x-16:4:0"], "--cases: expected positive T, K, N, r and 0 <= p < 1, got '64x32x-16:4:0'"),
    ("lora", ["--cases", "64x32:4"], "--cases: expected TxKxN[:r[:p]] items, got '64x32:4'"),
    ("lora", ["--cases", "64x32xa"], "--cases: expected TxKxN[:r[:p]] items with integers"),
    ("lora", ["--shapes", "64x32x16", "--ranks", "0"], "--shapes / --ranks / --dropouts: expected positive"),
    ("lora", ["--device", "foo"], "--device: expected a torch device such as cuda or cpu, got 'foo'"),
    ("lora", ["--device", "meta"], "--device: expected one of the device types ('cpu', 'cuda'), got 'meta'"),
    ("adapter", ["--shapes", "64x0"], "--shapes: expected TOKENSxDIM with positive integers, got '64x0'"),
    ("adapter", ["--shapes", "64"], "--shapes: expected TOKENSxDIM with positive integers, got '64'"),
    ("adapter", ["--bottlenecks", "0"], "--bottlenecks: expected positive integers"),
    ("adapter", ["--device", "foo"], "--device: expected a torch device such as cuda or cpu, got 'foo'"),
])
def test_bad_harness_flags_are_usage_errors_not_tracebacks(capsys, harness, argv, message):
    assert message in run_cli_expecting_usage_error(capsys, "bench", harness, *argv)


@pytest.mark.parametrize("harness", ["lora", "adapter", "model"])
def test_an_unwritable_output_path_is_refused_before_the_run(capsys, tmp_path, harness):
    target = tmp_path / "missing-directory" / "out.json"
    assert f"--json: cannot write {str(target)!r}" in run_cli_expecting_usage_error(capsys, "bench", harness, "--json",
                                                                                   str(target))


def test_the_ratio_to_the_frozen_layer_whatever_the_provider_order(capsys, tmp_path):
    results = tmp_path / "lora.json"
    status, _, _ = run_cli(capsys, "bench", "lora", "--tokens", "16", "--in", "8", "--out", "8", "--rank", "2",
                           "--dtype", "float32", "--device", "cpu", "--providers", "eager,frozen",
                           "--modes", "forward+backward", "--json", str(results))
    rows = json.loads(results.read_text())["rows"]
    assert status == 0 and [row["provider"] for row in rows] == ["frozen", "eager"]
    assert rows[1]["vs_frozen"] == pytest.approx(rows[1]["ms"] / rows[0]["ms"])
    assert json.loads(results.read_text())["environment"]["lowpeft"]


def test_bench_adapter_on_the_cpu_times_the_cpu_backend_and_records_a_provider_that_cannot_run(capsys, tmp_path,
                                                                                               monkeypatch):
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    from lowpeft.ops import _dispatch

    monkeypatch.setattr(_dispatch, "unavailable_reason",
                        lambda name, device_type: "faked" if name == "triton" else None)
    monkeypatch.setattr(_dispatch, "_resolved_cache", {})  # resolutions earlier tests memoised
    results = tmp_path / "adapter.json"
    status, _, _ = run_cli(capsys, "bench", "adapter", "--shapes", "16x8", "--bottlenecks", "4", "--dtype", "fp32",
                           "--device", "cpu", "--json", str(results))
    row = json.loads(results.read_text())["rows"][0]
    assert status == 0 and {"floor_ms", "cpu_ms", "eager_ms"} <= set(row)
    status, _, _ = run_cli(capsys, "bench", "adapter", "--shapes", "16x8", "--bottlenecks", "4", "--dtype", "fp32",
                           "--device", "cpu", "--providers", "floor,triton,eager", "--no-breakdown",
                           "--json", str(results))
    row = json.loads(results.read_text())["rows"][0]
    assert status == 0 and "triton_ms" not in row and "cannot run" in row["triton_error"] and row["eager_ms"] > 0


def test_bench_adapter_reports_tflops_and_peak_memory_per_provider(capsys, tmp_path):
    results, table = tmp_path / "adapter.json", tmp_path / "adapter.csv"
    status, _, _ = run_cli(capsys, "bench", "adapter", "--tokens", "16", "--in", "8", "--bottleneck", "4",
                           "--dtype", "fp32", "--device", "cpu", "--providers", "floor,eager", "--no-breakdown",
                           "--json", str(results), "--csv", str(table))
    row = json.loads(results.read_text())["rows"][0]
    assert status == 0
    assert row["eager_tflops"] == pytest.approx(12 * 16 * 8 * 4 / row["eager_ms"] / 1e9)
    assert "floor_tflops" not in row  # the floor copies and runs no GEMM
    assert row["floor_peak_extra_mib"] is None and row["eager_peak_extra_mib"] is None  # as bench lora on the CPU
    header = table.read_text().splitlines()[0].split(",")
    assert {"eager_tflops", "floor_peak_extra_mib", "eager_peak_extra_mib"} <= set(header)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_adapter_measures_peak_memory_on_cuda(capsys, tmp_path):
    results = tmp_path / "adapter.json"
    status, _, _ = run_cli(capsys, "bench", "adapter", "--tokens", "64", "--in", "64", "--bottleneck", "16",
                           "--providers", "floor,eager", "--no-breakdown", "--json", str(results))
    row = json.loads(results.read_text())["rows"][0]
    assert status == 0 and row["eager_peak_extra_mib"] > 0 and row["eager_tflops"] > 0


@pytest.mark.parametrize("harness,argv", [
    ("lora", ["--tokens", "7", "--in", "8", "--rank", "2", "--providers", "frozen,eager", "--modes", "forward"]),
    ("adapter", ["--tokens", "7", "--in", "8", "--bottleneck", "2", "--providers", "floor,eager", "--no-breakdown"]),
])
def test_bench_lora_and_adapter_show_a_progress_bar_unless_told_not_to(capsys, harness, argv):
    common = ["bench", harness, *argv, "--dtype", "fp32", "--device", "cpu"]
    status, _, err = run_cli(capsys, *common)
    assert status == 0 and f"bench {harness}" in err and "2/2" in err
    status, _, err = run_cli(capsys, *common, "--no-progress")
    assert status == 0 and f"bench {harness}" not in err


@pytest.mark.parametrize("harness,flags", [
    ("lora", ["--tokens", "--in", "--out", "--rank", "--dropout", "--plot", "--dtype", "--providers", "--json",
              "--csv", "--no-progress"]),
    ("adapter", ["--tokens", "--in", "--bottleneck", "--plot", "--dtype", "--providers", "--json", "--csv",
                 "--no-progress"]),
])
def test_bench_lora_and_adapter_help_lists_every_option(capsys, harness, flags):
    with pytest.raises(SystemExit) as raised:
        cli.main(["bench", harness, "--help"])
    out = capsys.readouterr().out
    assert raised.value.code == 0
    assert [flag for flag in flags if f"{flag} " not in out] == []


def test_bad_adapter_flag_is_named(capsys):
    status, _, err = run_cli(capsys, "bench", "adapter", "--rank", "4")
    assert status == 2 and "argument --rank: does not apply to bench adapter" in err


def test_bench_lora_tiny_shape_on_cpu(capsys, tmp_path):
    results = tmp_path / "lora.json"
    status, out, _ = run_cli(capsys, "bench", "lora", "--tokens", "7", "--in", "24", "--out", "40", "--rank", "3",
                             "--dtype", "float32", "--device", "cpu", "--providers", "frozen,eager,peft",
                             "--modes", "forward+backward", "--json", str(results))
    assert status == 0
    assert "7x24->40" in out
    rows = json.loads(results.read_text())["rows"]
    timed = {row["provider"]: row for row in rows if "ms" in row}
    assert set(timed) == {"frozen", "eager", "peft"}
    assert all(row["ms"] > 0 and math.isfinite(row["ms"]) for row in timed.values())
    assert timed["peft"]["max_rel_err_vs_eager"] < 1e-5
    cases, table, time_key, ours = plot.speedups(rows, ours="eager")
    assert (cases, time_key, ours) == (["all"], "ms", "eager")
    assert table["peft"][0] == pytest.approx(timed["peft"]["ms"] / timed["eager"]["ms"])


@pytest.mark.parametrize("harness", ["lora", "adapter"])
@pytest.mark.parametrize("timing,message", [
    ("graph", "--timing graph needs a CUDA device, got cpu"),
    ("launch,replay", "argument --timing: expected comma-separated names from launch,graph, got 'launch,replay'"),
])
def test_bench_timing_argument_errors(capsys, harness, timing, message):
    err = run_cli_expecting_usage_error(capsys, "bench", harness, "--tokens", "7", "--device", "cpu", "--timing", timing)
    assert message in err


def test_time_ms_names_a_bad_timing():
    from lowpeft.bench._common import time_ms

    with pytest.raises(ValueError, match="timing: expected one of .'launch', 'graph'., got 'replay'"):
        time_ms(lambda: None, "cpu", timing="replay")
    with pytest.raises(ValueError, match="timing: 'graph' needs a CUDA device, got cpu"):
        time_ms(lambda: None, "cpu", timing="graph")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_bench_lora_and_adapter_time_launches_and_graph_replays_side_by_side(capsys, tmp_path):
    results = tmp_path / "lora.json"
    status, _, _ = run_cli(capsys, "bench", "lora", "--tokens", "64", "--in", "64", "--out", "96", "--rank", "8",
                           "--dropout", "0,0.1", "--providers", "frozen,lowpeft,eager", "--timing", "launch,graph",
                           "--json", str(results))
    assert status == 0
    rows = json.loads(results.read_text())["rows"]
    assert not [row for row in rows if row.get("error")]
    graph = {(row["provider"], row["p"], row["mode"]) for row in rows if row.get("timing") == "graph"}
    assert ("lowpeft", 0.1, "forward+backward") in graph and ("eager", 0.0, "forward") in graph
    assert not any(mode == "backward" for _, _, mode in graph)  # the retained-graph replay is not captured
    results = tmp_path / "adapter.json"
    status, _, _ = run_cli(capsys, "bench", "adapter", "--tokens", "64", "--in", "64", "--bottleneck", "16",
                           "--providers", "floor,triton,eager", "--timing", "launch,graph", "--json", str(results))
    assert status == 0
    rows = json.loads(results.read_text())["rows"]
    assert sorted(row["timing"] for row in rows) == ["graph", "launch"]
    assert all(row["triton_ms"] > 0 for row in rows)


def test_bench_lora_plot_without_matplotlib_is_a_clear_error_before_the_run(capsys, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status, out, err = run_cli(capsys, "bench", "lora", "--tokens", "7", "--in", "8", "--device", "cpu",
                               "--plot", str(tmp_path / "speedup.png"))
    assert status == 1
    assert "drawing a PNG needs matplotlib, which is not installed: pip install matplotlib" in err
    assert out == ""  # nothing was benchmarked


@pytest.mark.parametrize("harness", ["lora", "adapter"])
def test_bench_plot_path_is_checked_before_the_run(capsys, tmp_path, harness):
    pytest.importorskip("matplotlib")
    shape = ["--tokens", "7", "--in", "8", "--device", "cpu", "--plot"]
    status, out, err = run_cli(capsys, "bench", harness, *shape, str(tmp_path / "speedup.txt"))
    assert status == 2 and out == ""
    assert "argument --plot: expected an image file name ending in one of" in err and ".png" in err
    assert "got " + repr(str(tmp_path / "speedup.txt")) in err
    missing = tmp_path / "missing-directory" / "speedup.png"
    status, out, err = run_cli(capsys, "bench", harness, *shape, str(missing))
    assert status == 2 and out == "" and f"argument --plot: cannot write {str(missing)!r}" in err
    assert not missing.parent.exists()


# ----------------------------------------------------------------------------------------------------
# bench model
# ----------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("device", DEVICES)
def test_bench_model_tiny_every_provider_same_start_and_agreeing_losses(capsys, tmp_path, device):
    paths = {kind: tmp_path / f"model.{kind}" for kind in ("json", "md", "csv")}
    status, out, _ = run_cli(
        capsys, "bench", "model", "--preset", "tiny", "--steps", "3", "--device", device, "--dropout", "0,0.1",
        "--backend", "torch", "--no-progress", "--json", str(paths["json"]), "--md", str(paths["md"]),
        "--csv", str(paths["csv"]),
    )
    assert status == 0
    results = json.loads(paths["json"].read_text())
    rows = {(row["provider"], row["dropout"]): row for row in results["rows"]}
    expected = {("frozen", None)} | {(p, d) for p in ("lowpeft", "peft", "eager") for d in (0.0, 0.1)}
    assert set(rows) == expected | {(bench_model.OTHER_MASKS, 0.1)}
    frozen = rows[("frozen", None)]
    for key, row in rows.items():
        assert len(row["losses"]) == 3 and all(math.isfinite(loss) for loss in row["losses"])
        assert row["step_ms"] > 0 and row["tokens_per_s"] > 0
        assert row["time_vs_frozen"] == pytest.approx(row["step_ms"] / frozen["step_ms"])
        # Same base weights and lora_B = 0 at the start: every provider's first loss is the frozen model's.
        assert row["loss_first"] == pytest.approx(frozen["loss_first"], rel=1e-5), key
    # float32, no dropout: lowpeft and eager LoRA follow PEFT's loss curve to rounding.
    assert rows[("lowpeft", 0.0)]["loss_dev_vs_peft"] < 1e-4
    assert rows[("eager", 0.0)]["loss_dev_vs_peft"] < 1e-4
    # LoRA trains: after 3 AdamW steps the loss differs from the frozen model's.
    assert rows[("lowpeft", 0.0)]["losses"][-1] != pytest.approx(frozen["losses"][-1], rel=1e-6)
    assert rows[("lowpeft", 0.0)]["backend"] == "torch"
    summary = {entry["dropout"]: entry for entry in results["summary"]}
    assert set(summary) == {0.0, 0.1}
    assert {"throughput_vs_peft", "throughput_vs_eager", "loss_dev_lowpeft_vs_peft", "loss_noise_floor"} <= set(summary[0.1])
    assert results["settings"]["target_modules"] == list(bench_model.TARGET_MODULES)
    assert "| lowpeft |" in paths["md"].read_text() and "Loss agreement" in paths["md"].read_text()
    assert paths["csv"].read_text().splitlines()[0].startswith("provider,dropout,backend,step_ms")
    assert "| frozen |" in out


def test_bench_model_int8_provider_trains_over_a_quantized_base(capsys, tmp_path):
    path = tmp_path / "model.json"
    status, _, _ = run_cli(capsys, "bench", "model", "--preset", "tiny", "--steps", "3", "--device", "cpu",
                           "--providers", "frozen,lowpeft,lowpeft_int8", "--backend", "torch", "--no-progress",
                           "--json", str(path))
    assert status == 0
    rows = {row["provider"]: row for row in json.loads(path.read_text())["rows"]}
    int8, lowpeft = rows["lowpeft_int8"], rows["lowpeft"]
    assert int8["backend"] == "torch" and len(int8["losses"]) == 3
    # Same adapter start (lora_B = 0): the first loss differs from the float base's by the quantization alone.
    assert int8["loss_first"] == pytest.approx(lowpeft["loss_first"], rel=1e-2)
    assert int8["loss_first"] != lowpeft["loss_first"] and int8["losses"][-1] < int8["losses"][0]


def test_bench_lora_int8_provider_reports_its_rows(capsys):
    status, out, _ = run_cli(capsys, "bench", "lora", "--cases", "32x64x48:4:0", "--providers", "frozen,lowpeft_int8",
                             "--modes", "forward+backward", "--device", "cpu", "--no-progress")
    assert status == 0 and "lowpeft_int8" in out


def test_bench_model_records_a_failing_provider_and_runs_the_others(capsys, tmp_path, monkeypatch):
    real_apply = bench_model._apply_provider

    def apply_or_fail(model, provider, *args):
        if provider == "eager":
            raise RuntimeError("out of memory (simulated)")
        return real_apply(model, provider, *args)

    monkeypatch.setattr(bench_model, "_apply_provider", apply_or_fail)
    results = tmp_path / "model.json"
    status, out, err = run_cli(capsys, "bench", "model", "--preset", "tiny", "--steps", "2", "--device", "cpu",
                               "--providers", "frozen,eager,lowpeft", "--backend", "torch", "--no-progress",
                               "--json", str(results))
    assert status == 0
    assert "eager (dropout 0): FAILED RuntimeError('out of memory (simulated)')" in err
    rows = {row["provider"]: row for row in json.loads(results.read_text())["rows"]}
    assert rows["eager"]["error"] == "RuntimeError('out of memory (simulated)')" and "step_ms" not in rows["eager"]
    assert rows["lowpeft"]["step_ms"] > 0 and rows["frozen"]["step_ms"] > 0
    assert "out of memory (simulated)" in out


def test_bench_model_copies_one_adapter_init_into_every_provider():
    preset = bench_model.PRESETS["tiny"]
    values = bench_model._initial_adapters(preset, 4, seed=0)
    assert len(values) == preset.num_hidden_layers * len(bench_model.TARGET_MODULES)
    for provider in ("lowpeft", "peft", "eager"):
        model = bench_model.build_llama(preset, "cpu", seed=0)
        model = bench_model._apply_provider(model, provider, 4, 4.0, 0.0, "torch")
        bench_model._copy_adapters(model, provider, values)
        pairs = bench_model._adapter_pairs(model, provider)
        assert set(pairs) == set(values)
        for key, (lora_A, lora_B) in pairs.items():
            assert torch.equal(lora_A.detach().float(), values[key][0])
            assert torch.equal(lora_B.detach().float(), values[key][1])
            assert lora_A.requires_grad and lora_B.requires_grad
        trainable = {name for name, p in model.named_parameters() if p.requires_grad}
        assert len(trainable) == 2 * len(values)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--steps", "0"], "argument --steps: expected a positive integer, got 0"),
        (["--dropout", "1"], "argument --dropout: expected dropout values in [0, 1), got 1.0"),
        (["--providers", "frozen,lora"], "argument --providers: expected comma-separated names from"),
        (["--preset", "7b"], "argument --preset: invalid choice: '7b'"),
        (["--steps", "2", "--warmup", "2"], "argument --warmup: expected an integer in [0, steps=2), got 2"),
        (["--device", "cpu", "--backend", "cuda"], "argument --backend: backend: 'cuda' was requested but cannot run on cpu"),
        (["--device", "tpu:x"], "argument --device: expected a torch device such as cuda or cpu, got 'tpu:x'"),
    ],
)
def test_bench_model_bad_arguments(capsys, argv, message):
    err = run_cli_expecting_usage_error(capsys, "bench", "model", *argv)
    assert message in err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_bench_model_cuda_without_a_gpu_is_a_clear_error(capsys):
    err = run_cli_expecting_usage_error(capsys, "bench", "model", "--device", "cuda")
    assert "argument --device: cuda was requested but torch sees no CUDA GPU" in err


# ----------------------------------------------------------------------------------------------------
# bench plot: the speedup table for each harness's rows
# ----------------------------------------------------------------------------------------------------
LORA_ROWS = [
    {"shape": "8192x4096->4096", "r": 16, "p": 0.0, "provider": "frozen", "mode": "forward+backward", "ms": 1.0},
    {"shape": "8192x4096->4096", "r": 16, "p": 0.0, "provider": "lowpeft", "mode": "forward+backward", "ms": 1.1},
    {"shape": "8192x4096->4096", "r": 16, "p": 0.0, "provider": "lowpeft", "mode": "forward", "ms": 0.4},
    {"shape": "8192x4096->4096", "r": 16, "p": 0.0, "provider": "peft", "mode": "forward+backward", "ms": 2.7},
    {"shape": "2048x1024->1024", "r": 16, "p": 0.0, "provider": "frozen", "mode": "forward+backward", "ms": 0.1},
    {"shape": "2048x1024->1024", "r": 16, "p": 0.0, "provider": "lowpeft", "mode": "forward+backward", "ms": 0.15},
    {"shape": "2048x1024->1024", "r": 16, "p": 0.0, "provider": "peft", "error": "RuntimeError('x')"},
]


def test_speedups_of_lora_rows_use_forward_backward_and_skip_failures():
    cases, table, time_key, ours = plot.speedups(LORA_ROWS)
    assert ours == "lowpeft" and time_key == "ms"
    assert cases == ["8192x4096->4096", "2048x1024->1024"]
    assert table["frozen"] == pytest.approx([1.0 / 1.1, 0.1 / 0.15])
    assert table["peft"][0] == pytest.approx(2.7 / 1.1) and table["peft"][1] is None


def test_lora_summary_survives_a_failed_frozen_baseline_and_splits_timings():
    from lowpeft.bench import lora as bench_lora

    rows = [
        {"shape": "64x64->96", "r": 8, "p": 0.0, "provider": "frozen", "mode": "forward+backward", "timing": "graph",
         "error": "RuntimeError('capture failed')"},
        {"shape": "64x64->96", "r": 8, "p": 0.0, "provider": "lowpeft", "mode": "forward+backward", "timing": "graph",
         "ms": 0.2, "vs_frozen": None},
        {"shape": "64x64->96", "r": 8, "p": 0.0, "provider": "frozen", "mode": "forward+backward", "timing": "launch",
         "ms": 0.1, "vs_frozen": 1.0},
        {"shape": "64x64->96", "r": 8, "p": 0.0, "provider": "lowpeft", "mode": "forward+backward",
         "timing": "launch", "ms": 0.3, "vs_frozen": 3.0},
    ]
    text = bench_lora.summarize(rows, ["frozen", "lowpeft"])
    assert "| graph | 64x64->96 r=8 p=0.0 | failed |" in text
    assert "| launch | 64x64->96 r=8 p=0.0 | 0.100 | 3.000 |" in text
    assert "frozen: RuntimeError('capture failed')" in text


def test_speedups_of_wide_adapter_rows():
    rows = [{"shape": "8192x4096", "M": 64, "floor_ms": 0.1, "triton_ms": 0.2, "eager_ms": 0.7, "triton_fwd_ms": 0.05},
            {"shape": "4096x1024", "M": 64, "floor_ms": 0.02, "triton_ms": 0.08, "eager_ms": 0.8}]
    cases, table, _, ours = plot.speedups(rows)
    assert ours == "triton" and cases == ["8192x4096", "4096x1024"]
    assert set(table) == {"floor", "eager"}
    assert table["eager"] == pytest.approx([3.5, 10.0])


def test_speedups_of_model_rows_share_the_frozen_baseline():
    rows = [{"provider": "frozen", "dropout": None, "step_ms": 100.0},
            {"provider": "lowpeft", "dropout": 0.0, "step_ms": 110.0},
            {"provider": "peft", "dropout": 0.0, "step_ms": 200.0},
            {"provider": "lowpeft", "dropout": 0.05, "step_ms": 120.0},
            {"provider": "peft", "dropout": 0.05, "step_ms": 240.0}]
    cases, table, time_key, _ = plot.speedups(rows)
    assert time_key == "step_ms" and cases == ["dropout=0", "dropout=0.05"]
    assert table["peft"] == pytest.approx([200 / 110, 2.0])
    assert table["frozen"] == pytest.approx([100 / 110, 100 / 120])


def test_speedups_bad_input_is_named():
    with pytest.raises(ValueError, match="rows: expected at least one result row"):
        plot.speedups([])
    with pytest.raises(ValueError, match="ours: expected one of the providers in the results"):
        plot.speedups(LORA_ROWS, ours="unsloth")
    with pytest.raises(ValueError, match="rows: expected a 'provider' column or '<provider>_ms' columns"):
        plot.speedups([{"shape": "1x1"}])


def test_bench_plot_command(capsys, tmp_path):
    results = tmp_path / "lora.json"
    results.write_text(json.dumps({"title": "t", "environment": {"device": "test"}, "rows": LORA_ROWS}))
    png = tmp_path / "speedup.png"
    try:
        plot.pyplot()
    except ImportError as exc:
        status, _, err = run_cli(capsys, "bench", "plot", str(results), "--out", str(png))
        assert status == 1 and str(exc) in err
        return
    status, out, _ = run_cli(capsys, "bench", "plot", str(results), "--out", str(png))
    assert status == 0 and f"wrote {png}" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_plot_bad_arguments(capsys, tmp_path):
    err = run_cli_expecting_usage_error(capsys, "bench", "plot", str(tmp_path / "missing.json"), "--out", "x.png")
    assert "argument results: expected an existing JSON file" in err
    err = run_cli_expecting_usage_error(capsys, "bench", "plot", str(tmp_path / "missing.json"))
    assert "the following arguments are required: --out" in err
    text = tmp_path / "notes.txt"
    text.write_text("not json")
    err = run_cli_expecting_usage_error(capsys, "bench", "plot", str(text), "--out", str(tmp_path / "x.png"))
    assert f"argument results: expected a lowpeft results JSON, got {str(text)!r}, which is not JSON" in err
    missing = tmp_path / "missing-directory" / "x.png"
    err = run_cli_expecting_usage_error(capsys, "bench", "plot", str(text), "--out", str(missing))
    assert f"argument --out: cannot write {str(missing)!r}" in err and not missing.parent.exists()


# ----------------------------------------------------------------------------------------------------
# progress bar
# ----------------------------------------------------------------------------------------------------
def test_builtin_progress_bar_without_tqdm(monkeypatch):
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    stream = io.StringIO()
    with bench_model.ProgressBar(3, "steps", stream=stream) as bar:
        for step in range(3):
            bar.advance(f"loss {step}")
    text = stream.getvalue()
    assert "steps: 3/3 |" in text and "loss 2" in text and text.endswith("\n")


def test_progress_bar_can_be_silenced():
    stream = io.StringIO()
    with bench_model.ProgressBar(2, "steps", enabled=False, stream=stream) as bar:
        bar.advance("x")
        bar.advance("y")
    assert stream.getvalue() == ""
