// lowpeft::native_bottleneck_adapter: the differentiable bottleneck adapter on the compiled backends (cpu, cuda),
// its autograd written in C++ around the per-backend ops native_bottleneck_adapter_fwd / _bwd.
//
// Trade-off: as for lowpeft::native_lora_linear (csrc/autograd/lora_linear.cpp), a Python autograd.Function around
// the native ops costs host time that small adapters cannot hide; here the forward is one dispatcher call from
// Python and the backward never enters Python. This file knows the order of the needs flags and gradients that
// registration.cpp's schemas define (dh, d_down_weight, d_down_bias, d_up_weight, d_up_bias).
#include <ATen/ATen.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "rows.h"

namespace lowpeft {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

using ForwardFn = std::tuple<at::Tensor, at::Tensor>(const at::Tensor&, const at::Tensor&,
                                                     const std::optional<at::Tensor>&, const at::Tensor&,
                                                     const std::optional<at::Tensor>&, c10::string_view, double);
using BackwardFn = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor>(
    const at::Tensor&, const at::Tensor&, const at::Tensor&, const std::optional<at::Tensor>&, const at::Tensor&,
    const at::Tensor&, c10::string_view, double, const c10::List<bool>&);

const c10::TypedOperatorHandle<ForwardFn>& forward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lowpeft::native_bottleneck_adapter_fwd", "")
                             .typed<ForwardFn>();
  return op;
}

const c10::TypedOperatorHandle<BackwardFn>& backward_op() {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("lowpeft::native_bottleneck_adapter_bwd", "")
                             .typed<BackwardFn>();
  return op;
}

bool present(const std::optional<at::Tensor>& tensor) { return tensor.has_value() && tensor->defined(); }

class BottleneckAdapterFunction : public torch::autograd::Function<BottleneckAdapterFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& h, const at::Tensor& down_weight,
                            const std::optional<at::Tensor>& down_bias, const at::Tensor& up_weight,
                            const std::optional<at::Tensor>& up_bias, c10::string_view activation, double scale) {
    const at::Tensor h_rows = rows_of("native_bottleneck_adapter", "h", h);
    auto [out, z] = forward_op().call(h_rows, down_weight, down_bias, up_weight, up_bias, activation, scale);
    ctx->save_for_backward({h_rows, down_weight, present(down_bias) ? *down_bias : at::Tensor(), up_weight, z});
    ctx->saved_data["h_shape"] = h.sizes().vec();
    ctx->saved_data["activation"] = std::string(activation.data(), activation.size());
    ctx->saved_data["scale"] = scale;
    ctx->saved_data["has_down_bias"] = present(down_bias);
    ctx->saved_data["has_up_bias"] = present(up_bias);
    return shaped_like(out, h.sizes(), h.size(-1));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // Grad mode is on inside a backward only under create_graph=True: refuse, as the Python ops do
    // (lowpeft/ops/_torch_rules.py), rather than record a graph that silently misses terms.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "native_bottleneck_adapter: second-order gradients (a backward with create_graph=True) are not ",
                "supported: the backward runs fused kernels, so they would silently miss terms; compute them with ",
                "plain PyTorch layers (lowpeft.reference)");
    const variable_list saved = ctx->get_saved_variables();
    const bool has_down_bias = ctx->saved_data["has_down_bias"].toBool();
    const bool has_up_bias = ctx->saved_data["has_up_bias"].toBool();
    // needs_input_grad counts tensor arguments only: h, down_weight, [down_bias,] up_weight, [up_bias].
    size_t edge = 0;
    const bool need_dh = ctx->needs_input_grad(edge++);
    const bool need_d_down_weight = ctx->needs_input_grad(edge++);
    const bool need_d_down_bias = has_down_bias && ctx->needs_input_grad(edge++);
    const bool need_d_up_weight = ctx->needs_input_grad(edge++);
    const bool need_d_up_bias = has_up_bias && ctx->needs_input_grad(edge);
    const at::Tensor empty;
    if (!(need_dh || need_d_down_weight || need_d_down_bias || need_d_up_weight || need_d_up_bias)) {
      return {empty, empty, empty, empty, empty, empty, empty};
    }
    at::Tensor grad = grad_outputs[0];
    grad = grad.dim() == 2 ? grad : grad.reshape({-1, grad.size(-1)});
    if (grad.size(1) > 1 && grad.stride(1) != 1) grad = grad.contiguous();
    const std::optional<at::Tensor> down_bias = has_down_bias ? std::optional<at::Tensor>(saved[2]) : std::nullopt;
    const std::string activation = ctx->saved_data["activation"].toStringRef();
    const c10::List<bool> needs({need_dh, need_d_down_weight, need_d_down_bias, need_d_up_weight, need_d_up_bias});
    auto [dh, d_down_weight, d_down_bias, d_up_weight, d_up_bias] =
        backward_op().call(grad, saved[0], saved[1], down_bias, saved[3], saved[4], activation,
                           ctx->saved_data["scale"].toDouble(), needs);
    if (need_dh) {
      const std::vector<int64_t> h_shape = ctx->saved_data["h_shape"].toIntVector();
      if (h_shape.size() != 2) dh = at::_unsafe_view(dh, h_shape);
    }
    return {need_dh ? dh : empty,
            need_d_down_weight ? d_down_weight : empty,
            need_d_down_bias ? d_down_bias : empty,
            need_d_up_weight ? d_up_weight : empty,
            need_d_up_bias ? d_up_bias : empty,
            empty,
            empty};
  }
};

at::Tensor bottleneck_adapter_autograd(const at::Tensor& h, const at::Tensor& down_weight,
                                       const std::optional<at::Tensor>& down_bias, const at::Tensor& up_weight,
                                       const std::optional<at::Tensor>& up_bias, c10::string_view activation,
                                       double scale) {
  return BottleneckAdapterFunction::apply(h, down_weight, down_bias, up_weight, up_bias, activation, scale);
}

// Below autograd (inference mode, or a dispatch that already handled autograd): the forward op's output alone.
at::Tensor bottleneck_adapter_forward_only(const at::Tensor& h, const at::Tensor& down_weight,
                                           const std::optional<at::Tensor>& down_bias, const at::Tensor& up_weight,
                                           const std::optional<at::Tensor>& up_bias, c10::string_view activation,
                                           double scale) {
  const at::Tensor out = std::get<0>(forward_op().call(rows_of("native_bottleneck_adapter", "h", h), down_weight,
                                                       down_bias, up_weight, up_bias, activation, scale));
  return shaped_like(out, h.sizes(), h.size(-1));
}

}  // namespace
}  // namespace lowpeft

TORCH_LIBRARY_FRAGMENT(lowpeft, m) {
  m.def(
      "native_bottleneck_adapter(Tensor h, Tensor down_weight, Tensor? down_bias, Tensor up_weight, "
      "Tensor? up_bias, str activation, float scale) -> Tensor");
}

TORCH_LIBRARY_IMPL(lowpeft, CompositeExplicitAutograd, m) {
  m.impl("native_bottleneck_adapter", &lowpeft::bottleneck_adapter_forward_only);
}

TORCH_LIBRARY_IMPL(lowpeft, Autograd, m) {
  m.impl("native_bottleneck_adapter", &lowpeft::bottleneck_adapter_autograd);
}
