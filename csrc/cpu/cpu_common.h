// Row-level building blocks of the CPU kernels: widening row loads, dot / axpy / multiply over float or
// double rows, the fixed row partition of deterministic reductions and their ordered sum.
//
// Trade-off: the vector loops are plain C++ loops compiled once per ISA (GCC target_clones: AVX-512,
// AVX2, baseline) and picked at load time, rather than at::vec::Vectorized, whose width is fixed by the
// flags this extension is compiled with (baseline SSE2 for a portable wheel). Each call handles a whole row,
// so the indirect call costs nothing measurable.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <type_traits>

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

namespace lowpeft::cpu {

#define LOWPEFT_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), unused))

LOWPEFT_CPU_CLONES static float dot(const float* a, const float* b, int64_t n) {
  float sum = 0.f;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

LOWPEFT_CPU_CLONES static double dot(const double* a, const double* b, int64_t n) {
  double sum = 0.0;
#pragma omp simd reduction(+ : sum)
  for (int64_t i = 0; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

// y += alpha * x
LOWPEFT_CPU_CLONES static void axpy(float alpha, const float* x, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

LOWPEFT_CPU_CLONES static void axpy(double alpha, const double* x, double* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] += alpha * x[i];
}

// y *= m (elementwise)
LOWPEFT_CPU_CLONES static void multiply(const float* m, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= m[i];
}

LOWPEFT_CPU_CLONES static void multiply(const double* m, double* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= m[i];
}

// dst[i] = src[i * stride] widened to acc_t.
template <typename scalar_t, typename acc_t>
inline void load_row(const scalar_t* src, int64_t stride, int64_t n, acc_t* dst) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    if (stride == 1) {
      std::memcpy(dst, src, n * sizeof(acc_t));
      return;
    }
  }
  for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<acc_t>(src[i * stride]);
}

// dst[i] += add[i], dst in the input dtype (contiguous), the sum taken in acc_t.
template <typename scalar_t, typename acc_t>
inline void add_into_row(const acc_t* add, scalar_t* dst, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    axpy(acc_t(1), add, dst, n);
  } else {
    for (int64_t i = 0; i < n; ++i) dst[i] = static_cast<scalar_t>(static_cast<acc_t>(dst[i]) + add[i]);
  }
}

// Grain (rows per task) for at::parallel_for so that each task does at least ~32k multiply-adds.
inline int64_t row_grain(int64_t work_per_row) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_row));
}

// A partition of T rows into chunks that depends on T alone (not on the thread count), so that split-T
// reductions are deterministic: at most 32 chunks of at least 64 rows.
struct RowChunks {
  int64_t rows, size, count;
  explicit RowChunks(int64_t rows_)
      : rows(rows_), size(std::max<int64_t>(64, (rows_ + 31) / 32)), count((rows_ + size - 1) / size) {}
  int64_t begin(int64_t chunk) const { return chunk * size; }
  int64_t end(int64_t chunk) const { return std::min(rows, (chunk + 1) * size); }
};

// scale · Σ_c partials[c] over the first dimension, summed in chunk order ([chunks, ...] -> [...]).
template <typename acc_t>
at::Tensor ordered_sum(const at::Tensor& partials, acc_t scale) {
  const int64_t chunks = partials.size(0);
  at::Tensor out = at::empty(partials.sizes().slice(1), partials.options());
  const int64_t numel = out.numel();
  const acc_t* in = partials.const_data_ptr<acc_t>();
  acc_t* result = out.mutable_data_ptr<acc_t>();
  at::parallel_for(0, numel, 4096, [&](int64_t begin, int64_t end) {
    std::fill(result + begin, result + end, acc_t(0));
    for (int64_t c = 0; c < chunks; ++c) axpy(acc_t(1), in + c * numel + begin, result + begin, end - begin);
    for (int64_t i = begin; i < end; ++i) result[i] *= scale;
  });
  return out;
}

}  // namespace lowpeft::cpu
