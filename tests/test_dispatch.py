# Backend resolution (lowpeft/ops/_dispatch.py): what backend="auto" picks on each device type, including the
# adapter's own order by bottleneck width, with the availability of each backend faked so the CUDA rules are
# checked on a CPU-only machine too; explicit choices that cannot run are errors, never fall-backs.
import warnings

import pytest
import torch

from lowpeft.ops import _dispatch
from lowpeft.ops.bottleneck_adapter import (AUTO_TRITON_MAX_BOTTLENECK, AUTO_TRITON_MAX_WIDE_WORK,
                                            MAX_TRITON_BOTTLENECK, adapter_auto_order)


@pytest.fixture
def availability(monkeypatch):
    """Fake which backends can run: returns the set of unavailable (backend, device type) pairs to fill in."""
    unavailable = set()

    def fake_reason(backend, device_type):
        if backend in _dispatch.COMPILED_BACKENDS and backend != device_type:
            return f"the {backend} backend runs on {backend} tensors"
        if backend == "triton" and device_type != "cuda":
            return "triton runs on CUDA GPUs"
        return "faked as missing" if (backend, device_type) in unavailable else None

    monkeypatch.setattr(_dispatch, "unavailable_reason", fake_reason)
    monkeypatch.setattr(_dispatch, "_resolved_cache", {})
    monkeypatch.setattr(_dispatch, "_warned_auto", set())
    monkeypatch.setattr(_dispatch, "_global_backend", {"name": None})
    monkeypatch.delenv("LOWPEFT_BACKEND", raising=False)
    return unavailable


def _adapter_pick(bottleneck, dtype=torch.bfloat16, device_type="cuda", work=None):
    """As lowpeft.ops.bottleneck_adapter resolves its backend."""
    return _dispatch.resolve("auto", torch.device(device_type),
                             auto_order=adapter_auto_order(device_type, bottleneck, dtype, work))


def test_adapter_order_by_bottleneck_width():
    assert adapter_auto_order("cuda", 1) is None
    assert adapter_auto_order("cuda", AUTO_TRITON_MAX_BOTTLENECK) is None
    assert adapter_auto_order("cuda", AUTO_TRITON_MAX_BOTTLENECK + 1) == ("cuda", "triton", "torch")
    assert adapter_auto_order("cuda", MAX_TRITON_BOTTLENECK) == ("cuda", "triton", "torch")
    # Wide bottlenecks on small work (tokens · dim · bottleneck) stay with triton; unknown work counts as large.
    assert adapter_auto_order("cuda", 128, work=AUTO_TRITON_MAX_WIDE_WORK) is None
    assert adapter_auto_order("cuda", 256, work=4096 * 1024 * 256) is None
    assert adapter_auto_order("cuda", 128, work=AUTO_TRITON_MAX_WIDE_WORK + 1) == ("cuda", "triton", "torch")
    assert adapter_auto_order("cuda", 16, work=2**40) is None
    assert adapter_auto_order("cuda", MAX_TRITON_BOTTLENECK + 1, work=1) == ("cuda", "torch")
    assert adapter_auto_order("cuda", 128, torch.float64, work=1) == ("cuda", "torch")
    assert adapter_auto_order("cuda", MAX_TRITON_BOTTLENECK + 1) == ("cuda", "torch")
    assert adapter_auto_order("cuda", 16, torch.float64) == ("cuda", "torch")
    assert adapter_auto_order("cuda", 16, torch.float32) is None
    assert adapter_auto_order("cpu", 4096) is None


def test_auto_on_cuda_picks_triton_for_narrow_adapters_and_cuda_for_wide_ones_on_large_work(availability):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _adapter_pick(16) == "triton"
        assert _adapter_pick(AUTO_TRITON_MAX_BOTTLENECK) == "triton"
        assert _adapter_pick(AUTO_TRITON_MAX_BOTTLENECK + 1) == "cuda"
        assert _adapter_pick(MAX_TRITON_BOTTLENECK, work=8192 * 4096 * MAX_TRITON_BOTTLENECK) == "cuda"
        assert _adapter_pick(MAX_TRITON_BOTTLENECK, work=4096 * 1024 * MAX_TRITON_BOTTLENECK) == "triton"
        assert _adapter_pick(MAX_TRITON_BOTTLENECK + 1) == "cuda"
        # The default order is untouched for everything else.
        assert _dispatch.resolve("auto", torch.device("cuda"), torch.bfloat16) == "triton"


def test_auto_skips_triton_for_float64_adapters(availability):
    assert _adapter_pick(16, torch.float64) == "cuda"
    availability.add(("cuda", "cuda"))
    _dispatch._resolved_cache.clear()  # availability never changes within a real process
    with pytest.warns(UserWarning, match="uses 'torch' because 'cuda' is unavailable"):
        assert _adapter_pick(16, torch.float64) == "torch"


def test_auto_without_the_cuda_extension_warns_once_and_takes_the_next(availability):
    availability.add(("cuda", "cuda"))
    with pytest.warns(UserWarning, match="uses 'triton' because 'cuda' is unavailable"):
        assert _adapter_pick(128) == "triton"
    _dispatch._resolved_cache.clear()  # resolve again (not from the memo): the de-duplication must hold
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _adapter_pick(200) == "triton"  # the same situation: no second warning
    # Wider than the triton kernels take: plain PyTorch (the skipped first choice is the same one, so no new
    # warning).
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _adapter_pick(MAX_TRITON_BOTTLENECK + 1) == "torch"


def test_the_adapter_op_gives_auto_its_work(monkeypatch):
    # work = tokens · dim · bottleneck of the call, leading dimensions flattened.
    import importlib

    adapter_op = importlib.import_module("lowpeft.ops.bottleneck_adapter")  # the module, not the function it exports
    calls = []
    monkeypatch.setattr(adapter_op, "adapter_auto_order", lambda *args: calls.append(args) or None)
    h = torch.randn(2, 5, 16)
    adapter_op.bottleneck_adapter(h, torch.randn(4, 16), None, torch.randn(16, 4), None, backend="torch")
    assert calls == [("cpu", 4, torch.float32, 2 * 5 * 16 * 4)]


def test_auto_on_the_cpu_ignores_the_width(availability):
    assert _adapter_pick(16, torch.float32, "cpu") == "cpu"
    assert _adapter_pick(1024, torch.float32, "cpu") == "cpu"


def test_an_explicit_choice_is_kept_whatever_the_width(availability):
    for bottleneck in (16, 128, 1024):
        order = adapter_auto_order("cuda", bottleneck)
        assert _dispatch.resolve("triton", torch.device("cuda"), auto_order=order) == "triton"
    _dispatch.set_backend("triton")
    assert _adapter_pick(128) == "triton"
    availability.add(("cuda", "cuda"))
    with pytest.raises(ValueError, match="'cuda' was requested"):
        _dispatch.resolve("cuda", torch.device("cuda"), auto_order=adapter_auto_order("cuda", 128))


def test_the_report_says_what_auto_picks_for_adapters(availability):
    report = _dispatch.backends("cuda")
    assert report["auto"]["picks"] == "triton"
    assert report["auto"]["adapter_picks"] == {
        f"bottleneck <= {AUTO_TRITON_MAX_BOTTLENECK}": "triton",
        f"bottleneck > {AUTO_TRITON_MAX_BOTTLENECK}, tokens·dim·bottleneck <= 2^32": "triton",
        f"bottleneck > {AUTO_TRITON_MAX_BOTTLENECK}, tokens·dim·bottleneck > 2^32": "cuda",
    }


def test_the_report_warns_of_nothing_and_every_entry_has_a_reason(availability):
    # A missing backend is in the report's reason; the fall-back warning is for calls, and the report must not
    # use up its one-time de-duplication either.
    availability.add(("cuda", "cuda"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        report = _dispatch.backends("cuda")
    assert report["cuda"] == {"available": False, "reason": "faked as missing"}
    assert report["auto"]["adapter_picks"][
        f"bottleneck > {AUTO_TRITON_MAX_BOTTLENECK}, tokens·dim·bottleneck > 2^32"] == "triton"
    assert all("reason" in entry and "available" in entry for entry in report.values())
    assert report["auto"]["reason"] is None
    with pytest.warns(UserWarning, match="uses 'triton' because 'cuda' is unavailable"):
        assert _adapter_pick(128) == "triton"


@pytest.mark.parametrize("setting,words", [("bogus", "LOWPEFT_BACKEND: expected one of"),
                                           ("cuda", "'cuda' was requested but cannot run on cpu")])
def test_the_report_raises_for_no_global_setting_and_says_why_auto_cannot_run(monkeypatch, setting, words):
    # An invalid $LOWPEFT_BACKEND, or one that cannot run on the device type, makes every "auto" call fail: the
    # report says so for "auto" (it raised before) and still reports each backend.
    monkeypatch.setenv("LOWPEFT_BACKEND", setting)
    report = _dispatch.backends("cpu")
    assert report["auto"]["available"] is False and words in report["auto"]["reason"]
    assert report["auto"]["picks"] is None and set(report["auto"]["adapter_picks"].values()) == {None}
    assert report["torch"] == {"available": True, "reason": None}
    monkeypatch.setenv("LOWPEFT_BACKEND", "torch")
    assert _dispatch.backends("cpu")["auto"]["picks"] == "torch"  # a valid setting: what auto calls run


def test_info_prints_the_adapter_picks_where_they_differ(capsys, availability):
    from lowpeft import cli

    report = {"versions": {}, "device": {"type": "cuda"}, "global_backend": "auto", "global_backend_error": None,
              "extension": "loaded",
              "backends": {"cuda": {"torch": {"available": True, "reason": None},
                                    "auto": {"available": True, "picks": "triton",
                                             "adapter_picks": _dispatch.backends("cuda")["auto"]["adapter_picks"]}}}}
    cli._print_info(report)
    assert ("auto    picks triton (bottleneck adapters, bottleneck <= 64: triton, bottleneck > 64, "
            "tokens·dim·bottleneck <= 2^32: triton, bottleneck > 64, tokens·dim·bottleneck > 2^32: cuda)") in (
        capsys.readouterr().out)
    report["backends"]["cuda"]["auto"]["adapter_picks"]["bottleneck > 64, tokens·dim·bottleneck > 2^32"] = "triton"
    cli._print_info(report)
    assert "auto    picks triton\n" in capsys.readouterr().out


def test_a_backend_name_of_the_wrong_type_or_value_is_a_named_error():
    with pytest.raises(TypeError, match="^backend: .* got int 3"):
        _dispatch.set_backend(3)
    with pytest.raises(ValueError, match="^backend: .* got 'gpu'"):
        _dispatch.set_backend("gpu")
    assert _dispatch.get_backend() in _dispatch.CHOICES
