# Sweep (one device call) of the tiles of the two Triton kernels on the LoRA dropout path, whose configs were
# chosen by reasoning and never tuned (lowpeft/kernels/_tuning.py): the masked shrink S = dropout(x) Aᵀ
# (_lora_shrink_kernel, one read of x) and the one-pass backward dx += mask ⊙ (dS A), dA = dSᵀ (x ⊙ mask)
# (_lora_expand_add_grad_a_kernel, a read + write of dx and a read of x), bf16, at the benchmark's main shape, the
# ~1B model's widths and a small shape, r = 16 and 64. Each config is launched through its kernel's JITFunction
# (no autotuner), timed with do_bench, and reported beside the launcher's current choice (LOWPEFT_AUTOTUNE=0:
# the list's first fitting config) and the traffic ideal at 3.35 TB/s.
#
# Trade-off: it rebuilds the launchers' argument tuples here instead of adding a config override to them, so the
# library's launchers stay as they are; a change to their signatures needs this file updated.
import itertools
import json
import os
import sys

import torch
import triton

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lowpeft import reference  # noqa: E402
from lowpeft.kernels._tuning import expand_grad_a_configs, row_block_configs, token_bucket, token_slices  # noqa: E402
from lowpeft.kernels.lora_expand_grad_A import _lora_expand_add_grad_a_kernel  # noqa: E402
from lowpeft.kernels.lora_shrink import _lora_shrink_kernel  # noqa: E402

BANDWIDTH = 3.35e12
SHAPES = [(8192, 4096, 16), (8192, 4096, 64), (8192, 2048, 16), (8192, 5632, 16), (2048, 1024, 16)]
SHRINK_TILES = list(itertools.product((32, 64, 128), (64, 128, 256), (4, 8), (2, 3, 4)))
ONE_PASS_TILES = list(itertools.product((16, 32, 64), (64, 128, 256), (4, 8), (2, 3)))


def shrink_runner(x, a_t, out, rank_padded, threshold, inv_keep, tile):
    block_t, block_k, warps, stages = tile
    tokens, width = x.shape
    args = (x, a_t, out, tokens, width, a_t.shape[1], token_bucket(tokens), x.stride(0), x.stride(1),
            a_t.stride(0), a_t.stride(1), out.stride(0), 1.0, 7, threshold, inv_keep)
    return lambda: _lora_shrink_kernel.fn[(triton.cdiv(tokens, block_t),)](
        *args, HAS_DROPOUT=True, R_PAD=rank_padded, DOT_PRECISION="ieee", DOT_UPCAST=False, BLOCK_T=block_t,
        BLOCK_K=block_k, num_warps=warps, num_stages=stages)


def one_pass_runner(d_shrink, lora_a, dx, x, rank_padded, threshold, inv_keep, tile):
    block_t, block_k, warps, stages = tile
    tokens, width = x.shape
    rank = lora_a.shape[0]
    splits, rows_per_split = token_slices(tokens, triton.cdiv(width, 128), x.device, rank=rank,
                                          element_size=x.element_size())
    partials = torch.empty(splits, rank, width, dtype=torch.float32, device=x.device)
    args = (d_shrink, lora_a, dx, x, partials, tokens, width, rank, token_bucket(tokens), rows_per_split,
            d_shrink.stride(0), lora_a.stride(0), lora_a.stride(1), dx.stride(0), dx.stride(1), x.stride(0),
            x.stride(1), partials.stride(0), partials.stride(1), 7, threshold, inv_keep)
    return lambda: _lora_expand_add_grad_a_kernel.fn[(triton.cdiv(width, block_k), splits)](
        *args, R_PAD=rank_padded, DOT_PRECISION="ieee", DOT_UPCAST=False, BLOCK_T=block_t, BLOCK_K=block_k,
        num_warps=warps, num_stages=stages)


def sweep(name, make, tiles, current, ideal_bytes):
    results = []
    for tile in tiles:
        try:
            run = make(tile)
            run()
            torch.cuda.synchronize()
            results.append((triton.testing.do_bench(run, warmup=10, rep=40), tile))
        except Exception as exc:  # a tile that does not fit (registers / shared memory) is skipped
            print(f"    {name} {tile}: {type(exc).__name__}")
    results.sort()
    current_ms = next((ms for ms, tile in results if tile == current), None)
    ideal = ideal_bytes / BANDWIDTH * 1e3
    print(f"  {name}: ideal {ideal * 1e3:.1f} us; current {current} "
          f"{'n/a' if current_ms is None else f'{current_ms * 1e3:.1f} us'}; best:")
    for ms, tile in results[:5]:
        print(f"    {tile} {ms * 1e3:.1f} us")
    return {"ideal_us": ideal * 1e3, "current": current, "current_us": None if current_ms is None else current_ms * 1e3,
            "best": [{"tile": tile, "us": ms * 1e3} for ms, tile in results[:8]]}


def as_tile(config):
    return (config.kwargs["BLOCK_T"], config.kwargs["BLOCK_K"], config.num_warps, config.num_stages)


def main():
    torch.manual_seed(0)
    p = 0.1
    threshold, inv_keep = reference.dropout_threshold(p), 1.0 / (1.0 - p)
    os.environ["LOWPEFT_AUTOTUNE"] = "0"
    current_shrink = as_tile(row_block_configs()[0])
    one_pass_first = {rank_padded: next(c for c in expand_grad_a_configs()
                                        if 2 * rank_padded * c.kwargs["BLOCK_K"] <= 128 * 32 * c.num_warps)
                      for rank_padded in (16, 64)}
    results = {"device": torch.cuda.get_device_name(), "triton": triton.__version__, "cases": []}
    for tokens, width, rank in SHAPES:
        print(f"{tokens} x {width}, r = {rank}")
        x = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16)
        lora_a = (torch.randn(rank, width, device="cuda") * width**-0.5).to(torch.bfloat16)
        shrink = torch.empty(tokens, rank, device="cuda")
        d_shrink = torch.randn(tokens, rank, device="cuda")
        dx = torch.randn(tokens, width, device="cuda", dtype=torch.bfloat16)
        rank_padded = max(16, triton.next_power_of_2(rank))
        row = {"tokens": tokens, "width": width, "rank": rank}
        row["shrink"] = sweep("shrink", lambda t: shrink_runner(x, lora_a.t(), shrink, rank_padded, threshold,
                                                                 inv_keep, t),
                              SHRINK_TILES, current_shrink, tokens * width * 2)
        row["one_pass"] = sweep("one-pass", lambda t: one_pass_runner(d_shrink, lora_a, dx, x, rank_padded,
                                                                      threshold, inv_keep, t),
                                ONE_PASS_TILES, as_tile(one_pass_first[rank_padded]), 3 * tokens * width * 2)
        results["cases"].append(row)
    with open(os.path.join(os.environ.get("OUT", "/tmp"), "dropout_kernel_sweep.json"), "w") as handle:
        json.dump(results, handle, indent=1)


if __name__ == "__main__":
    sys.exit(main())
