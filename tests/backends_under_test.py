# Which (backend, device, dtype) combinations the shared property tests cover on this machine.
#
# CPU: torch and the compiled cpu backend in float64/float32/float16 (bfloat16 too), triton under
# TRITON_INTERPRET=1 in float32/float16 (the interpreter's bf16 tl.dot is wrong; float64 only in the gradcheck
# tests). GPU: every backend
# in float32/float16/bfloat16. In CI (CI=true) the compiled extension is required: its absence fails.
import os

import pytest
import torch

from lowpeft.ops import _dispatch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

_DTYPES = {
    ("torch", "cpu"): (torch.float64, torch.float32, torch.bfloat16),
    ("cpu", "cpu"): (torch.float64, torch.float32, torch.bfloat16),
    ("triton", "cpu"): (torch.float32, torch.float16),
    ("torch", "cuda"): (torch.float32, torch.float16, torch.bfloat16),
    ("triton", "cuda"): (torch.float32, torch.float16, torch.bfloat16),
    ("cuda", "cuda"): (torch.float32, torch.float16, torch.bfloat16),
}


def backend_params(device: str = DEVICE):
    """pytest params (backend, device, dtype); unavailable backends are skipped with their reason, except the
    compiled ones in CI, which must be there."""
    params = []
    for backend in _dispatch.BACKENDS:
        dtypes = _DTYPES.get((backend, device))
        if dtypes is None:
            continue
        reason = _dispatch.unavailable_reason(backend, device)
        required = os.environ.get("CI") == "true" and backend in ("cpu",)
        for dtype in dtypes:
            marks = []
            if reason is not None and not required:
                marks.append(pytest.mark.skip(reason=f"backend {backend} unavailable: {reason}"))
            params.append(pytest.param(backend, device, dtype, marks=marks, id=f"{backend}-{device}-{str(dtype)[6:]}"))
    return params


def examples_for(backend: str, device: str, base: int | None = None) -> int:
    """Hypothesis example budget: the profile's max_examples ($LOWPEFT_HYPOTHESIS_EXAMPLES, tests/conftest.py)
    unless a test asks for fewer; a third of it under the Triton interpreter, ~1000x slower than compiled code."""
    from hypothesis import settings

    budget = settings.default.max_examples if base is None else min(base, settings.default.max_examples)
    if backend == "triton" and device == "cpu":
        return max(4, budget // 3)
    return budget
