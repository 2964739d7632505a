// Device helpers shared by the CUDA kernels: aligned vector loads / stores (16 bytes where the layout
// allows), widening to the accumulation type, warp sums and launch checks.
//
// Trade-off: every kernel has a vector path (unit column stride, 16-byte aligned rows) and a scalar path for
// any other strides, chosen on the host per call, so a non-contiguous input is read in place, never copied.
#pragma once

#include <cstdint>

#include <c10/cuda/CUDAException.h>

namespace lowpeft::cuda {

template <typename T, int N>
struct alignas(sizeof(T) * N) Pack {
  T values[N];
};

// out[i] = src[i * stride] widened to acc_t; with VEC > 1 the caller guarantees stride 1 and alignment.
template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void load_widened(const scalar_t* __restrict__ src, int64_t stride, acc_t (&out)[VEC]) {
  if constexpr (VEC > 1) {
    const Pack<scalar_t, VEC> pack = *reinterpret_cast<const Pack<scalar_t, VEC>*>(src);
#pragma unroll
    for (int i = 0; i < VEC; ++i) out[i] = static_cast<acc_t>(pack.values[i]);
  } else {
    out[0] = static_cast<acc_t>(src[0 * stride]);
  }
}

template <int VEC, typename scalar_t, typename acc_t>
__device__ __forceinline__ void store_narrowed(scalar_t* __restrict__ dst, const acc_t (&in)[VEC]) {
  if constexpr (VEC > 1) {
    Pack<scalar_t, VEC> pack;
#pragma unroll
    for (int i = 0; i < VEC; ++i) pack.values[i] = static_cast<scalar_t>(in[i]);
    *reinterpret_cast<Pack<scalar_t, VEC>*>(dst) = pack;
  } else {
    dst[0] = static_cast<scalar_t>(in[0]);
  }
}

template <typename acc_t>
__device__ __forceinline__ acc_t warp_sum(acc_t value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset >>= 1) value += __shfl_xor_sync(0xffffffffu, value, offset);
  return value;
}

// Whether rows of a [rows, cols] view can be read with VEC-wide aligned vector loads.
inline bool vector_friendly(const void* data, int64_t row_stride, int64_t col_stride, int64_t cols, int vec,
                            int64_t element_size) {
  return vec > 1 && col_stride == 1 && cols % vec == 0 && row_stride % vec == 0 &&
         reinterpret_cast<uintptr_t>(data) % (vec * element_size) == 0;
}

inline bool is_aligned(const void* data, int64_t bytes) {
  return reinterpret_cast<uintptr_t>(data) % bytes == 0;
}

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

}  // namespace lowpeft::cuda
