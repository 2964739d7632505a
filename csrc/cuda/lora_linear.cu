// CUDA kernels of lowpeft::native_lora_linear_fwd / _bwd (DESIGN §2) for sm_90: own kernels for the
// memory-bound LoRA pieces, cuBLAS (through ATen) for the frozen GEMMs with the LoRA term folded in by beta = 1.
// Without dropout (no mask to apply) every LoRA product is instead a skinny cuBLAS GEMM, which measured faster
// on the H100 than the reductions below (S: 36 µs against the row-reduce kernel's ~2x at 8192 x 4096, r = 16).
//
// With dropout:
//   forward:  S = dropout(x) Aᵀ                    row_reduce_kernel (16-byte loads of x, Philox mask in registers)
//             y = [S | 1] [s·B | b]ᵀ                one rank-(r+1) cuBLAS GEMM writes y (bias included) ...
//             y += x Wᵀ                             ... and the frozen GEMM accumulates onto it (beta = 1)
//   backward: dS = s · g B                          row_reduce_kernel over g
//             dBᵀ = s · Sᵀ g                        col_reduce_kernel over g: split-T partials + ordered sum
//             dx = (dS A) ⊙ m/(1-p);  dA = dSᵀ (x ⊙ m/(1-p))   one col_reduce_kernel pass over x (mask regenerated)
//             dx += g W                             cuBLAS, beta = 1
// Trade-off: the small reductions run on CUDA cores in float32 (float64 for float64 inputs), exact IEEE
// arithmetic whatever the matmul precision setting, and deterministic (no atomics: a fixed split of T that
// depends on the shape only, then an ordered sum); the price is that g is read twice in backward (dS and dB
// are reductions along different axes) instead of once.
#include <optional>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../lowpeft_common.h"
#include "cuda_common.cuh"

namespace lowpeft::cuda {
namespace {

constexpr int kRowWarps = 8;     // warps per block of row_reduce_kernel
constexpr int kRowsPerWarp = 4;  // rows each warp reduces at once
constexpr int kRankTile = 16;    // outputs (columns of S / dS, rows of dA / dBᵀ) per block
constexpr int kColThreads = 128; // threads per block of col_reduce_kernel
constexpr int kColVec = 4;       // columns per thread in col_reduce_kernel

struct Dropout {
  uint32_t key0, key1, threshold;
  double keep_scale;  // 1 / (1 - p), cast to the accumulator type where applied (float64 inputs keep it exact)
  bool active;
};

Dropout make_dropout(double p, int64_t seed) {
  const PhiloxKey key = philox_key(seed);
  return {key.low, key.high, dropout_threshold(p), 1.0 / (1.0 - p), p > 0.0};
}

template <int VEC, typename acc_t>
__device__ __forceinline__ void apply_dropout(const Dropout& dropout, int64_t row, int64_t col0, acc_t (&v)[VEC]) {
  if (!dropout.active) return;
  // One Philox evaluation per aligned group of four columns (vectors start at multiples of VEC).
  PhiloxWords words = philox_words(static_cast<uint32_t>(col0) >> 2, static_cast<uint32_t>(row), dropout.key0,
                                   dropout.key1);
#pragma unroll
  for (int i = 0; i < VEC; ++i) {
    const uint32_t col = static_cast<uint32_t>(col0 + i);
    if (i > 0 && (col & 3u) == 0) {
      words = philox_words(col >> 2, static_cast<uint32_t>(row), dropout.key0, dropout.key1);
    }
    const uint32_t draw = philox_word(words, col & 3u);
    v[i] *= draw >= dropout.threshold ? static_cast<acc_t>(dropout.keep_scale) : acc_t(0);
  }
}

// out[t, j] = scale · Σ_k dropout(in)[t, k] · weight[j, k] for j in this block's tile of R, and optionally
// low[t, j] = out[t, j] in the input dtype with a column of ones at j = R (bias) and zeros up to
// low_width (the operand of the rank-r GEMM that initialises y).
template <typename scalar_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kRowWarps * 32) row_reduce_kernel(
    const scalar_t* __restrict__ in, int64_t in_row_stride, int64_t in_col_stride,
    const scalar_t* __restrict__ weight, int64_t rows, int64_t cols, int64_t rank, acc_t scale, Dropout dropout,
    acc_t* __restrict__ out, scalar_t* __restrict__ low, int64_t low_width, bool ones_column) {
  const int lane = threadIdx.x & 31;
  const int64_t row0 = (static_cast<int64_t>(blockIdx.x) * kRowWarps + (threadIdx.x >> 5)) * kRowsPerWarp;
  const int64_t j0 = static_cast<int64_t>(blockIdx.y) * kRankTile;
  if (row0 >= rows) return;
  acc_t acc[kRowsPerWarp][kRankTile];
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
    for (int j = 0; j < kRankTile; ++j) acc[r][j] = acc_t(0);

  for (int64_t k0 = static_cast<int64_t>(lane) * VEC; k0 < cols; k0 += 32 * VEC) {
    acc_t xv[kRowsPerWarp][VEC];
#pragma unroll
    for (int r = 0; r < kRowsPerWarp; ++r) {
      const int64_t t = row0 + r;
      if (t < rows) {
        load_widened<VEC>(in + t * in_row_stride + k0 * in_col_stride, in_col_stride, xv[r]);
        apply_dropout<VEC>(dropout, t, k0, xv[r]);
      } else {
#pragma unroll
        for (int i = 0; i < VEC; ++i) xv[r][i] = acc_t(0);
      }
    }
#pragma unroll
    for (int j = 0; j < kRankTile; ++j) {
      if (j0 + j < rank) {
        acc_t wv[VEC];
        load_widened<VEC>(weight + (j0 + j) * cols + k0, 1, wv);
#pragma unroll
        for (int r = 0; r < kRowsPerWarp; ++r)
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[r][j] += xv[r][i] * wv[i];
      }
    }
  }
#pragma unroll
  for (int r = 0; r < kRowsPerWarp; ++r) {
    const int64_t t = row0 + r;
#pragma unroll
    for (int j = 0; j < kRankTile; ++j) {
      const acc_t total = warp_sum(acc[r][j]);
      if (lane == 0 && t < rows && j0 + j < rank) {
        out[t * rank + j0 + j] = scale * total;
        if (low != nullptr) low[t * low_width + j0 + j] = static_cast<scalar_t>(scale * total);
      }
    }
    if (low != nullptr && blockIdx.y == 0 && t < rows) {
      for (int64_t j = rank + lane; j < low_width; j += 32) {
        low[t * low_width + j] = static_cast<scalar_t>(ones_column && j == rank ? 1 : 0);
      }
    }
  }
}

// Over one chunk of rows and VEC columns per thread:
//   partial[chunk, j, k] = Σ_t coef[t, j] · dropout(in)[t, k]        (j in this block's tile; if partial)
//   dx[t, k] = dropout_mask(t, k) · Σ_j coef[t, j] · lora_A[j, k]      (all j; if dx, by the first tile)
template <typename scalar_t, typename acc_t, int VEC>
__global__ void __launch_bounds__(kColThreads) col_reduce_kernel(
    const scalar_t* __restrict__ in, int64_t in_row_stride, int64_t in_col_stride, const acc_t* __restrict__ coef,
    int64_t rows, int64_t cols, int64_t rank, int64_t chunk_rows, Dropout dropout, acc_t* __restrict__ partial,
    const scalar_t* __restrict__ lora_A, scalar_t* __restrict__ dx) {
  const int64_t k0 = (static_cast<int64_t>(blockIdx.x) * kColThreads + threadIdx.x) * VEC;
  if (k0 >= cols) return;
  const int64_t chunk = blockIdx.y;
  const int64_t j0 = static_cast<int64_t>(blockIdx.z) * kRankTile;
  const int64_t t_begin = chunk * chunk_rows;
  const int64_t t_end = t_begin + chunk_rows < rows ? t_begin + chunk_rows : rows;
  const bool write_dx = dx != nullptr && blockIdx.z == 0;
  acc_t acc[kRankTile][VEC];
#pragma unroll
  for (int j = 0; j < kRankTile; ++j)
#pragma unroll
    for (int i = 0; i < VEC; ++i) acc[j][i] = acc_t(0);

  for (int64_t t = t_begin; t < t_end; ++t) {
    const acc_t* coef_row = coef + t * rank;
    if (partial != nullptr) {
      acc_t xv[VEC];
      load_widened<VEC>(in + t * in_row_stride + k0 * in_col_stride, in_col_stride, xv);
      apply_dropout<VEC>(dropout, t, k0, xv);
#pragma unroll
      for (int j = 0; j < kRankTile; ++j) {
        if (j0 + j < rank) {
          const acc_t c = coef_row[j0 + j];
#pragma unroll
          for (int i = 0; i < VEC; ++i) acc[j][i] += c * xv[i];
        }
      }
    }
    if (write_dx) {
      acc_t lora[VEC];
#pragma unroll
      for (int i = 0; i < VEC; ++i) lora[i] = acc_t(0);
      for (int64_t j = 0; j < rank; ++j) {
        acc_t av[VEC];
        load_widened<VEC>(lora_A + j * cols + k0, 1, av);
        const acc_t c = coef_row[j];
#pragma unroll
        for (int i = 0; i < VEC; ++i) lora[i] += c * av[i];
      }
      apply_dropout<VEC>(dropout, t, k0, lora);
      store_narrowed<VEC>(dx + t * cols + k0, lora);
    }
  }
  if (partial != nullptr) {
#pragma unroll
    for (int j = 0; j < kRankTile; ++j) {
      if (j0 + j < rank) {
        acc_t* dst = partial + (chunk * rank + j0 + j) * cols + k0;
#pragma unroll
        for (int i = 0; i < VEC; ++i) dst[i] = acc[j][i];
      }
    }
  }
}

// out = scale · Σ_c partial[c] (chunk order), [rank, cols] -> out [rank, cols] or, transposed, [cols, rank].
template <typename scalar_t, typename acc_t>
__global__ void ordered_sum_kernel(const acc_t* __restrict__ partial, int64_t chunks, int64_t rank, int64_t cols,
                                   acc_t scale, bool transpose, scalar_t* __restrict__ out) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t numel = rank * cols;
  if (index >= numel) return;
  acc_t total = acc_t(0);
  for (int64_t c = 0; c < chunks; ++c) total += partial[c * numel + index];
  const int64_t j = index / cols, k = index % cols;
  out[transpose ? k * rank + j : index] = static_cast<scalar_t>(scale * total);
}

// ---------------------------------------------------------------------------------------------------
// Launchers
// ---------------------------------------------------------------------------------------------------
template <typename scalar_t, typename acc_t>
void launch_row_reduce(const at::Tensor& in, const at::Tensor& weight_rows, double scale, const Dropout& dropout,
                       at::Tensor& out, scalar_t* low, int64_t low_width, bool ones_column) {
  const int64_t rows = in.size(0), cols = in.size(1), rank = weight_rows.size(0);
  if (rows == 0) return;
  constexpr int vec = 16 / sizeof(scalar_t);
  const dim3 grid(ceil_div(rows, kRowWarps * kRowsPerWarp), ceil_div(rank, kRankTile));
  const auto stream = c10::cuda::getCurrentCUDAStream();
  auto run = [&](auto vec_tag) {
    constexpr int V = decltype(vec_tag)::value;
    row_reduce_kernel<scalar_t, acc_t, V><<<grid, kRowWarps * 32, 0, stream>>>(
        in.const_data_ptr<scalar_t>(), in.stride(0), in.stride(1), weight_rows.const_data_ptr<scalar_t>(), rows,
        cols, rank, static_cast<acc_t>(scale), dropout, out.mutable_data_ptr<acc_t>(), low, low_width, ones_column);
  };
  const bool vectorized = vector_friendly(in.const_data_ptr(), in.stride(0), in.stride(1), cols, vec, sizeof(scalar_t)) &&
                          is_aligned(weight_rows.const_data_ptr(), vec * sizeof(scalar_t));
  if (vectorized) {
    run(std::integral_constant<int, vec>{});
  } else {
    run(std::integral_constant<int, 1>{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// The fixed split of T for col_reduce_kernel: about 256 blocks in all, chunks of at least 64 rows.
int64_t reduction_chunks(int64_t rows, int64_t cols) {
  const int64_t column_blocks = std::max<int64_t>(1, ceil_div(cols, kColThreads * kColVec));
  const int64_t wanted = std::max<int64_t>(1, ceil_div(256, column_blocks));
  return std::max<int64_t>(1, std::min(wanted, ceil_div(rows, 64)));
}

// Returns the partials [chunks, rank, cols] (undefined when !want_partial) and writes dx when given.
template <typename scalar_t, typename acc_t>
at::Tensor launch_col_reduce(const at::Tensor& in, const at::Tensor& coef, const Dropout& dropout, bool want_partial,
                             const at::Tensor* lora_A, at::Tensor* dx) {
  const int64_t rows = in.size(0), cols = in.size(1), rank = coef.size(1);
  const int64_t chunks = reduction_chunks(rows, cols);
  const int64_t chunk_rows = ceil_div(rows, chunks);
  at::Tensor partial;
  if (want_partial) partial = at::empty({chunks, rank, cols}, coef.options());
  if (rows == 0 || cols == 0) {  // nothing to reduce (or an empty grid): zero partials, an empty dx
    if (want_partial) partial.zero_();
    return partial;
  }
  constexpr int vec = kColVec < 16 / static_cast<int>(sizeof(scalar_t)) ? kColVec : 16 / sizeof(scalar_t);
  const auto stream = c10::cuda::getCurrentCUDAStream();
  auto run = [&](auto vec_tag) {
    constexpr int V = decltype(vec_tag)::value;
    // Each thread covers V columns, so the grid follows the width actually launched (V = 1 for strided
    // inputs): sizing it from `vec` left columns unwritten (found by the GPU oracle test, 2026-11-24).
    const dim3 grid(ceil_div(cols, kColThreads * V), chunks, want_partial ? ceil_div(rank, kRankTile) : 1);
    col_reduce_kernel<scalar_t, acc_t, V><<<grid, kColThreads, 0, stream>>>(
        in.const_data_ptr<scalar_t>(), in.stride(0), in.stride(1), coef.const_data_ptr<acc_t>(), rows, cols, rank,
        chunk_rows, dropout, want_partial ? partial.mutable_data_ptr<acc_t>() : nullptr,
        lora_A ? lora_A->const_data_ptr<scalar_t>() : nullptr, dx ? dx->mutable_data_ptr<scalar_t>() : nullptr);
  };
  const bool vectorized = vector_friendly(in.const_data_ptr(), in.stride(0), in.stride(1), cols, vec, sizeof(scalar_t)) &&
                          (lora_A == nullptr || is_aligned(lora_A->const_data_ptr(), vec * sizeof(scalar_t)));
  if (vectorized) {
    run(std::integral_constant<int, vec>{});
  } else {
    run(std::integral_constant<int, 1>{});
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return partial;
}

template <typename scalar_t, typename acc_t>
at::Tensor reduce_partials(const at::Tensor& partial, double scale, bool transpose, at::ScalarType dtype) {
  const int64_t chunks = partial.size(0), rank = partial.size(1), cols = partial.size(2);
  at::Tensor out = at::empty(transpose ? at::IntArrayRef{cols, rank} : at::IntArrayRef{rank, cols},
                             partial.options().dtype(dtype));
  const int64_t numel = rank * cols;
  if (numel == 0) return out;
  ordered_sum_kernel<scalar_t, acc_t><<<ceil_div(numel, 256), 256, 0, c10::cuda::getCurrentCUDAStream()>>>(
      partial.const_data_ptr<acc_t>(), chunks, rank, cols, static_cast<acc_t>(scale), transpose,
      out.mutable_data_ptr<scalar_t>());
  C10_CUDA_KERNEL_LAUNCH_CHECK();
  return out;
}

int64_t round_up(int64_t value, int64_t multiple) { return ceil_div(value, multiple) * multiple; }

std::tuple<at::Tensor, at::Tensor> lora_linear_fwd(const at::Tensor& x, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias, const at::Tensor& lora_A,
                                                   const at::Tensor& lora_B, double scaling, double dropout_p,
                                                   int64_t seed) {
  check_lora_forward("native_lora_linear_fwd", x, weight, bias, lora_A, lora_B, scaling, dropout_p);
  const c10::cuda::CUDAGuard guard(x.device());
  const int64_t rows = x.size(0), out_features = weight.size(0), rank = lora_A.size(0);
  const auto dtype = x.scalar_type();
  if (dropout_p == 0.0) {
    // No mask to apply: S = x Aᵀ is a skinny cuBLAS GEMM (36 µs at 8192 x 4096, r = 16, bf16, on the H100:
    // at the bandwidth of one read of x) and the LoRA term is folded into y with beta = 1.
    const at::Tensor shrink = at::linear(x, lora_A);
    at::Tensor y = at::linear(x, weight, bias);
    y.addmm_(shrink, lora_B.t(), 1.0, scaling);
    return {y, shrink};
  }
  // The rank-r operand [S | 1 | 0...], padded to a multiple of 8 columns for aligned cuBLAS operands, against
  // [s·B | b | 0...]: the scaling multiplies B (s · S first overflowed in 16-bit where |s · S| passes the dtype's
  // range, which large activations reach; s · B, rounded to the input dtype, overflows only where |s · B| does, and
  // LoRA's B starts at zero and stays small; cuBLAS's alpha on the product, the torch backend's order, has neither
  // limit but would scale the bias column too).
  const int64_t low_width = round_up(rank + (bias.has_value() ? 1 : 0), 8);
  at::Tensor shrink = at::empty({rows, rank}, x.options().dtype(accumulate_dtype(dtype)));
  at::Tensor low = at::empty({rows, low_width}, x.options());
  const at::Tensor lora_A_rows = lora_A.contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "native_lora_linear_fwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    launch_row_reduce<scalar_t, acc_t>(x, lora_A_rows, 1.0, make_dropout(dropout_p, seed), shrink,
                                       low.mutable_data_ptr<scalar_t>(), low_width, bias.has_value());
  });
  at::Tensor up = at::zeros({out_features, low_width}, x.options());
  up.narrow(1, 0, rank).copy_(lora_B).mul_(scaling);
  if (bias.has_value()) up.select(1, rank).copy_(*bias);
  at::Tensor y = at::mm(low, up.t());
  y.addmm_(x, weight.t(), 1.0, 1.0);
  return {y, shrink};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_bwd(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_A,
    const at::Tensor& lora_B, const at::Tensor& shrink, double scaling, double dropout_p, int64_t seed,
    const c10::List<bool>& needs) {
  const LoraNeeds need = check_lora_backward("native_lora_linear_bwd", grad_out, x, weight, lora_A, lora_B, shrink,
                                             scaling, dropout_p, needs);
  const c10::cuda::CUDAGuard guard(x.device());
  const auto dtype = x.scalar_type();
  const int64_t rows = x.size(0), rank = lora_A.size(0);
  at::Tensor dx, d_lora_A, d_lora_B;
  const at::Tensor d_weight = need.d_weight ? at::mm(grad_out.t(), x) : not_needed(x);
  const at::Tensor d_bias = need.d_bias ? grad_out.sum(0) : not_needed(x);
  if (dropout_p == 0.0) {
    // No mask: every LoRA product is a skinny cuBLAS GEMM in the inputs' dtype, deterministic like the kernels.
    // The scaling rides in alpha; addmm with beta = 0 ignores its input (a 0-dim stand-in broadcast to the result:
    // lora_B's row 0 would not exist for out_features = 0).
    if (need.dx || need.d_lora_A) {
      const at::Tensor d_shrink = at::addmm(at::empty({}, grad_out.options()), grad_out, lora_B, 0.0, scaling);
      if (need.dx) dx = at::mm(grad_out, weight).addmm_(d_shrink, lora_A);
      if (need.d_lora_A) d_lora_A = at::mm(d_shrink.t(), x);
    }
    if (need.d_lora_B) d_lora_B = at::addmm(lora_B, grad_out.t(), shrink, 0.0, scaling);
    return {or_not_needed(dx, x), or_not_needed(d_lora_A, x), or_not_needed(d_lora_B, x), d_weight, d_bias};
  }
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "native_lora_linear_bwd_cuda", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const Dropout no_dropout = make_dropout(0.0, 0);
    if (need.d_lora_B) {
      const at::Tensor partial =
          launch_col_reduce<scalar_t, acc_t>(grad_out, shrink.contiguous(), no_dropout, true, nullptr, nullptr);
      d_lora_B = reduce_partials<scalar_t, acc_t>(partial, scaling, /*transpose=*/true, dtype);
    }
    if (need.dx || need.d_lora_A) {
      at::Tensor d_shrink = at::empty({rows, rank}, shrink.options());
      const at::Tensor lora_B_columns = lora_B.t().contiguous();
      launch_row_reduce<scalar_t, acc_t>(grad_out, lora_B_columns, scaling, no_dropout, d_shrink, nullptr, 0, false);
      const at::Tensor lora_A_rows = lora_A.contiguous();
      if (need.dx) dx = at::empty({rows, x.size(1)}, x.options());
      const at::Tensor partial = launch_col_reduce<scalar_t, acc_t>(
          x, d_shrink, make_dropout(dropout_p, seed), need.d_lora_A, &lora_A_rows, need.dx ? &dx : nullptr);
      if (need.d_lora_A) d_lora_A = reduce_partials<scalar_t, acc_t>(partial, 1.0, /*transpose=*/false, dtype);
    }
  });
  if (need.dx) dx.addmm_(grad_out, weight, 1.0, 1.0);
  return {or_not_needed(dx, x), or_not_needed(d_lora_A, x), or_not_needed(d_lora_B, x), d_weight, d_bias};
}

}  // namespace
}  // namespace lowpeft::cuda

TORCH_LIBRARY_IMPL(lowpeft, CUDA, m) {
  m.impl("native_lora_linear_fwd", &lowpeft::cuda::lora_linear_fwd);
  m.impl("native_lora_linear_bwd", &lowpeft::cuda::lora_linear_bwd);
}
