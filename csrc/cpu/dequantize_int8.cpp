// CPU kernel of lowpeft::native_dequantize_int8: Ŵ = qweight · scale[:, None], computed in float32 (float64 for a
// float64 output) and rounded once to the output dtype.
//
// Trade-off: ATen's vectorized elementwise ops (a widening copy of qweight, a broadcast multiply, the narrowing
// copy) rather than a loop of our own: the pass is memory-bound and runs once per GEMM, so two temporaries of the
// weight's size cost less than another hand-written kernel to keep bit-exact with the reference.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../lowpeft_common.h"

namespace lowpeft::cpu {

at::Tensor dequantize_int8(const at::Tensor& qweight, const at::Tensor& scale, at::ScalarType dtype) {
  check_dequantize_int8("native_dequantize_int8", qweight, scale, dtype);
  const at::ScalarType wide = dtype == at::kDouble ? at::kDouble : at::kFloat;
  return (qweight.to(wide) * scale.to(wide).unsqueeze(1)).to(dtype).contiguous();
}

}  // namespace lowpeft::cpu

TORCH_LIBRARY_IMPL(lowpeft, CPU, m) { m.impl("native_dequantize_int8", &lowpeft::cpu::dequantize_int8); }
