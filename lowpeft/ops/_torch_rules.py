# How lowpeft's ops meet two of torch's own mechanisms.
# Autocast: an op's inputs are cast as torch's autocast casts those of a lower-precision op (floating tensors but
# float64 ones; a float64 nn.Linear stays float64 under autocast).
# Second-order gradients are refused: every lowpeft op computes its backward with fused kernels (the torch backend
# with formulas around saved, non-differentiable intermediates), so a backward with create_graph=True would record a
# graph that silently misses terms (the adapter's Hessian-vector product came out 8 % off on the torch backend).
# Trade-off: the error is raised in the first backward, as soon as create_graph=True reaches the op (grad mode is on
# inside a backward only then), rather than deferred to the second as @once_differentiable does, so every backend,
# the compiled ones' C++ autograd included, fails the same way at the same point.
from __future__ import annotations

import torch

__all__ = ["autocast_dtype", "autocast_compute_dtype", "autocast_cast", "refuse_double_backward",
           "DOUBLE_BACKWARD_MESSAGE"]

DOUBLE_BACKWARD_MESSAGE = (
    "second-order gradients (a backward with create_graph=True) are not supported: the backward runs fused "
    "kernels, so they would silently miss terms; compute them with plain PyTorch layers (lowpeft.reference)"
)


def autocast_dtype(tensor):
    """Autocast's dtype on `tensor`'s device where autocast is on there, else None; also None for a non-tensor and
    for devices autocast does not know (meta tensors: torch.is_autocast_enabled raises for them). Under
    torch.compile the availability check is skipped, as torch 2.11's dynamo cannot trace it (a graph break, an error
    with fullgraph=True): there only meta tensors are recognised, by name."""
    if not isinstance(tensor, torch.Tensor):
        return None
    device_type = tensor.device.type
    if device_type == "meta":
        return None
    if not torch.compiler.is_compiling() and not torch.amp.is_autocast_available(device_type):
        return None
    if not torch.is_autocast_enabled(device_type):
        return None
    return torch.get_autocast_dtype(device_type)


def autocast_compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype an op on `x` computes in: autocast's where autocast is on for x's device, else x's own; a float64
    x keeps float64 (torch's autocast leaves float64 alone)."""
    dtype = autocast_dtype(x)
    return x.dtype if dtype is None or x.dtype == torch.float64 else dtype


def autocast_cast(tensor, dtype: torch.dtype):
    """`tensor` in autocast's `dtype` where torch's autocast would cast it (a floating tensor, not float64), else
    itself (None stays None)."""
    if tensor is None or not tensor.is_floating_point() or tensor.dtype == torch.float64:
        return tensor
    return tensor.to(dtype)


def refuse_double_backward(op: str) -> None:
    """Raise a RuntimeError naming `op` when its backward runs with create_graph=True."""
    if torch.is_grad_enabled():
        raise RuntimeError(f"{op}: {DOUBLE_BACKWARD_MESSAGE}")
