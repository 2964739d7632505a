# Shared pytest set-up: Triton's interpreter on machines without CUDA (set before triton is imported),
# deterministic hypothesis profiles, and the list of backends each test file parametrizes over.
import os

import pytest


def _cuda_present() -> bool:
    import torch

    return torch.cuda.is_available()


if not _cuda_present():
    os.environ.setdefault("TRITON_INTERPRET", "1")

from hypothesis import HealthCheck, settings  # noqa: E402

settings.register_profile(
    "ci",
    max_examples=int(os.environ.get("LOWPEFT_HYPOTHESIS_EXAMPLES", "50")),
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    print_blob=True,
)
settings.load_profile("ci")


def pytest_report_header(config):
    import torch

    from lowpeft.ops import _dispatch

    device = "cuda" if torch.cuda.is_available() else "cpu"
    lines = [f"lowpeft test device: {device}; TRITON_INTERPRET={os.environ.get('TRITON_INTERPRET')}"]
    for name, info in _dispatch.backends(device).items():
        lines.append(f"  backend {name}: {info}")
    return lines


@pytest.fixture(autouse=True)
def _fresh_global_backend():
    from lowpeft.ops import _dispatch

    _dispatch._global_backend["name"] = None
    yield
    _dispatch._global_backend["name"] = None
