# Diagnostic for the GPU build of lowpeft._C: does a named error raised inside a native op (a CPU tensor of the
# wrong shape) reach Python as an exception, or crash the process? Run under gdb when it is installed, so the
# native stack of a crash is printed (the segfault seen on the H100 build, 2026-11-24, in
# test_raw_lora_bad_input_is_a_named_error).
import sys

import torch

from lowpeft import _extension

_extension.load()
print("torch", torch.__version__, "cuda kernels", _extension.has_cuda_kernels(), flush=True)
cases = {
    "3-D x": dict(x=torch.randn(3, 4, 16)),
    "dropout_p = 1": dict(dropout_p=1.0),
    "float64 weight": dict(weight=torch.randn(12, 16, dtype=torch.float64)),
}
for name, change in cases.items():
    args = dict(x=torch.randn(3, 16), weight=torch.randn(12, 16), bias=torch.randn(12), lora_A=torch.randn(4, 16),
                lora_B=torch.randn(12, 4), scaling=0.5, dropout_p=0.1, seed=1)
    args.update(change)
    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        moved = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in args.items()}
        print(f"{name} on {device}: calling", flush=True)
        try:
            torch.ops.lowpeft.native_lora_linear_fwd(*moved.values())
            print("  no error raised", flush=True)
        except Exception as exc:  # noqa: BLE001 — the point is to see which type arrives
            print(f"  {type(exc).__name__}: {str(exc).splitlines()[0]}", flush=True)
sys.exit(0)
