# GPU probe for the fused LoRA kernels (one device call): is a Triton GEMM as fast as cuBLAS at the
# benchmark shapes (pointer-based, host TMA descriptors, persistent TMA), are lowpeft's kernels right in
# every dtype, and where does the time of a fused forward + backward go (per kernel).
#
# Trade-off: a throw-away measurement script kept in the repo so the numbers in NOTES_lora.md can be
# re-measured; it imports only lowpeft.kernels / lowpeft.reference, not teammates' half-done modules.
import json
import os
import sys
import time

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from lowpeft import reference  # noqa: E402
from lowpeft.kernels import lora_linear as launch  # noqa: E402

results = {"env": {"torch": torch.__version__, "triton": triton.__version__, "gpu": torch.cuda.get_device_name()}}


def bench(fn):
    return do_bench(fn, warmup=25, rep=100, return_mode="median")


@triton.jit
def _tma_matmul(a_desc, b_desc, c_desc, M, N, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr,
                GROUP_M: tl.constexpr):
    pid = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    width = GROUP_M * num_n
    group = pid // width
    first_m = group * GROUP_M
    rows = min(num_m - first_m, GROUP_M)
    pid_m = first_m + (pid % width) % rows
    pid_n = (pid % width) // rows
    acc = tl.zeros((BM, BN), dtype=tl.float32)
    for k in range(0, K, BK):
        a = a_desc.load([pid_m * BM, k])
        b = b_desc.load([pid_n * BN, k])
        acc = tl.dot(a, b.T, acc)
    c_desc.store([pid_m * BM, pid_n * BN], acc.to(c_desc.dtype))


@triton.jit
def _tma_matmul_persistent(a_desc, b_desc, c_desc, M, N, K, BM: tl.constexpr, BN: tl.constexpr,
                           BK: tl.constexpr, GROUP_M: tl.constexpr, NUM_SMS: tl.constexpr, FLATTEN: tl.constexpr):
    start = tl.program_id(0)
    num_m = tl.cdiv(M, BM)
    num_n = tl.cdiv(N, BN)
    k_tiles = tl.cdiv(K, BK)
    num_tiles = num_m * num_n
    width = GROUP_M * num_n
    for tile in tl.range(start, num_tiles, NUM_SMS, flatten=FLATTEN):
        group = tile // width
        first_m = group * GROUP_M
        rows = min(num_m - first_m, GROUP_M)
        pid_m = first_m + (tile % width) % rows
        pid_n = (tile % width) // rows
        acc = tl.zeros((BM, BN), dtype=tl.float32)
        for kk in range(k_tiles):
            a = a_desc.load([pid_m * BM, kk * BK])
            b = b_desc.load([pid_n * BN, kk * BK])
            acc = tl.dot(a, b.T, acc)
        c_desc.store([pid_m * BM, pid_n * BN], acc.to(c_desc.dtype))


def probe_gemm():
    from triton.tools.tensor_descriptor import TensorDescriptor

    out = []
    sms = torch.cuda.get_device_properties(0).multi_processor_count
    for (M, K, N) in [(8192, 4096, 4096), (8192, 4096, 11008), (4096, 2048, 2048), (2048, 1024, 1024)]:
        a = torch.randn(M, K, device="cuda", dtype=torch.bfloat16)
        b = torch.randn(N, K, device="cuda", dtype=torch.bfloat16)
        c = torch.empty(M, N, device="cuda", dtype=torch.bfloat16)
        row = {"shape": f"{M}x{K}->{N}", "cublas": bench(lambda: a @ b.t())}
        ref = a @ b.t()
        for (BM, BN, BK, warps, stages) in [(128, 256, 64, 8, 3), (128, 256, 64, 8, 4), (128, 128, 64, 8, 4),
                                            (128, 128, 64, 4, 4)]:
            name = f"tma_{BM}x{BN}x{BK}_w{warps}_s{stages}"
            try:
                ad = TensorDescriptor.from_tensor(a, [BM, BK])
                bd = TensorDescriptor.from_tensor(b, [BN, BK])
                cd = TensorDescriptor.from_tensor(c, [BM, BN])
                grid = (triton.cdiv(M, BM) * triton.cdiv(N, BN),)
                fn = lambda: _tma_matmul[grid](ad, bd, cd, M, N, K, BM, BN, BK, 8, num_warps=warps, num_stages=stages)  # noqa: E731
                fn()
                err = ((c.float() - ref.float()).norm() / ref.float().norm()).item()
                row[name] = bench(fn)
                row[name + "_err"] = err
                for flatten in (False, True):
                    pname = f"ptma_{BM}x{BN}x{BK}_w{warps}_s{stages}_f{int(flatten)}"
                    pgrid = (min(sms, triton.cdiv(M, BM) * triton.cdiv(N, BN)),)
                    pfn = lambda: _tma_matmul_persistent[pgrid](ad, bd, cd, M, N, K, BM, BN, BK, 8, sms, flatten, num_warps=warps, num_stages=stages)  # noqa: E731
                    pfn()
                    row[pname] = bench(pfn)
            except Exception as exc:  # report and go on: this is a probe
                row[name + "_error"] = repr(exc)[:300]
        out.append(row)
        print(json.dumps(row), flush=True)
    results["gemm"] = out


def probe_correctness():
    torch.manual_seed(0)
    out = []
    for dtype in (torch.bfloat16, torch.float16, torch.float32):
        for (T, K, N, r, p, bias) in [(1000, 123, 77, 7, 0.0, True), (513, 256, 384, 16, 0.1, False),
                                      (300, 200, 100, 130, 0.2, True), (2048, 1024, 1024, 64, 0.0, True)]:
            x = torch.randn(T, K, device="cuda", dtype=dtype)
            W = torch.randn(N, K, device="cuda", dtype=dtype) / K**0.5
            b = torch.randn(N, device="cuda", dtype=dtype) if bias else None
            A = torch.randn(r, K, device="cuda", dtype=dtype) / K**0.5
            B = torch.randn(N, r, device="cuda", dtype=dtype)
            g = torch.randn(T, N, device="cuda", dtype=dtype)
            s, seed = 0.5, 4321
            y, S = launch.lora_linear_fwd(x, W, b, A, B, s, p, seed)
            grads = launch.lora_linear_bwd(g, x, W, A, B, S, s, p, seed, (True, True, True, True, bias))
            mask = reference.dropout_keep_mask(seed, T, K, p, device="cuda") if p > 0 else None
            d = lambda t: None if t is None else t.double()  # noqa: E731
            refs = [reference.lora_linear(d(x), d(W), d(b), d(A), d(B), s, mask, p)]
            refs += list(reference.lora_linear_backward(d(g), d(x), d(W), d(A), d(B), s, mask, p))
            same = [reference.lora_linear(x, W, b, A, B, s, mask, p)]
            same += list(reference.lora_linear_backward(g, x, W, A, B, s, mask, p))
            ours = [y] + list(grads)
            names = ["y", "dx", "dA", "dB", "dW", "db"]
            row = {"dtype": str(dtype), "shape": (T, K, N, r, p, bias)}
            for name, o, rf, sm in zip(names, ours, refs, same):
                if o is None:
                    continue
                e = ((o.double() - rf).abs().max() / rf.abs().max()).item()
                base = ((sm.double() - rf).abs().max() / rf.abs().max()).item()
                row[name] = f"{e:.1e} (torch {base:.1e})"
            out.append(row)
            print(json.dumps(row), flush=True)
    results["correctness"] = out


def probe_lora_timings():
    out = []
    for (T, K, N, r, p) in [(8192, 4096, 4096, 16, 0.0), (8192, 4096, 4096, 64, 0.0), (8192, 4096, 4096, 16, 0.1),
                            (8192, 4096, 11008, 16, 0.0), (4096, 2048, 2048, 16, 0.0), (2048, 1024, 1024, 16, 0.0)]:
        dt = torch.bfloat16
        x = torch.randn(T, K, device="cuda", dtype=dt)
        W = torch.randn(N, K, device="cuda", dtype=dt) / K**0.5
        A = torch.randn(r, K, device="cuda", dtype=dt) / K**0.5
        B = torch.randn(N, r, device="cuda", dtype=dt)
        g = torch.randn(T, N, device="cuda", dtype=dt)
        row = {"shape": f"{T}x{K}->{N} r={r} p={p}"}
        row["cublas_fwd"] = bench(lambda: x @ W.t())
        row["cublas_dx"] = bench(lambda: g @ W)
        y, S = launch.lora_linear_fwd(x, W, None, A, B, 0.5, p, 7)
        row["lowpeft_fwd"] = bench(lambda: launch.lora_linear_fwd(x, W, None, A, B, 0.5, p, 7))
        row["lowpeft_bwd"] = bench(lambda: launch.lora_linear_bwd(g, x, W, A, B, S, 0.5, p, 7, (True, True, True, False, False)))
        row["lowpeft_bwd_dx_only"] = bench(lambda: launch.lora_linear_bwd(g, x, W, A, B, S, 0.5, p, 7, (True, False, False, False, False)))
        row["lowpeft_bwd_dB_only"] = bench(lambda: launch.lora_linear_bwd(g, x, W, A, B, S, 0.5, p, 7, (False, False, True, False, False)))
        row["lowpeft_bwd_dA_only"] = bench(lambda: launch.lora_linear_bwd(g, x, W, A, B, S, 0.5, p, 7, (False, True, False, False, False)))
        row["ratio_fwd_bwd"] = (row["lowpeft_fwd"] + row["lowpeft_bwd"]) / (row["cublas_fwd"] + row["cublas_dx"])
        from lowpeft.kernels import lora_backward_dx, lora_forward, lora_grad_weights, lora_shrink

        if T == 8192 and N == 4096 and r == 16:
            saved = (lora_forward.tma_ready, lora_backward_dx.tma_ready)
            lora_forward.tma_ready = lora_backward_dx.tma_ready = lambda *t: False
            row["pointer_fwd"] = bench(lambda: launch.lora_linear_fwd(x, W, None, A, B, 0.5, p, 7))
            row["pointer_bwd_dx_only"] = bench(lambda: launch.lora_linear_bwd(g, x, W, A, B, S, 0.5, p, 7, (True, False, False, False, False)))
            lora_forward.tma_ready, lora_backward_dx.tma_ready = saved

        for name, kern in (("fwd_tma", lora_forward._lora_fwd_tma_kernel), ("fwd_ptr", lora_forward._lora_fwd_kernel),
                           ("dx_tma", lora_backward_dx._lora_dx_tma_kernel), ("dx_ptr", lora_backward_dx._lora_dx_kernel),
                           ("split_t", lora_grad_weights._lora_split_t_kernel), ("shrink", lora_shrink._lora_shrink_kernel)):
            row["config_" + name] = str(getattr(kern, "best_config", None))
        out.append(row)
        print(json.dumps(row), flush=True)
    results["lora"] = out


if __name__ == "__main__":
    start = time.time()
    chosen = sys.argv[1:] or ["correctness", "gemm", "lora_timings"]
    for probe in [globals()["probe_" + name] for name in chosen]:
        try:
            probe()
        except Exception as exc:
            print(f"{probe.__name__} failed: {exc!r}", flush=True)
            import traceback

            traceback.print_exc()
        print(f"-- {probe.__name__} done at {time.time() - start:.0f}s", flush=True)
    out_dir = os.environ.get("OUT", ".")
    with open(os.path.join(out_dir, f"lora_probe_{'_'.join(chosen)}.json"), "w") as fh:
        json.dump(results, fh, indent=1)
