// Row-level building blocks of the CPU kernels: widening row loads, dropout multipliers, elementwise multiply
// over float or double rows, and the row grain of at::parallel_for.
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

namespace lowpeft::cpu {

#define LOWPEFT_CPU_CLONES __attribute__((target_clones("avx512f", "avx2", "default"), unused))

// y *= m (elementwise)
LOWPEFT_CPU_CLONES static void multiply(const float* m, float* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= m[i];
}

LOWPEFT_CPU_CLONES static void multiply(const double* m, double* y, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) y[i] *= m[i];
}

// out[i] = draws[i] >= threshold ? keep_scale : 0 (the dropout multipliers of one row)
LOWPEFT_CPU_CLONES static void keep_multipliers(const uint32_t* draws, uint32_t threshold, float keep_scale,
                                                float* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = draws[i] >= threshold ? keep_scale : 0.f;
}

LOWPEFT_CPU_CLONES static void keep_multipliers(const uint32_t* draws, uint32_t threshold, double keep_scale,
                                                double* out, int64_t n) {
#pragma omp simd
  for (int64_t i = 0; i < n; ++i) out[i] = draws[i] >= threshold ? keep_scale : 0.0;
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

// row[i] *= m[i] for a row in the input dtype (the product taken in acc_t).
template <typename scalar_t, typename acc_t>
inline void multiply_row(const acc_t* m, scalar_t* row, int64_t n) {
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    multiply(m, row, n);
  } else {
    for (int64_t i = 0; i < n; ++i) row[i] = static_cast<scalar_t>(static_cast<acc_t>(row[i]) * m[i]);
  }
}

// Grain (rows per task) for at::parallel_for so that each task does at least ~32k operations.
inline int64_t row_grain(int64_t work_per_row) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, work_per_row));
}

}  // namespace lowpeft::cpu
