// residual + alpha · (left @ right) into a new tensor, in one cuBLASLt call (see gemm_residual.cu).
#pragma once

#include <ATen/ATen.h>

namespace lowpeft::cuda {

// left [T, W], right [W, D], residual [T, D]; the result has residual's dtype and a fresh contiguous layout.
at::Tensor gemm_residual(const at::Tensor& residual, const at::Tensor& left, const at::Tensor& right, double alpha);

}  // namespace lowpeft::cuda
