# Diagnostic for the GPU build of lowpeft._C: which named errors raised inside the native ops reach Python as
# exceptions, and which crash the process? Each bad-input case of tests/test_native_backends.py runs in its own
# subprocess, so one crash does not hide the others (the H100 build segfaulted inside
# test_raw_lora_bad_input_is_a_named_error on 2026-11-24 while the same source passes on the CPU build).
import subprocess
import sys

CASES = {
    "3-D x": "x=torch.randn(3, 4, 16)",
    "x width": "x=torch.randn(3, 15)",
    "float64 weight": "weight=torch.randn(12, 16, dtype=torch.float64)",
    "int32 x": "x=torch.ones(3, 16, dtype=torch.int32)",
    "lora_A width": "lora_A=torch.randn(4, 15)",
    "rank 0": "lora_A=torch.randn(0, 16)",
    "lora_B shape": "lora_B=torch.randn(12, 5)",
    "bias shape": "bias=torch.randn(11)",
    "dropout_p = 1": "dropout_p=1.0",
    "scaling inf": "scaling=float('inf')",
}
SCRIPT = """
import torch
from lowpeft import _extension
_extension.load()
args = dict(x=torch.randn(3, 16), weight=torch.randn(12, 16), bias=torch.randn(12), lora_A=torch.randn(4, 16),
            lora_B=torch.randn(12, 4), scaling=0.5, dropout_p=0.1, seed=1)
args.update(dict({change}))
try:
    torch.ops.lowpeft.native_lora_linear_fwd(*args.values())
    print("no error raised")
except Exception as exc:
    print(type(exc).__name__, str(exc).splitlines()[0])
"""
for name, change in CASES.items():
    run = subprocess.run([sys.executable, "-c", SCRIPT.format(change=change)], capture_output=True, text=True,
                         timeout=120)
    outcome = run.stdout.strip() or run.stderr.strip().splitlines()[-1:]
    print(f"{name:16s} exit {run.returncode:4d}  {outcome}", flush=True)
    if run.returncode < 0:  # a crash: its native stack, when the LD_PRELOAD helper (benchmarks/diag/) is loaded
        print("\n".join(line for line in run.stderr.splitlines() if "(" in line and "+0x" in line)[:6000])
