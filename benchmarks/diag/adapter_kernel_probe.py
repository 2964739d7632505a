# Where the bottleneck adapter's backward kernels lose their time at M = 64 (one device call, H100, bf16,
# 8192 x 4096): at M = 16 the three backward kernels ran near their traffic ideal (45 / 64 / 35 µs), at M = 64
# they took 72 / 141 / 73 µs (session 5, run 43). Run 44 found loads left out of the software pipeline, and
# layout variants that avoided it; run 46, with the sizes T and M specialised again (masks with a known
# constancy, so 16-byte loads the pipeliner takes), found the library's own layouts as fast as the variants,
# which the library then dropped. `h_cols` includes the db_down loop of the first D chunk's programs.
# For each kernel this times a few tiles through the JITFunction (no autotuner) and prints what the compiler
# made of it: registers, spills, whether the dots became wgmma and whether the loads were pipelined (async
# copies in the TTGIR). Experimental variants live only in this file (each takes the library's _column_program
# for its (D chunk, T split) and differs from the library's loop in one respect):
#   h_nobias   the h-side kernel without the db_down column sum (does a second use of dz stop the pipelining?)
#   h_dz_t     the h-side kernel reading dz pre-transposed ([M, T], so the dot's A tile is K-contiguous)
#   g_a_t      the g-side kernel computing dW_upᵀ = aᵀ g from a pre-transposed a ([M, T]) instead of gᵀ a
#   rows_w_t   backward_rows reading W_up as a [M, D] contiguous copy (the down kernel's layout)
# Trade-off: it rebuilds the launchers' argument tuples here rather than adding overrides to the library, so a
# change of the kernels' signatures needs this file updated.
import os
import sys

import torch
import triton
import triton.language as tl
from triton.testing import do_bench

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from lowpeft.kernels import bottleneck_adapter as kernels  # noqa: E402
from lowpeft.kernels.bottleneck_adapter import _column_program  # noqa: E402

BANDWIDTH = 3.35e12
COLUMN_TILES = ((64, 128, 8, 3), (64, 128, 4, 3), (128, 128, 8, 3), (64, 256, 8, 3), (32, 128, 4, 3),
                (64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 8, 4), (128, 128, 8, 2))
ROW_TILES = ((32, 128, 4, 3), (64, 128, 8, 3), (64, 64, 4, 3), (128, 64, 8, 3), (64, 128, 4, 4), (32, 256, 4, 3),
             (128, 128, 8, 3), (64, 256, 8, 3))


@triton.jit
def _h_nobias_kernel(h_ptr, dz_ptr, partial_ptr, T, D, M, PARTIAL_LEN, stride_h_t, stride_small_t,
                     BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    split, row_start, row_end, cols_d, _, cols_m, _ = _column_program(tl.program_id(0), T, D, M, BLOCK_M, BLOCK_T,
                                                                      BLOCK_D)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for t0 in range(row_start, row_end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        row_mask = rows < row_end
        h = tl.load(h_ptr + rows[:, None] * stride_h_t + cols_d[None, :], mask=row_mask[:, None], other=0.0)
        dz = tl.load(dz_ptr + rows[:, None] * stride_small_t + cols_m[None, :], mask=row_mask[:, None], other=0.0)
        acc = tl.dot(tl.trans(dz), h, acc)
    base = partial_ptr + split.to(tl.int64) * PARTIAL_LEN
    tl.store(base + cols_m[:, None] * D + cols_d[None, :], acc)


@triton.jit
def _h_dz_t_kernel(h_ptr, dz_t_ptr, partial_ptr, T, D, M, PARTIAL_LEN, stride_h_t, stride_dz_t_m,
                   BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    split, row_start, row_end, cols_d, _, cols_m, _ = _column_program(tl.program_id(0), T, D, M, BLOCK_M, BLOCK_T,
                                                                      BLOCK_D)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    for t0 in range(row_start, row_end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        row_mask = rows < row_end
        h = tl.load(h_ptr + rows[:, None] * stride_h_t + cols_d[None, :], mask=row_mask[:, None], other=0.0)
        dz_t = tl.load(dz_t_ptr + cols_m[:, None] * stride_dz_t_m + rows[None, :], mask=row_mask[None, :], other=0.0)
        acc = tl.dot(dz_t, h, acc)
    base = partial_ptr + split.to(tl.int64) * PARTIAL_LEN
    tl.store(base + cols_m[:, None] * D + cols_d[None, :], acc)


@triton.jit
def _g_a_t_kernel(g_ptr, down_w_ptr, a_t_ptr, dz_ptr, dh_ptr, partial_ptr, T, D, M, PARTIAL_LEN, stride_g_t,
                  stride_a_t_m, stride_small_t, BLOCK_M: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr):
    split, row_start, row_end, cols_d, _, cols_m, _ = _column_program(tl.program_id(0), T, D, M, BLOCK_M, BLOCK_T,
                                                                      BLOCK_D)
    down_w = tl.load(down_w_ptr + cols_m[:, None] * D + cols_d[None, :])
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    bias = tl.zeros([BLOCK_D], dtype=tl.float32)
    for t0 in range(row_start, row_end, BLOCK_T):
        rows = t0 + tl.arange(0, BLOCK_T)
        row_mask = rows < row_end
        g = tl.load(g_ptr + rows[:, None] * stride_g_t + cols_d[None, :], mask=row_mask[:, None], other=0.0)
        dz = tl.load(dz_ptr + rows[:, None] * stride_small_t + cols_m[None, :], mask=row_mask[:, None], other=0.0)
        dh = tl.dot(dz, down_w, g.to(tl.float32))
        tl.store(dh_ptr + rows[:, None] * stride_g_t + cols_d[None, :], dh.to(dh_ptr.dtype.element_ty),
                 mask=row_mask[:, None])
        a_t = tl.load(a_t_ptr + cols_m[:, None] * stride_a_t_m + rows[None, :], mask=row_mask[None, :], other=0.0)
        acc = tl.dot(a_t, g, acc)
        bias += tl.sum(g.to(tl.float32), axis=0)
    base = partial_ptr + split.to(tl.int64) * PARTIAL_LEN
    tl.store(base + M * D + cols_m[:, None] * D + cols_d[None, :], acc)
    tl.store(base + 2 * M * D + cols_d, bias)


def describe(compiled):
    ttgir = compiled.asm.get("ttgir", "")
    return (f"regs {getattr(compiled, 'n_regs', '?')} spills {getattr(compiled, 'n_spills', '?')} "
            f"wgmma {'warp_group_dot' in ttgir} async {ttgir.count('async_copy_global_to_local')}")


def time_variant(name, launch, tiles, ideal_bytes):
    ideal = ideal_bytes / BANDWIDTH * 1e6
    print(f"  {name}: traffic ideal {ideal:.1f} us")
    results = []
    for tile in tiles:
        try:
            compiled = launch(tile)
            torch.cuda.synchronize()
            us = do_bench(lambda: launch(tile), warmup=10, rep=40, return_mode="median") * 1e3
            results.append((us, tile, describe(compiled)))
        except Exception as exc:  # a tile that does not fit is reported, not fatal
            print(f"    {tile}: {type(exc).__name__}: {str(exc)[:80]}")
    for us, tile, info in sorted(results)[:4]:
        print(f"    {tile} {us:7.1f} us  {info}")
    return results


def probe(tokens, dim, bottleneck):
    torch.manual_seed(0)
    dev, bf16 = "cuda", torch.bfloat16
    block_m = max(16, triton.next_power_of_2(bottleneck))
    h = torch.randn(tokens, dim, device=dev, dtype=bf16)
    g = torch.randn(tokens, dim, device=dev, dtype=bf16)
    dh = torch.empty_like(g)
    down_w = (torch.randn(bottleneck, dim, device=dev) * dim**-0.5).to(bf16)
    up_w = (torch.randn(dim, bottleneck, device=dev) * bottleneck**-0.5).to(bf16)
    up_w_t = up_w.t().contiguous()
    z = torch.randn(tokens, bottleneck, device=dev)
    a = torch.randn(tokens, bottleneck, device=dev, dtype=bf16)
    dz = torch.randn(tokens, bottleneck, device=dev, dtype=bf16)
    a_t, dz_t = a.t().contiguous(), dz.t().contiguous()
    partial_len = 2 * bottleneck * dim + dim + bottleneck
    partials = torch.empty(64, partial_len, device=dev)
    tensor_bytes = tokens * dim * 2
    print(f"== {tokens} x {dim}, M = {bottleneck}")

    def splits_for(tile):
        return kernels._t_splits(tokens, dim, tile[0], tile[1], 1, 2 if tile[2] <= 4 else 1, h.device, 64)

    def rows(tile, w, stride_d, stride_m):
        bt, bd, warps, stages = tile
        return kernels._backward_rows_kernel.fn[(triton.cdiv(tokens, bt),)](
            g, w, z, a, dz, tokens, dim, bottleneck, tokens, g.stride(0), 1, stride_d, stride_m, z.stride(0),
            a.stride(0), 1.0, ACTIVATION=0, PRECISION="ieee", UPCAST=False, BLOCK_M=block_m, BLOCK_T=bt, BLOCK_D=bd,
            num_warps=warps, num_stages=stages)

    def down(tile):
        bt, bd, warps, stages = tile
        return kernels._down_kernel.fn[(triton.cdiv(tokens, bt),)](
            h, down_w, z, z, a, tokens, dim, bottleneck, tokens, h.stride(0), 1, down_w.stride(0), 1, 0, z.stride(0),
            a.stride(0), HAS_DOWN_BIAS=False, ACTIVATION=0, PRECISION="ieee", UPCAST=False, ACC=tl.float32,
            BLOCK_M=block_m, BLOCK_T=bt, BLOCK_D=bd, num_warps=warps, num_stages=stages)

    def cols(tile, need_dh=True, need_up=True, need_down=False):
        # The library's column kernel with the chosen sides: g side (dh, dW_up / db_up), h side (dW_down, db_down).
        bt, bd, warps, stages = tile
        sides = (need_dh or need_up) + need_down
        return kernels._backward_cols_kernel[(triton.cdiv(dim, bd) * sides, splits_for(tile))](
            g, h, down_w, a, dz, dh, partials, tokens, dim, bottleneck, partial_len, g.stride(0), 1, h.stride(0), 1,
            down_w.stride(0), 1, a.stride(0), dh.stride(0), 1.0, NEED_DH=need_dh, NEED_UP_GRADS=need_up,
            NEED_DOWN_W=need_down, NEED_DOWN_B=need_down, PRECISION="ieee", UPCAST=False, ACC=tl.float32,
            BLOCK_M=block_m, BLOCK_T=bt, BLOCK_D=bd, num_warps=warps, num_stages=stages)

    def g_cols(tile, need_dh=True, need_up=True):
        return cols(tile, need_dh, need_up)

    def h_cols(tile):
        return cols(tile, need_dh=False, need_up=False, need_down=True)

    def h_variant(kernel, small, small_stride):
        def launch(tile):
            bt, bd, warps, stages = tile
            return kernel[(triton.cdiv(dim, bd), splits_for(tile))](
                h, small, partials, tokens, dim, bottleneck, partial_len, h.stride(0), small_stride,
                BLOCK_M=block_m, BLOCK_T=bt, BLOCK_D=bd, num_warps=warps, num_stages=stages)
        return launch

    def g_a_t(tile):
        bt, bd, warps, stages = tile
        return _g_a_t_kernel[(triton.cdiv(dim, bd), splits_for(tile))](
            g, down_w, a_t, dz, dh, partials, tokens, dim, bottleneck, partial_len, g.stride(0), a_t.stride(0),
            dz.stride(0), BLOCK_M=block_m, BLOCK_T=bt, BLOCK_D=bd, num_warps=warps, num_stages=stages)

    time_variant("down (reference)", down, ROW_TILES[:4], tensor_bytes)
    time_variant("backward_rows", lambda t: rows(t, up_w, up_w.stride(0), 1), ROW_TILES, tensor_bytes)
    time_variant("rows_w_t", lambda t: rows(t, up_w_t, 1, up_w_t.stride(0)), ROW_TILES, tensor_bytes)
    time_variant("g_cols", g_cols, COLUMN_TILES, 2 * tensor_bytes)
    time_variant("g_cols dh only", lambda t: g_cols(t, need_up=False), COLUMN_TILES[:5], 2 * tensor_bytes)
    time_variant("g_cols up only", lambda t: g_cols(t, need_dh=False), COLUMN_TILES[:5], tensor_bytes)
    time_variant("g_a_t", g_a_t, COLUMN_TILES, 2 * tensor_bytes)
    time_variant("h_cols", h_cols, COLUMN_TILES, tensor_bytes)
    time_variant("cols, both sides", lambda t: cols(t, need_down=True), COLUMN_TILES, 3 * tensor_bytes)
    time_variant("h_nobias", h_variant(_h_nobias_kernel, dz, dz.stride(0)), COLUMN_TILES, tensor_bytes)
    time_variant("h_dz_t", h_variant(_h_dz_t_kernel, dz_t, dz_t.stride(0)), COLUMN_TILES, tensor_bytes)


def main():
    cases = [tuple(int(v) for v in arg.split("x")) for arg in sys.argv[1:]] or [(8192, 4096, 64), (8192, 4096, 16)]
    print(f"device {torch.cuda.get_device_name()}  torch {torch.__version__}  triton {triton.__version__}")
    for case in cases:
        probe(*case)


if __name__ == "__main__":
    main()
