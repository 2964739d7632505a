// out += alpha · low @ rightᵀ for a low-rank pair, in place (see fold_low_rank.cu).
#pragma once

#include <ATen/ATen.h>

namespace lowpeft::cuda {

// out [T, N] (row-major), low [T, r], right [N, r] (any strides); 16-bit dtypes and r ≤ 32 run lowpeft's kernel,
// anything else out.addmm_(low, rightᵀ, 1, alpha) (cuBLAS, beta = 1).
void fold_low_rank(at::Tensor& out, const at::Tensor& low, const at::Tensor& right, double alpha);

}  // namespace lowpeft::cuda
