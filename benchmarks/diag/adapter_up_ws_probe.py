# Probe (one device call): can a persistent TMA kernel with triton's Hopper warp specialisation run the wide
# adapter's up GEMM, out = h + s · a W_upᵀ (K = M = 256), at the copy floor of h and out on the H100?
# Today's up_columns kernel takes 73 µs alone (90 in the step) at 8192 x 4096, cuBLAS's addmm with the residual
# 63 µs, one read + one write of h ~40 µs (NOTES_adapter.md, session 8): a program waits for its tensor-core work
# between loads. Timed side by side with do_bench (median, µs), bf16:
#   copy          out.copy_(h)                                     (the floor: one read, one write)
#   cublas        torch.addmm(h, a, W_upᵀ, alpha=s)
#   up_columns    lowpeft's wide-path kernel as the library launches it
#   ws            persistent tile loop over [BLOCK_T, BLOCK_D] tiles, TMA loads of a / W_up / h, TMA store of out,
#                 K loop over the bottleneck in BLOCK_K steps; each config with warp_specialize on and off
# The backward's dh = g + dz W_down is the same GEMM with W_down [M, D] read K-major (W_KMAJOR), timed too.
# Trade-off: a standalone kernel, not wired into lowpeft: it decides whether the wide path is worth rebuilding.
import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

from lowpeft.kernels import bottleneck_adapter as kernels


@triton.jit
def _up_ws_kernel(a_desc, w_desc, h_desc, out_desc, T, D, scale,
                  M: tl.constexpr, W_KMAJOR: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
                  BLOCK_K: tl.constexpr, NUM_SMS: tl.constexpr, WARP_SPECIALIZE: tl.constexpr,
                  FLATTEN: tl.constexpr):
    num_t = tl.cdiv(T, BLOCK_T)
    num_d = tl.cdiv(D, BLOCK_D)
    for tile in tl.range(tl.program_id(0), num_t * num_d, NUM_SMS, flatten=FLATTEN,
                         warp_specialize=WARP_SPECIALIZE):
        off_t = (tile // num_d) * BLOCK_T
        off_d = (tile % num_d) * BLOCK_D
        acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
        for k in range(0, M, BLOCK_K):
            a = a_desc.load([off_t, k])
            if W_KMAJOR:
                acc = tl.dot(a, w_desc.load([k, off_d]), acc)
            else:
                acc = tl.dot(a, w_desc.load([off_d, k]).T, acc)
        h = h_desc.load([off_t, off_d])
        out_desc.store([off_t, off_d], (h.to(tl.float32) + scale * acc).to(out_desc.dtype))


CONFIGS = [  # BLOCK_T, BLOCK_D, BLOCK_K, warps, stages
    (128, 128, 64, 4, 3), (128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (128, 128, 128, 8, 2), (64, 256, 64, 4, 3),
    (128, 64, 64, 4, 4), (64, 128, 64, 4, 4),
]


def run_ws(a, w, h, out, scale, config, ws, flatten, sms, w_kmajor):
    bt, bd, bk, warps, stages = config
    descs = [TensorDescriptor.from_tensor(a, [bt, bk]),
             TensorDescriptor.from_tensor(w, [bk, bd] if w_kmajor else [bd, bk]),
             TensorDescriptor.from_tensor(h, [bt, bd]), TensorDescriptor.from_tensor(out, [bt, bd])]
    tiles = triton.cdiv(h.shape[0], bt) * triton.cdiv(h.shape[1], bd)
    _up_ws_kernel[(min(sms, tiles),)](*descs, h.shape[0], h.shape[1], scale, M=a.shape[1], W_KMAJOR=w_kmajor,
                                      BLOCK_T=bt, BLOCK_D=bd, BLOCK_K=bk, NUM_SMS=sms, WARP_SPECIALIZE=ws,
                                      FLATTEN=flatten, num_warps=warps, num_stages=stages)


def main():
    torch.manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    triton.set_allocator(lambda size, alignment, stream: torch.empty(size, device="cuda", dtype=torch.int8))
    print(f"{torch.cuda.get_device_name()} torch {torch.__version__} triton {triton.__version__}")
    for tokens, dim, bottleneck in ((8192, 4096, 256), (4096, 1024, 256), (16384, 8192, 256), (8192, 4096, 128)):
        dt = torch.bfloat16
        h = torch.randn(tokens, dim, device="cuda", dtype=dt)
        a = (torch.randn(tokens, bottleneck, device="cuda") * 0.5).to(dt)
        up_w = (torch.randn(dim, bottleneck, device="cuda") * bottleneck**-0.5).to(dt)
        down_w = up_w.t().contiguous()  # [M, D]: dh's operand, read K-major
        out = torch.empty_like(h)
        scale = 0.5
        reference = h.float() + scale * (a.float() @ up_w.float().t())
        results = {}

        def bench(name, fn, check=True):
            try:
                fn()
                torch.cuda.synchronize()
                error = (out.float() - reference).abs().max().item() if check else float("nan")
                results[name] = (triton.testing.do_bench(fn, warmup=10, rep=50) * 1000, error)
            except Exception as exc:  # a config that does not compile is reported, not fatal
                results[name] = (float("nan"), f"{type(exc).__name__}: {str(exc)[:120]}")

        bench("copy", lambda: out.copy_(h), check=False)
        bench("cublas", lambda: torch.addmm(h, a, up_w.t(), alpha=scale, out=out))
        block_m = kernels._padded_bottleneck(bottleneck)
        plan = kernels.up_columns_plan(block_m, 2)
        splits = kernels._up_columns_splits(tokens, dim, plan, h.device)
        bench("up_columns", lambda: kernels._launch_up_columns(h, a, up_w.stride(0), up_w.stride(1), up_w, None, out,
                                                               None, scale, block_m, plan, splits))
        for config in CONFIGS:
            for ws in (False, True):
                for flatten in (False, True):
                    bench(f"ws{int(ws)} flat{int(flatten)} {config}",
                          lambda: run_ws(a, up_w, h, out, scale, config, ws, flatten, sms, False))
        best = min((v[0], k) for k, v in results.items() if k.startswith("ws") and v[0] == v[0])
        config = tuple(int(x) for x in best[1].split("(")[1].rstrip(")").split(","))
        ws, flatten = best[1][2] == "1", best[1].split()[1][-1] == "1"
        bench(f"dh K-major {best[1]}", lambda: run_ws(a, down_w, h, out, scale, config, ws, flatten, sms, True))
        print(f"\n{tokens} x {dim}, M = {bottleneck} (µs, max |error| against float32)")
        for name, (us, error) in sorted(results.items(), key=lambda item: (item[1][0] != item[1][0], item[1][0])):
            print(f"  {name:<44} {us:8.1f}  {error if isinstance(error, str) else f'{error:.3g}'}")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
