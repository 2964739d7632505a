// out = residual + alpha · (left @ right), written once: one cuBLASLt matmul whose C operand (the residual) and D
// operand (the output) are different tensors. ATen's out-of-place addmm copies the residual into the output
// first and then accumulates with beta = 1 (an extra read and write of a [T, D] tensor: 41 µs each time at
// 8192 x 4096 bf16 on the H100, two of them per adapter step; benchmarks/results/run24_profile_lora.log).
//
// Trade-off: the cuBLASLt path covers 16-bit inputs with a unit column stride, real (non-broadcast) rows that
// start on 16-byte boundaries and the two dense layouts of `right`, and tells cuBLASLt each buffer's actual
// alignment; anything else (float32 / float64, other strides, an empty side, no algorithm for the shape) goes
// through at::addmm, which is correct for every input, only slower. cuBLASLt's symbols resolve through
// libtorch_cuda's own dependency on it (setup.py does not link it again).
#include "gemm_residual.h"

#include <ATen/cuda/CUDAContext.h>
#include <ATen/cuda/Exceptions.h>
#include <c10/cuda/CUDAGuard.h>
#include <cublasLt.h>

namespace lowpeft::cuda {
namespace {

// RAII owners of the cuBLASLt descriptors of one call.
struct LtMatmul {
  cublasLtMatmulDesc_t desc = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  cublasLtMatmulPreference_t preference = nullptr;
  ~LtMatmul() {
    if (preference) cublasLtMatmulPreferenceDestroy(preference);
    for (cublasLtMatrixLayout_t layout : {a, b, c, d})
      if (layout) cublasLtMatrixLayoutDestroy(layout);
    if (desc) cublasLtMatmulDescDestroy(desc);
  }
};

// The largest power of two (at most 256) dividing a buffer's address: cuBLASLt assumes 256-byte alignment
// unless told otherwise, and views that start mid-tensor (a row slice, a narrow of a cat's gradient) have less.
uint32_t address_alignment(const void* data) {
  const auto address = reinterpret_cast<uintptr_t>(data);
  uint32_t alignment = 256;
  while (address % alignment != 0) alignment /= 2;
  return alignment;
}

// Unit column stride, leading dimensions that are real rows (not broadcast: stride 0 is allowed by ATen
// views, not by cuBLASLt), rows that start on 16-byte boundaries, and the two dense layouts of `right`.
bool lt_supported(const at::Tensor& residual, const at::Tensor& left, const at::Tensor& right) {
  const auto dtype = residual.scalar_type();
  if (dtype != at::kHalf && dtype != at::kBFloat16) return false;
  if (left.scalar_type() != dtype || right.scalar_type() != dtype) return false;
  if (residual.numel() == 0 || left.size(1) == 0) return false;
  const int64_t width = left.size(1), dim = right.size(1);
  const bool right_row_major = right.stride(1) == 1 && right.stride(0) == dim;
  const bool right_col_major = right.stride(0) == 1 && right.stride(1) == width;
  const bool dense_rows = residual.stride(1) == 1 && residual.stride(0) >= dim && left.stride(1) == 1 &&
                          left.stride(0) >= width;
  constexpr int64_t kRowAlignment = 16 / 2;  // elements of a 16-bit type per 16 bytes
  const bool aligned_rows = residual.stride(0) % kRowAlignment == 0 && left.stride(0) % kRowAlignment == 0 &&
                            (right_row_major ? dim : width) % kRowAlignment == 0;
  for (const at::Tensor* tensor : {&residual, &left, &right})
    if (address_alignment(tensor->const_data_ptr()) < 16) return false;
  return dense_rows && aligned_rows && (right_row_major || right_col_major);
}

}  // namespace

at::Tensor gemm_residual(const at::Tensor& residual, const at::Tensor& left, const at::Tensor& right, double alpha) {
  if (!lt_supported(residual, left, right)) return at::addmm(residual, left, right, 1.0, alpha);
  const c10::cuda::CUDAGuard guard(residual.device());
  const int64_t tokens = residual.size(0), dim = residual.size(1), width = left.size(1);
  at::Tensor out = at::empty({tokens, dim}, residual.options());
  // Column-major view: outᵀ [dim, tokens] = alpha · op(A) [dim, width] · leftᵀ [width, tokens] + residualᵀ.
  // `right` row-major [width, dim] is A = a column-major [dim, width] (no transpose); its transpose view (a
  // contiguous [dim, width] seen as [width, dim]) is a column-major [width, dim], used transposed.
  const bool right_row_major = right.stride(1) == 1;
  const cublasOperation_t trans_a = right_row_major ? CUBLAS_OP_N : CUBLAS_OP_T, trans_b = CUBLAS_OP_N;
  const cudaDataType_t type = residual.scalar_type() == at::kHalf ? CUDA_R_16F : CUDA_R_16BF;
  LtMatmul lt;
  TORCH_CUDABLAS_CHECK(cublasLtMatmulDescCreate(&lt.desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
  TORCH_CUDABLAS_CHECK(cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_TRANSA, &trans_a, sizeof(trans_a)));
  TORCH_CUDABLAS_CHECK(cublasLtMatmulDescSetAttribute(lt.desc, CUBLASLT_MATMUL_DESC_TRANSB, &trans_b, sizeof(trans_b)));
  if (right_row_major) {
    TORCH_CUDABLAS_CHECK(cublasLtMatrixLayoutCreate(&lt.a, type, dim, width, right.stride(0)));
  } else {
    TORCH_CUDABLAS_CHECK(cublasLtMatrixLayoutCreate(&lt.a, type, width, dim, right.stride(1)));
  }
  TORCH_CUDABLAS_CHECK(cublasLtMatrixLayoutCreate(&lt.b, type, width, tokens, left.stride(0)));
  TORCH_CUDABLAS_CHECK(cublasLtMatrixLayoutCreate(&lt.c, type, dim, tokens, residual.stride(0)));
  TORCH_CUDABLAS_CHECK(cublasLtMatrixLayoutCreate(&lt.d, type, dim, tokens, out.stride(0)));
  size_t workspace_bytes = at::cuda::getCUDABlasLtWorkspaceSize();
  TORCH_CUDABLAS_CHECK(cublasLtMatmulPreferenceCreate(&lt.preference));
  TORCH_CUDABLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      lt.preference, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &workspace_bytes, sizeof(workspace_bytes)));
  const uint32_t alignment_a = address_alignment(right.const_data_ptr());
  const uint32_t alignment_b = address_alignment(left.const_data_ptr());
  const uint32_t alignment_c = address_alignment(residual.const_data_ptr());
  const uint32_t alignment_d = address_alignment(out.const_data_ptr());
  TORCH_CUDABLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      lt.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_A_BYTES, &alignment_a, sizeof(alignment_a)));
  TORCH_CUDABLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      lt.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_B_BYTES, &alignment_b, sizeof(alignment_b)));
  TORCH_CUDABLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      lt.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_C_BYTES, &alignment_c, sizeof(alignment_c)));
  TORCH_CUDABLAS_CHECK(cublasLtMatmulPreferenceSetAttribute(
      lt.preference, CUBLASLT_MATMUL_PREF_MIN_ALIGNMENT_D_BYTES, &alignment_d, sizeof(alignment_d)));
  cublasLtHandle_t handle = at::cuda::getCurrentCUDABlasLtHandle();
  cublasLtMatmulHeuristicResult_t heuristic = {};
  int found = 0;
  const cublasStatus_t status = cublasLtMatmulAlgoGetHeuristic(handle, lt.desc, lt.a, lt.b, lt.c, lt.d,
                                                               lt.preference, 1, &heuristic, &found);
  if (status != CUBLAS_STATUS_SUCCESS || found == 0) return at::addmm(residual, left, right, 1.0, alpha);
  const float alpha_f = static_cast<float>(alpha), beta_f = 1.0f;
  TORCH_CUDABLAS_CHECK(cublasLtMatmul(handle, lt.desc, &alpha_f, right.const_data_ptr(), lt.a, left.const_data_ptr(),
                                      lt.b, &beta_f, residual.const_data_ptr(), lt.c, out.mutable_data_ptr(), lt.d,
                                      &heuristic.algo, at::cuda::getCUDABlasLtWorkspace(), workspace_bytes,
                                      at::cuda::getCurrentCUDAStream()));
  return out;
}

}  // namespace lowpeft::cuda
