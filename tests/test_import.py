# The lean-import contract (DESIGN §4): `import lowpeft` and touching its public names imports neither triton
# nor transformers / peft, loads no compiled extension and never initialises CUDA.
import subprocess
import sys

PROBE = """
import sys, torch, lowpeft
lowpeft.LoRALinear, lowpeft.ops.lora_linear, lowpeft.set_backend
heavy = [m for m in ("triton", "transformers", "peft", "lowpeft._C") if m in sys.modules]
print("HEAVY", heavy, "CUDA_INIT", torch.cuda.is_initialized())
"""


def test_import_is_lean_and_never_touches_the_gpu():
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout
    assert "HEAVY [] CUDA_INIT False" in out, out


def test_unknown_attribute_is_an_attribute_error():
    import lowpeft

    try:
        lowpeft.not_a_name
    except AttributeError as exc:
        assert "not_a_name" in str(exc)
    else:
        raise AssertionError("expected AttributeError")


def test_set_backend_validates_and_env_variable_is_read(monkeypatch):
    import pytest

    import lowpeft
    from lowpeft.ops import _dispatch

    with pytest.raises(ValueError, match="backend: expected one of"):
        lowpeft.set_backend("fastest")
    monkeypatch.setenv("LOWPEFT_BACKEND", "torch")
    assert lowpeft.get_backend() == "torch"
    lowpeft.set_backend("auto")
    assert lowpeft.get_backend() == "auto"
    monkeypatch.setenv("LOWPEFT_BACKEND", "nope")
    _dispatch._global_backend["name"] = None
    with pytest.raises(ValueError, match="LOWPEFT_BACKEND"):
        lowpeft.get_backend()
