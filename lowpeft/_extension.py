# Lazy loader for the compiled extension `lowpeft._C` (csrc/).
#
# Nothing is loaded at `import lowpeft`: the first op that needs the cpu or cuda backend calls `load()`.
# Trade-off: a missing or broken build surfaces as a clear, cached reason string (shown by
# `lowpeft.backends()` and `lowpeft info`) instead of an ImportError at import time.
from __future__ import annotations

import importlib
import os

_state: dict[str, object] = {}


class ExtensionUnavailable(RuntimeError):
    """The compiled extension lowpeft._C cannot be used; the message says why."""


def load():
    """Import lowpeft._C once (registering its lowpeft:: ops) and return it, or raise ExtensionUnavailable."""
    if "module" in _state:
        return _state["module"]
    if "error" in _state:
        raise ExtensionUnavailable(_state["error"])
    if os.environ.get("LOWPEFT_SKIP_EXT") == "1":
        _state["error"] = "LOWPEFT_SKIP_EXT=1 is set, so the compiled extension lowpeft._C is not loaded"
        raise ExtensionUnavailable(_state["error"])
    try:
        import torch  # noqa: F401  (the extension links against libtorch)

        module = importlib.import_module("lowpeft._C")
    except ImportError as exc:
        _state["error"] = (
            f"the compiled extension lowpeft._C is not built or does not load ({exc}); "
            "build it with `pip install --no-build-isolation -e .` (needs a C++ compiler)"
        )
        raise ExtensionUnavailable(_state["error"]) from exc
    _state["module"] = module
    return module


def unavailable_reason() -> str | None:
    """None when the extension loads, else the reason it does not."""
    try:
        load()
    except ExtensionUnavailable as exc:
        return str(exc)
    return None


def has_cuda_kernels() -> bool:
    """Whether the loaded extension was built with its CUDA sources."""
    module = load()
    return bool(getattr(module, "WITH_CUDA", False))
