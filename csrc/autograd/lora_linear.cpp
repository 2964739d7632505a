// lowpeft::native_lora_linear: the differentiable LoRA layer on the compiled backends (cpu, cuda), its autograd
// written in C++ around the per-backend ops native_lora_linear_fwd / native_lora_linear_bwd.
//
// Trade-off: a Python torch.autograd.Function around those ops costs tens of microseconds of host time per layer
// call (argument unwrapping, the Python ctx, a Python backward); measured on the H100 machine's CPU, a small
// layer's forward + backward cost more host time than eager PyTorch's seven ops. Here the forward is one
// dispatcher call from Python and the backward never enters Python. The price: this file knows the order of the
// needs flags and gradients, which registration.cpp's schemas define (and the Python torch.library op mirrors).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "lora_ops.h"
#include "rows.h"

namespace lowpeft {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

class LoraLinearFunction : public torch::autograd::Function<LoraLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& weight,
                            const std::optional<at::Tensor>& bias, const at::Tensor& lora_A, const at::Tensor& lora_B,
                            double scaling, double dropout_p, int64_t seed) {
    const at::Tensor x_rows = rows_of("native_lora_linear", "x", x);
    auto [y, shrink] = lora_forward_op().call(x_rows, weight, bias, lora_A, lora_B, scaling, dropout_p, seed);
    ctx->save_for_backward({x_rows, weight, lora_A, lora_B, shrink});
    ctx->saved_data["scaling"] = scaling;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["x_shape"] = x.sizes().vec();
    return shaped_like(y, x.sizes(), weight.size(0));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    // Grad mode is on inside a backward only under create_graph=True: refuse, as the Python ops do
    // (lowpeft/ops/_torch_rules.py), rather than record a graph that silently misses terms.
    TORCH_CHECK(!at::GradMode::is_enabled(),
                "native_lora_linear: second-order gradients (a backward with create_graph=True) are not supported: ",
                "the backward runs fused kernels, so they would silently miss terms; compute them with plain ",
                "PyTorch layers (lowpeft.reference)");
    const variable_list saved = ctx->get_saved_variables();
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // needs_input_grad counts tensor arguments only: x, weight, [bias,] lora_A, lora_B.
    const size_t lora_edge = has_bias ? 3 : 2;
    const bool need_dx = ctx->needs_input_grad(0), need_dW = ctx->needs_input_grad(1);
    const bool need_db = has_bias && ctx->needs_input_grad(2);
    const bool need_dA = ctx->needs_input_grad(lora_edge), need_dB = ctx->needs_input_grad(lora_edge + 1);
    const at::Tensor empty;
    if (!(need_dx || need_dW || need_db || need_dA || need_dB)) {
      return {empty, empty, empty, empty, empty, empty, empty, empty};
    }
    at::Tensor grad = grad_outputs[0];
    grad = grad.dim() == 2 ? grad : grad.reshape({-1, grad.size(-1)});
    if (grad.size(1) > 1 && grad.stride(1) != 1) grad = grad.contiguous();
    const c10::List<bool> needs({need_dx, need_dA, need_dB, need_dW, need_db});
    auto [dx, d_lora_A, d_lora_B, d_weight, d_bias] =
        lora_backward_op().call(grad, saved[0], saved[1], saved[2], saved[3], saved[4],
                           ctx->saved_data["scaling"].toDouble(), ctx->saved_data["dropout_p"].toDouble(),
                           ctx->saved_data["seed"].toInt(), needs);
    if (need_dx) {
      const std::vector<int64_t> x_shape = ctx->saved_data["x_shape"].toIntVector();
      if (x_shape.size() != 2) dx = at::_unsafe_view(dx, x_shape);
    }
    return {need_dx ? dx : empty, need_dW ? d_weight : empty, need_db ? d_bias : empty,
            need_dA ? d_lora_A : empty, need_dB ? d_lora_B : empty, empty, empty, empty};
  }
};

at::Tensor lora_linear_autograd(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                                const at::Tensor& lora_A, const at::Tensor& lora_B, double scaling, double dropout_p,
                                int64_t seed) {
  return LoraLinearFunction::apply(x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed);
}

// Below autograd (inference mode, or a dispatch that already handled autograd): the forward op's y alone.
at::Tensor lora_linear_forward_only(const at::Tensor& x, const at::Tensor& weight,
                                    const std::optional<at::Tensor>& bias, const at::Tensor& lora_A,
                                    const at::Tensor& lora_B, double scaling, double dropout_p, int64_t seed) {
  const at::Tensor y = std::get<0>(
      lora_forward_op().call(rows_of("native_lora_linear", "x", x), weight, bias, lora_A, lora_B, scaling, dropout_p, seed));
  return shaped_like(y, x.sizes(), weight.size(0));
}

}  // namespace
}  // namespace lowpeft

TORCH_LIBRARY_FRAGMENT(lowpeft, m) {
  m.def(
      "native_lora_linear(Tensor x, Tensor weight, Tensor? bias, Tensor lora_A, Tensor lora_B, float scaling, "
      "float dropout_p, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(lowpeft, CompositeExplicitAutograd, m) {
  m.impl("native_lora_linear", &lowpeft::lora_linear_forward_only);
}

TORCH_LIBRARY_IMPL(lowpeft, Autograd, m) { m.impl("native_lora_linear", &lowpeft::lora_linear_autograd); }
