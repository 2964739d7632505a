// CUDA kernel of lowpeft::native_dequantize_int8: Ŵ[o, i] = qweight[o, i] · scale[o], computed in float32 (float64
// for a float64 output) and rounded once to the output dtype; one pass, 1 byte read and 2 written per element in
// bf16, the same arithmetic as the Triton kernel (lowpeft/kernels/dequantize_int8.py).
//
// Trade-off: one thread per 8 consecutive elements of a row (a 16-byte store in 16-bit dtypes) when the row length
// allows, else one per element; the row's scale is re-read by every thread from L1 rather than staged, since the
// kernel is bound by the weight's traffic, not by the [out] scales.
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

template <int VEC, typename scalar_t, typename acc_t>
__global__ void dequantize_int8_kernel(const int8_t* __restrict__ qweight, const acc_t* __restrict__ scale,
                                       scalar_t* __restrict__ out, int64_t rows, int64_t cols) {
  const int64_t chunks_per_row = cols / VEC;
  const int64_t chunk = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (chunk >= rows * chunks_per_row) return;
  const int64_t row = chunk / chunks_per_row;
  const int64_t offset = row * cols + (chunk - row * chunks_per_row) * VEC;
  const acc_t row_scale = scale[row];
  acc_t values[VEC];
#pragma unroll
  for (int i = 0; i < VEC; ++i) values[i] = static_cast<acc_t>(qweight[offset + i]) * row_scale;
  store_narrowed<VEC>(out + offset, values);
}

}  // namespace

at::Tensor dequantize_int8(const at::Tensor& qweight, const at::Tensor& scale, at::ScalarType dtype) {
  check_dequantize_int8("native_dequantize_int8", qweight, scale, dtype);
  const c10::cuda::CUDAGuard guard(qweight.device());
  const at::Tensor q = qweight.contiguous();
  at::Tensor out = at::empty(q.sizes(), q.options().dtype(dtype));
  const int64_t rows = q.size(0), cols = q.size(1);
  if (out.numel() == 0) return out;
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "native_dequantize_int8", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const at::Tensor wide_scale = scale.to(c10::CppTypeToScalarType<acc_t>::value).contiguous();
    const auto stream = c10::cuda::getCurrentCUDAStream();
    constexpr int threads = 256;
    const bool vector = cols % 8 == 0 && is_aligned(out.data_ptr(), 8 * sizeof(scalar_t));
    const int64_t work = vector ? rows * (cols / 8) : rows * cols;
    const int64_t blocks = (work + threads - 1) / threads;
    if (vector) {
      dequantize_int8_kernel<8, scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
          q.const_data_ptr<int8_t>(), wide_scale.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), rows, cols);
    } else {
      dequantize_int8_kernel<1, scalar_t, acc_t><<<blocks, threads, 0, stream>>>(
          q.const_data_ptr<int8_t>(), wide_scale.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), rows, cols);
    }
    C10_CUDA_KERNEL_LAUNCH_CHECK();
  });
  return out;
}

}  // namespace lowpeft::cuda

TORCH_LIBRARY_IMPL(lowpeft, CUDA, m) { m.impl("native_dequantize_int8", &lowpeft::cuda::dequantize_int8); }
