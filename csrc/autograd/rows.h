// Flattening for the C++ autograd functions (lora_linear.cpp, bottleneck_adapter.cpp): x [..., width] as the
// backend ops' [T, width] rows and a [T, last] result back as [..., last].
//
// Trade-off: the reshapes happen inside the autograd functions, so they record no graph nodes (from Python they
// were two view nodes and two dispatcher calls per layer call); _unsafe_view keeps the result from being a view of a
// temporary (FSDP2 warns about module outputs that are views), which is safe because nothing else holds the rows.
#pragma once

#include <string_view>
#include <vector>

#include <ATen/ATen.h>

namespace lowpeft {

inline at::Tensor rows_of(std::string_view op, const char* name, const at::Tensor& x) {
  TORCH_CHECK_VALUE(x.dim() >= 1, op, ": ", name, ": expected at least 1 dimension [..., features], got a 0-d tensor");
  return x.dim() == 2 ? x : x.reshape({-1, x.size(-1)});
}

inline at::Tensor shaped_like(const at::Tensor& rows, at::IntArrayRef x_shape, int64_t last) {
  if (x_shape.size() == 2) return rows;
  std::vector<int64_t> shape(x_shape.begin(), x_shape.end() - 1);
  shape.push_back(last);
  return at::_unsafe_view(rows, shape);
}

}  // namespace lowpeft
