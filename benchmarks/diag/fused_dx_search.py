# Finds the shapes at which the fused Triton GEMM strategy (LOWPEFT_TRITON_GEMM=fused) hits an illegal memory
# access on the GPU (the hypothesis run of 2026-11-24, session 3, crashed in _lora_dx_kernel's autotuning at
# float16 without saying which example). An illegal access kills the CUDA context, so each batch of cases runs
# in a child process with CUDA_LAUNCH_BLOCKING=1; the parent restarts after the failing case and prints them all.
import itertools
import os
import subprocess
import sys
import time
import traceback

CASES = list(itertools.product(
    ["float16", "bfloat16"], [1, 33, 123], [1, 7, 16, 33, 64, 123], [1, 7, 16, 33, 64, 123], [1, 8, 40], [0.0, 0.3],
))


def child(start: int) -> None:
    import torch

    from lowpeft.ops import lora_linear

    for index in range(start, len(CASES)):
        dtype_name, tokens, width, out, rank, p = CASES[index]
        print(f"CASE {index} {CASES[index]}", flush=True)
        dtype = getattr(torch, dtype_name)
        make = lambda *shape: torch.randn(*shape, device="cuda").to(dtype)  # noqa: E731
        x = make(tokens, width).requires_grad_(True)
        weight, lora_A = make(out, width), make(rank, width).requires_grad_(True)
        lora_B = make(out, rank).requires_grad_(True)
        try:
            y = lora_linear(x, weight, None, lora_A, lora_B, 0.5, p, backend="triton", seed=torch.tensor(7))
            torch.autograd.grad(y, [x, lora_A, lora_B], torch.randn_like(y))
            torch.cuda.synchronize()
        except Exception:  # noqa: BLE001 — report and let the parent restart past it
            print(f"FAIL {index} {CASES[index]}\n" + traceback.format_exc()[-1500:], flush=True)
            sys.exit(3)


def parent(budget_s: float) -> None:
    env = dict(os.environ, CUDA_LAUNCH_BLOCKING="1", LOWPEFT_TRITON_GEMM="fused")
    start, failures, began = 0, [], time.time()
    while start < len(CASES) and time.time() - began < budget_s:
        try:
            run = subprocess.run([sys.executable, __file__, "--child", str(start)], env=env, capture_output=True,
                                 text=True, timeout=max(10.0, budget_s - (time.time() - began)))
        except subprocess.TimeoutExpired:
            print(f"time budget spent inside a batch started at case {start}")
            break
        lines = run.stdout.splitlines()
        cases = [line for line in lines if line.startswith("CASE ")]
        if run.returncode == 0:
            start = len(CASES)
            break
        last = int(cases[-1].split()[1]) if cases else start
        failures.append(last)
        print(f"failing case {last}: {CASES[last]} (exit {run.returncode})")
        print("\n".join(line for line in (run.stdout + run.stderr).splitlines()[-12:]))
        start = last + 1
    print(f"searched {start} of {len(CASES)} cases in {time.time() - began:.0f} s; failing: "
          + ", ".join(str(CASES[i]) for i in failures))


if __name__ == "__main__":
    if sys.argv[1:2] == ["--child"]:
        child(int(sys.argv[2]))
    else:
        parent(float(sys.argv[1]) if len(sys.argv) > 1 else 200.0)
