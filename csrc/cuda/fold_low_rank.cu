// out[t, n] += alpha · Σⱼ low[t, j] · right[n, j]: the LoRA fold (y += s · S Bᵀ, dx += dS A) as one memory-bound
// pass over out, for 16-bit dtypes and r ≤ 32.
//
// Each warp owns 32 · COLS consecutive columns of out (COLS per lane: 4 for r ≤ 16, 2 for r ≤ 32) and keeps the
// matching [COLS, r] slice of `right` in registers as float32; the block's four warps walk its slice of the rows
// four rows at a time (four row reads in flight per warp), lane j loading low[t, j] and a warp shuffle
// broadcasting it, so a row costs r shuffles and COLS · r FMAs per lane beside one coalesced read and write of out. Trade-off: cuBLAS's beta = 1 GEMM with
// K = r (what this replaces) runs tensor-core tiles with a full C read and write and measured 69-74 µs at
// 8192 x 4096, r = 16 on the H100 against a ~40 µs traffic ideal; here the FMAs are on CUDA cores, which keeps up
// with the traffic only for small r, hence the r ≤ 32 bound (larger ranks and float32 keep cuBLAS). Rows are
// split in a fixed way that depends only on the shape: no atomics, deterministic.
#include "fold_low_rank.h"

#include <ATen/Dispatch.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "../lowpeft_common.h"
#include "cuda_common.cuh"

namespace lowpeft::cuda {
namespace {

constexpr int kWarps = 4;
constexpr int kRowsAtOnce = 4;  // rows a warp has in flight: memory-level parallelism for a latency-bound pass
constexpr int kMaxRank = 32;

template <typename scalar_t, int COLS, int RANK>
__global__ void __launch_bounds__(kWarps * 32) fold_low_rank_kernel(
    scalar_t* __restrict__ out, int64_t out_stride, const scalar_t* __restrict__ low, int64_t low_stride_t,
    int64_t low_stride_r, const scalar_t* __restrict__ right, int64_t right_stride_n, int64_t right_stride_r,
    int64_t rows, int64_t cols, int rank, float alpha, int64_t rows_per_block) {
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int64_t col0 = (static_cast<int64_t>(blockIdx.x) * 32 + lane) * COLS;
  const bool active = col0 < cols;  // cols is a multiple of COLS (checked on the host)
  float weights[COLS][RANK];
#pragma unroll
  for (int c = 0; c < COLS; ++c) {
#pragma unroll
    for (int j = 0; j < RANK; ++j) {
      weights[c][j] = (active && j < rank)
                          ? alpha * static_cast<float>(right[(col0 + c) * right_stride_n + j * right_stride_r])
                          : 0.0f;
    }
  }
  const int64_t first = static_cast<int64_t>(blockIdx.y) * rows_per_block;
  const int64_t last = first + rows_per_block < rows ? first + rows_per_block : rows;
  for (int64_t base = first + warp * kRowsAtOnce; base < last; base += kWarps * kRowsAtOnce) {
    float mine[kRowsAtOnce];
    float current[kRowsAtOnce][COLS];
#pragma unroll
    for (int i = 0; i < kRowsAtOnce; ++i) {
      const int64_t t = base + i;
      mine[i] = (t < last && lane < rank) ? static_cast<float>(low[t * low_stride_t + lane * low_stride_r]) : 0.0f;
      if (t < last && active) {
        load_widened<COLS, scalar_t, float>(out + t * out_stride + col0, 1, current[i]);
      }
    }
#pragma unroll
    for (int j = 0; j < RANK; ++j) {
#pragma unroll
      for (int i = 0; i < kRowsAtOnce; ++i) {
        const float value = __shfl_sync(0xffffffffu, mine[i], j);
#pragma unroll
        for (int c = 0; c < COLS; ++c) current[i][c] = fmaf(value, weights[c][j], current[i][c]);
      }
    }
#pragma unroll
    for (int i = 0; i < kRowsAtOnce; ++i) {
      if (base + i < last && active) store_narrowed<COLS, scalar_t, float>(out + (base + i) * out_stride + col0, current[i]);
    }
  }
}

template <typename scalar_t, int COLS, int RANK>
void launch(at::Tensor& out, const at::Tensor& low, const at::Tensor& right, double alpha) {
  const int64_t rows = out.size(0), cols = out.size(1);
  const int64_t column_blocks = ceil_div(cols, 32 * COLS);
  const int sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  // About eight blocks per multiprocessor in all, at least one row group per warp and a shape-only split.
  const int64_t row_blocks =
      std::max<int64_t>(1, std::min(ceil_div(8 * sms, column_blocks), ceil_div(rows, kWarps * kRowsAtOnce)));
  const int64_t rows_per_block = ceil_div(rows, row_blocks);
  const dim3 grid(static_cast<unsigned>(column_blocks), static_cast<unsigned>(ceil_div(rows, rows_per_block)));
  fold_low_rank_kernel<scalar_t, COLS, RANK><<<grid, kWarps * 32, 0, c10::cuda::getCurrentCUDAStream()>>>(
      out.mutable_data_ptr<scalar_t>(), out.stride(0), low.const_data_ptr<scalar_t>(), low.stride(0), low.stride(1),
      right.const_data_ptr<scalar_t>(), right.stride(0), right.stride(1), rows, cols,
      static_cast<int>(low.size(1)), static_cast<float>(alpha), rows_per_block);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace

void fold_low_rank(at::Tensor& out, const at::Tensor& low, const at::Tensor& right, double alpha) {
  const int64_t rank = low.size(1);
  const auto dtype = out.scalar_type();
  const bool sixteen_bit = dtype == at::kHalf || dtype == at::kBFloat16;
  const int cols_per_lane = rank <= 16 ? 4 : 2;
  const bool fits = sixteen_bit && low.scalar_type() == dtype && right.scalar_type() == dtype && rank >= 1 &&
                    rank <= kMaxRank && out.dim() == 2 && out.size(0) > 0 && out.size(1) % cols_per_lane == 0 &&
                    out.stride(1) == 1 && out.stride(0) % cols_per_lane == 0 &&
                    reinterpret_cast<uintptr_t>(out.const_data_ptr()) % (cols_per_lane * out.element_size()) == 0;
  if (!fits) {
    out.addmm_(low, right.t(), 1.0, alpha);
    return;
  }
  const c10::cuda::CUDAGuard guard(out.device());
  AT_DISPATCH_REDUCED_FLOATING_TYPES(dtype, "fold_low_rank", [&] {
    if (rank <= 16) {
      launch<scalar_t, 4, 16>(out, low, right, alpha);
    } else {
      launch<scalar_t, 2, 32>(out, low, right, alpha);
    }
  });
}

}  // namespace lowpeft::cuda
