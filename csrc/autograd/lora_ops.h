// Typed dispatcher handles of the per-backend LoRA ops (lowpeft::native_lora_linear_fwd / _bwd) and of the int8
// base's dequantize op, shared by the C++ autograd functions of lora_linear.cpp and int8_lora_linear.cpp.
//
// Trade-off: each handle is looked up once (a function-local static) and called through the dispatcher, so the
// autograd functions reach whichever backend (CPU, CUDA, Meta) the tensors live on without knowing the kernels.
#pragma once

#include <optional>
#include <tuple>

#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>

namespace lowpeft {

using LoraForwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                         const std::optional<at::Tensor>&, const at::Tensor&,
                                                         const at::Tensor&, double, double, int64_t);
using LoraBackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&, const at::Tensor&,
    double, double, int64_t, const c10::List<bool>&);
using DequantizeFn = at::Tensor(const at::Tensor&, const at::Tensor&, at::ScalarType);

inline const c10::TypedOperatorHandle<LoraForwardFn>& lora_forward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("lowpeft::native_lora_linear_fwd", "").typed<LoraForwardFn>();
  return op;
}

inline const c10::TypedOperatorHandle<LoraBackwardFn>& lora_backward_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("lowpeft::native_lora_linear_bwd", "").typed<LoraBackwardFn>();
  return op;
}

inline const c10::TypedOperatorHandle<DequantizeFn>& dequantize_int8_op() {
  static const auto op =
      c10::Dispatcher::singleton().findSchemaOrThrow("lowpeft::native_dequantize_int8", "").typed<DequantizeFn>();
  return op;
}

}  // namespace lowpeft
