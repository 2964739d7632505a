# One LoRA layer call on the fused Triton GEMM strategy at a given shape, forward and backward synchronised
# separately so a fault names its phase; meant to run under compute-sanitizer (which names the kernel and the
# faulting access). Usage: fused_one_case.py DTYPE T K N r p
import os
import sys

import torch

os.environ["LOWPEFT_TRITON_GEMM"] = "fused"
from lowpeft.ops import lora_linear  # noqa: E402

dtype_name, tokens, width, out, rank, p = sys.argv[1], *map(int, sys.argv[2:6]), float(sys.argv[6])
dtype = getattr(torch, dtype_name)
make = lambda *shape: torch.randn(*shape, device="cuda").to(dtype)  # noqa: E731
x = make(tokens, width).requires_grad_(True)
weight, lora_A, lora_B = make(out, width), make(rank, width).requires_grad_(True), make(out, rank).requires_grad_(True)
y = lora_linear(x, weight, None, lora_A, lora_B, 0.5, p, backend="triton", seed=torch.tensor(7))
torch.cuda.synchronize()
print("forward ok", flush=True)
torch.autograd.grad(y, [x, lora_A, lora_B], torch.randn_like(y))
torch.cuda.synchronize()
print("backward ok", flush=True)
