# Backend selection shared by every op: which backends exist, which can run on a device and why not.
#
# Backends: "triton" (lowpeft/kernels, CUDA GPUs; on the CPU only under TRITON_INTERPRET=1), "cuda" and
# "cpu" (the compiled extension lowpeft._C), "torch" (plain PyTorch, the reference). "auto" resolves per
# device, and an op may pass its own measured order for a call (the adapter does, by bottleneck width).
# Trade-off: resolution happens in Python before the torch.library op is called (the op receives
# a concrete backend name as a string argument), so torch.compile sees one opaque op per call and the
# choice costs one dict lookup; an explicitly requested backend that cannot run is an error, never a
# silent fall-back.
from __future__ import annotations

import importlib.util
import os
import warnings

import torch

from .. import _extension

BACKENDS = ("triton", "cuda", "cpu", "torch")
# The backends of the compiled extension lowpeft._C (whose ops also carry their autograd in C++).
COMPILED_BACKENDS = ("cpu", "cuda")
CHOICES = ("auto",) + BACKENDS

_global_backend = {"name": None}
_warned_auto = set()


def _check_name(name, argument="backend"):
    if not isinstance(name, str):
        raise TypeError(f"{argument}: expected one of {CHOICES} (a str), got {type(name).__name__} {name!r}")
    if name not in CHOICES:
        raise ValueError(f"{argument}: expected one of {CHOICES}, got {name!r}")
    return name


def set_backend(name: str) -> None:
    """Choose the backend for every lowpeft op whose module or call says backend="auto"."""
    _global_backend["name"] = _check_name(name)


def get_backend() -> str:
    """The global backend: set_backend()'s choice, else $LOWPEFT_BACKEND, else "auto"."""
    if _global_backend["name"] is not None:
        return _global_backend["name"]
    return _check_name(os.environ.get("LOWPEFT_BACKEND", "auto"), "LOWPEFT_BACKEND")


def triton_interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


_availability_cache: dict[tuple[str, str, bool], str | None] = {}


def unavailable_reason(backend: str, device_type: str) -> str | None:
    """None when `backend` can run on tensors of `device_type`, else why it cannot (memoised per process:
    what is installed does not change while it runs)."""
    key = (backend, device_type, triton_interpreting())
    if key not in _availability_cache:
        _availability_cache[key] = _find_unavailable_reason(backend, device_type)
    return _availability_cache[key]


def _find_unavailable_reason(backend: str, device_type: str) -> str | None:
    if backend == "torch":
        return None
    if backend == "triton":
        if importlib.util.find_spec("triton") is None:
            return "triton is not installed (pip install triton)"
        if device_type == "cuda":
            return None
        if device_type == "cpu" and triton_interpreting():
            return None
        if device_type == "cpu":
            return "triton runs on CUDA GPUs; on the CPU only under TRITON_INTERPRET=1 (for tests)"
        return f"triton kernels do not run on {device_type} tensors"
    if backend in COMPILED_BACKENDS:
        if device_type != backend:
            return f"the {backend} backend runs on {backend} tensors, not {device_type} ones"
        reason = _extension.unavailable_reason()
        if reason is not None:
            return reason
        if backend == "cuda" and not _extension.has_cuda_kernels():
            return "lowpeft._C was built without its CUDA sources (no CUDA torch or no nvcc at build time)"
        return None
    raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")


def _auto_order(device_type: str) -> tuple[str, ...]:
    """Fastest first, by measurement: on the H100 (benchmarks/results/lora_h100.md, run 8) the triton backend's
    LoRA layer ran at 1.33x the frozen Linear against the cuda backend's 2.05x; on 2 CPU cores the cpu backend
    beats torch (cpu_native.md)."""
    if device_type == "cuda":
        return ("triton", "cuda", "torch")
    if device_type == "cpu":
        return ("cpu", "torch")
    return ("torch",)


# float64 has no tensor-core path: on CUDA the Triton kernels take 32- and 16-bit floats only (float64 runs
# under the CPU interpreter, for gradcheck).
_DTYPES_UNSUPPORTED = {("triton", "cuda"): ("float64",)}


def _dtype_reason(backend: str, device_type: str, dtype_name: str | None) -> str | None:
    if dtype_name in _DTYPES_UNSUPPORTED.get((backend, device_type), ()):
        return f"the {backend} backend does not take {dtype_name} tensors on {device_type}"
    return None


_resolved_cache: dict[tuple, str] = {}


def resolve(backend: str, device: torch.device, dtype: torch.dtype | None = None,
            auto_order: tuple[str, ...] | None = None) -> str:
    """The concrete backend to run for a call on `device` with inputs of `dtype` ("auto" and the global choice
    resolved). `auto_order`: the calling op's own fastest-first order for this call (by measurement), instead of
    the device's default; the first available one that takes `dtype` is picked. Memoised per (backend, device
    type, dtype, order, global choice): it runs on every layer call, where host time is what small layers pay
    for."""
    key = (backend, device.type, dtype, auto_order, _global_backend["name"] or os.environ.get("LOWPEFT_BACKEND"))
    name = _resolved_cache.get(key)
    if name is None:
        name = _resolve_for_device_type(backend, device.type, None if dtype is None else str(dtype)[6:], auto_order)
        _resolved_cache[key] = name
    return name


def _resolve_for_device_type(backend: str, device_type: str, dtype_name: str | None = None,
                             auto_order: tuple[str, ...] | None = None, warn: bool = True) -> str:
    device = torch.device(device_type)
    name = _check_name(backend)
    if name == "auto":
        name = get_backend()
    if name != "auto":
        reason = unavailable_reason(name, device.type) or _dtype_reason(name, device.type, dtype_name)
        if reason is not None:
            raise ValueError(f"backend: {name!r} was requested but cannot run on {device.type}: {reason}")
        return name
    order = auto_order or _auto_order(device.type)
    for candidate in order:
        if _dtype_reason(candidate, device.type, dtype_name) is not None:
            continue
        if unavailable_reason(candidate, device.type) is None:
            if (warn and candidate != order[0] and _dtype_reason(order[0], device.type, dtype_name) is None
                    and (device.type, order[0]) not in _warned_auto):
                _warned_auto.add((device.type, order[0]))
                warnings.warn(
                    f"lowpeft: backend 'auto' on {device.type} uses {candidate!r} because {order[0]!r} is "
                    f"unavailable: {unavailable_reason(order[0], device.type)}",
                    stacklevel=3,
                )
            return candidate
    raise AssertionError("the torch backend is always available")


# Evaluated at trace time under torch.compile (a constant in the graph, no graph break). This is exactly what
# torch.compiler.assume_constant_result does; it is spelled out because calling that decorator imports
# torch._dynamo (and with it triton) at `import lowpeft`.
_resolve_for_device_type._dynamo_marked_constant = True


def backends(device_type: str | None = None) -> dict[str, dict[str, object]]:
    """For each backend: whether it runs on the given device type (default: cuda if present, else cpu)
    and, where it does not, why; for "auto" also what it picks (for LoRA, and for adapters by bottleneck width and
    work, tokens · dim · bottleneck), through the global choice when one is set. A report: it warns of nothing and
    raises for nothing (a missing backend is in its reason; a global choice that is invalid or cannot run here makes
    "auto" unavailable, with that reason and no picks)."""
    if device_type is None:
        device_type = "cuda" if torch.cuda.is_available() else "cpu"
    report = {}
    for name in BACKENDS:
        reason = unavailable_reason(name, device_type)
        report[name] = {"available": reason is None, "reason": reason}
    device = torch.device(device_type)
    # Imported here: the adapter's op module imports this one at its top.
    from .bottleneck_adapter import AUTO_TRITON_MAX_BOTTLENECK, AUTO_TRITON_MAX_WIDE_WORK, adapter_auto_order

    narrow, wide = AUTO_TRITON_MAX_BOTTLENECK, AUTO_TRITON_MAX_BOTTLENECK + 1
    work_limit = f"2^{AUTO_TRITON_MAX_WIDE_WORK.bit_length() - 1}"
    small_work, large_work = f"tokens·dim·bottleneck <= {work_limit}", f"tokens·dim·bottleneck > {work_limit}"

    def pick(auto_order=None):
        return _resolve_for_device_type("auto", device.type, auto_order=auto_order, warn=False)

    orders = {
        f"bottleneck <= {narrow}": adapter_auto_order(device_type, narrow),
        f"bottleneck > {narrow}, {small_work}": adapter_auto_order(device_type, wide, work=AUTO_TRITON_MAX_WIDE_WORK),
        f"bottleneck > {narrow}, {large_work}": adapter_auto_order(device_type, wide),
    }
    try:
        report["auto"] = {"available": True, "reason": None, "picks": pick(),
                          "adapter_picks": {case: pick(order) for case, order in orders.items()}}
    except ValueError as error:
        # "auto" resolves through the global choice (set_backend / $LOWPEFT_BACKEND); one that is invalid or cannot
        # run on this device type makes every auto call fail, which is what the report says instead of raising.
        report["auto"] = {"available": False, "reason": str(error), "picks": None,
                          "adapter_picks": {case: None for case in orders}}
    return report
