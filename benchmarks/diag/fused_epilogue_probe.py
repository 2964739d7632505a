# Probe (one device call): can a Triton persistent TMA GEMM carry the LoRA term at cuBLAS's speed on the H100?
# y = x Wᵀ (+ s·S Bᵀ) at 8192 x 4096 -> 4096 and -> 11008, bf16, r = 16, timed side by side with do_bench:
#   cublas            torch.mm(x, Wᵀ)                        (the frozen layer's GEMM)
#   cublas+fold       torch.mm, then y.addmm_(S, Bᵀ)          (lowpeft's cuBLAS strategy today, S given)
#   triton            persistent TMA GEMM, TMA store of y     (no LoRA term)
#   triton+lora       the same plus S Bᵀ from two small TMA tiles as one K = r dot, placed before the K loop
#                     (acc initialised to it), after it, or after it with its tiles loaded before the loop
#                     (NOTES_lora version 1's epilogue was the cost there: a masked pointer store, int64 index
#                     math, loads of B and S after the loop)
# each over a few tile configs, with and without warp specialisation (if triton 3.6 compiles it on Hopper) and
# epilogue sub-tiling; the best of each is reported with its error against the float32 reference.
#
# Trade-off: a standalone kernel, not wired into lowpeft: it decides whether the fused strategy is worth
# rebuilding around this structure (benchmarks/NOTES_lora.md, version 5).
import itertools
import json
import os
import sys

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor


@triton.jit
def _tile_of(tile, num_m, num_n, GROUP_M: tl.constexpr):
    in_group = GROUP_M * num_n
    group = tile // in_group
    first_m = group * GROUP_M
    size_m = tl.minimum(num_m - first_m, GROUP_M)
    return first_m + (tile % in_group) % size_m, (tile % in_group) // size_m


@triton.jit
def _gemm_lora_kernel(x_desc, w_desc, s_desc, b_desc, y_desc, M, N, K,
                      LORA: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr, SUBTILE: tl.constexpr,
                      WARP_SPECIALIZE: tl.constexpr, FLATTEN: tl.constexpr):
    num_m = tl.cdiv(M, BLOCK_M)
    num_n = tl.cdiv(N, BLOCK_N)
    k_tiles = tl.cdiv(K, BLOCK_K)
    for tile in tl.range(tl.program_id(0), num_m * num_n, NUM_SMS, flatten=FLATTEN,
                         warp_specialize=WARP_SPECIALIZE):
        pid_m, pid_n = _tile_of(tile, num_m, num_n, GROUP_M)
        off_m = pid_m * BLOCK_M
        off_n = pid_n * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        if LORA == 1:
            s = s_desc.load([off_m, 0])
            b = b_desc.load([off_n, 0])
            acc = tl.dot(s, b.T, acc)
        if LORA == 3:
            s = s_desc.load([off_m, 0])
            b = b_desc.load([off_n, 0])
        for kk in range(k_tiles):
            x = x_desc.load([off_m, kk * BLOCK_K])
            w = w_desc.load([off_n, kk * BLOCK_K])
            acc = tl.dot(x, w.T, acc)
        if LORA == 2:
            s = s_desc.load([off_m, 0])
            b = b_desc.load([off_n, 0])
        if LORA >= 2:
            acc = tl.dot(s, b.T, acc)
        if SUBTILE:
            halves = tl.permute(tl.reshape(acc, (BLOCK_M, 2, BLOCK_N // 2)), (0, 2, 1))
            left, right = tl.split(halves)
            y_desc.store([off_m, off_n], left.to(y_desc.dtype))
            y_desc.store([off_m, off_n + BLOCK_N // 2], right.to(y_desc.dtype))
        else:
            y_desc.store([off_m, off_n], acc.to(y_desc.dtype))


CONFIGS = [(128, 256, 64, 8, 3), (128, 256, 64, 8, 4)]  # BLOCK_M, _N, _K, warps, stages


def run_triton(x, w, s, b, y, lora, config, subtile, warp_specialize, flatten, sms):
    bm, bn, bk, warps, stages = config
    descs = [TensorDescriptor.from_tensor(x, [bm, bk]), TensorDescriptor.from_tensor(w, [bn, bk]),
             TensorDescriptor.from_tensor(s, [bm, s.shape[1]]), TensorDescriptor.from_tensor(b, [bn, b.shape[1]]),
             TensorDescriptor.from_tensor(y, [bm, bn // 2 if subtile else bn])]
    tiles = triton.cdiv(x.shape[0], bm) * triton.cdiv(w.shape[0], bn)
    _gemm_lora_kernel[(min(sms, tiles),)](*descs, x.shape[0], w.shape[0], x.shape[1], LORA=lora, BLOCK_M=bm,
                                          BLOCK_N=bn, BLOCK_K=bk, GROUP_M=8, NUM_SMS=sms, SUBTILE=subtile,
                                          WARP_SPECIALIZE=warp_specialize, FLATTEN=flatten, num_warps=warps,
                                          num_stages=stages)


def main():
    torch.manual_seed(0)
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
           "cases": []}
    for tokens, width, out_features, rank in ((8192, 4096, 4096, 16), (8192, 4096, 11008, 16)):
        dt = torch.bfloat16
        x = torch.randn(tokens, width, device="cuda", dtype=dt)
        w = (torch.randn(out_features, width, device="cuda") * width**-0.5).to(dt)
        s = (torch.randn(tokens, rank, device="cuda") * 0.1).to(dt)
        b = (torch.randn(out_features, rank, device="cuda") * rank**-0.5).to(dt)
        reference = x.float() @ w.float().t() + s.float() @ b.float().t()
        y = torch.empty(tokens, out_features, device="cuda", dtype=dt)
        bench = triton.testing.do_bench
        row = {"case": f"{tokens}x{width}->{out_features} r={rank}",
               "cublas_ms": bench(lambda: torch.mm(x, w.t())),
               "cublas_fold_ms": bench(lambda: torch.mm(x, w.t()).addmm_(s, b.t()))}
        for lora in (0, 1, 2, 3):  # none, before the K loop, after it, after it with tiles loaded before it
            best = None
            for config, subtile, ws in itertools.product(CONFIGS, (False, True), (False, True)):
                flatten = True
                label = f"{config} subtile={subtile} ws={ws} flatten={flatten}"
                try:
                    run_triton(x, w, s, b, y, lora, config, subtile, ws, flatten, sms)
                    torch.cuda.synchronize()
                    ms = bench(lambda: run_triton(x, w, s, b, y, lora, config, subtile, ws, flatten, sms))
                except Exception as exc:  # a config that does not compile here is reported, not fatal
                    print(f"  lora={lora} {label}: {type(exc).__name__}: {str(exc)[:160]}")
                    continue
                expected = reference if lora else x.float() @ w.float().t()
                error = ((y.float() - expected).abs().max() / expected.abs().max()).item()
                print(f"  lora={lora} {label}: {ms:.4f} ms  rel err {error:.2e}")
                if best is None or ms < best[0]:
                    best = (ms, label, error)
            key = ("triton", "triton_lora_prologue", "triton_lora_epilogue", "triton_lora_epilogue_preload")[lora]
            row[key + "_ms"], row[key + "_config"], row[key + "_err"] = best if best else (None, None, None)
        print(json.dumps(row))
        out["cases"].append(row)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "fused_epilogue_probe.json"), "w") as handle:
        json.dump(out, handle, indent=1)


if __name__ == "__main__":
    sys.exit(main())
