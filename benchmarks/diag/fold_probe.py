# Probe (one device call): the cuda fold kernel (csrc/cuda/fold_low_rank.cu, y += s·S Bᵀ in one pass) against
# cuBLAS's beta = 1 GEMM that it replaces, through lowpeft::native_lora_linear_fwd at p = 0 (bf16): the forward's
# time minus its two plain GEMMs is the fold's cost; also the largest difference between the two results.
#
# Trade-off: the fold is not exposed as an op of its own, so it is timed by difference inside the forward op.
import os
import sys

import torch
import torch.nn.functional as F
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lowpeft._extension import load  # noqa: E402

SHAPES = [(8192, 4096, 4096, 16), (8192, 4096, 11008, 16), (8192, 2048, 2048, 16), (8192, 2048, 5632, 16),
          (8192, 5632, 2048, 16), (8192, 2048, 256, 16), (8192, 4096, 4096, 32), (2048, 1024, 1024, 16)]


def main():
    load()
    torch.manual_seed(0)
    bench = triton.testing.do_bench
    print(f"{'shape':28s} {'base us':>8s} {'fold ours':>10s} {'fold cuBLAS':>12s} {'max |diff|/max':>15s}")
    for tokens, width, out, rank in SHAPES:
        x = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16)
        w = (torch.randn(out, width, device="cuda") * width**-0.5).to(torch.bfloat16)
        a = (torch.randn(rank, width, device="cuda") * width**-0.5).to(torch.bfloat16)
        b = (torch.randn(out, rank, device="cuda") * rank**-0.5).to(torch.bfloat16)

        def ours():
            return torch.ops.lowpeft.native_lora_linear_fwd(x, w, None, a, b, 2.0, 0.0, 0)[0]

        def base():
            return F.linear(x, a), F.linear(x, w)

        def cublas():
            shrink, y = F.linear(x, a), F.linear(x, w)
            return y.addmm_(shrink, b.t(), alpha=2.0)

        t_base, t_ours, t_cublas = bench(base), bench(ours), bench(cublas)
        reference = cublas().float()
        diff = ((ours().float() - reference).abs().max() / reference.abs().max()).item()
        print(f"{tokens}x{width}->{out} r={rank:<3d}      {t_base * 1e3:8.1f} {(t_ours - t_base) * 1e3:10.1f} "
              f"{(t_cublas - t_base) * 1e3:12.1f} {diff:15.2e}")


if __name__ == "__main__":
    sys.exit(main())
