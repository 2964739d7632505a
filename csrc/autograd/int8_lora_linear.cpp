// lowpeft::native_int8_lora_linear: LoRA over an int8 frozen base on the compiled backends, its autograd in C++:
// Ŵ = native_dequantize_int8(qweight, weight_scale) in x's dtype, then the LoRA layer's own per-backend ops
// (native_lora_linear_fwd / _bwd) on Ŵ, as lowpeft/ops/int8_lora_linear.py does from Python.
//
// Trade-off: Ŵ is transient (made in the forward, made again in the backward when dx is needed) and never saved,
// so a layer holds 1 byte per base weight between forward and backward; one extra memory pass per GEMM pays for
// it. From C++ the call costs one dispatcher call and no Python in the backward: the Python Function path cost the
// ~1B model 70 ms a step in host time on the H100 machine (run 91). The needs order and the gradient slots mirror
// the Python op's (x, qweight, weight_scale, bias, lora_A, lora_B: the base gets none).
#include <ATen/ATen.h>
#include <torch/autograd.h>
#include <torch/library.h>

#include "lora_ops.h"
#include "rows.h"

namespace lowpeft {
namespace {

using torch::autograd::AutogradContext;
using torch::autograd::variable_list;

constexpr const char* kOp = "native_int8_lora_linear";

class Int8LoraLinearFunction : public torch::autograd::Function<Int8LoraLinearFunction> {
 public:
  static at::Tensor forward(AutogradContext* ctx, const at::Tensor& x, const at::Tensor& qweight,
                            const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                            const at::Tensor& lora_A, const at::Tensor& lora_B, double scaling, double dropout_p,
                            int64_t seed) {
    const at::Tensor x_rows = rows_of(kOp, "x", x);
    const at::Tensor weight = dequantize_int8_op().call(qweight, weight_scale, x.scalar_type());
    auto [y, shrink] = lora_forward_op().call(x_rows, weight, bias, lora_A, lora_B, scaling, dropout_p, seed);
    ctx->save_for_backward({x_rows, qweight, weight_scale, lora_A, lora_B, shrink});
    ctx->saved_data["scaling"] = scaling;
    ctx->saved_data["dropout_p"] = dropout_p;
    ctx->saved_data["seed"] = seed;
    ctx->saved_data["has_bias"] = bias.has_value() && bias->defined();
    ctx->saved_data["x_shape"] = x.sizes().vec();
    return shaped_like(y, x.sizes(), qweight.size(0));
  }

  static variable_list backward(AutogradContext* ctx, variable_list grad_outputs) {
    TORCH_CHECK(!at::GradMode::is_enabled(), kOp,
                ": second-order gradients (a backward with create_graph=True) are not supported: the backward runs "
                "fused kernels, so they would silently miss terms; compute them with plain PyTorch layers "
                "(lowpeft.reference)");
    const variable_list saved = ctx->get_saved_variables();
    const at::Tensor &x = saved[0], &qweight = saved[1], &weight_scale = saved[2];
    const bool has_bias = ctx->saved_data["has_bias"].toBool();
    // needs_input_grad counts tensor arguments only: x, qweight, weight_scale, [bias,] lora_A, lora_B.
    const size_t lora_edge = has_bias ? 4 : 3;
    const bool need_dx = ctx->needs_input_grad(0), need_db = has_bias && ctx->needs_input_grad(3);
    const bool need_dA = ctx->needs_input_grad(lora_edge), need_dB = ctx->needs_input_grad(lora_edge + 1);
    const at::Tensor empty;
    if (!(need_dx || need_db || need_dA || need_dB)) {
      return variable_list(9);
    }
    at::Tensor grad = grad_outputs[0];
    grad = grad.dim() == 2 ? grad : grad.reshape({-1, grad.size(-1)});
    if (grad.size(1) > 1 && grad.stride(1) != 1) grad = grad.contiguous();
    // The backends read the base weight for dx only; without dx a zero-stride stand-in of its shape goes in.
    const at::Tensor weight = need_dx ? dequantize_int8_op().call(qweight, weight_scale, x.scalar_type())
                                      : at::empty({}, x.options()).expand(qweight.sizes());
    const c10::List<bool> needs({need_dx, need_dA, need_dB, false, need_db});
    auto [dx, d_lora_A, d_lora_B, d_weight, d_bias] =
        lora_backward_op().call(grad, x, weight, saved[3], saved[4], saved[5], ctx->saved_data["scaling"].toDouble(),
                                ctx->saved_data["dropout_p"].toDouble(), ctx->saved_data["seed"].toInt(), needs);
    if (need_dx) {
      const std::vector<int64_t> x_shape = ctx->saved_data["x_shape"].toIntVector();
      if (x_shape.size() != 2) dx = at::_unsafe_view(dx, x_shape);
    }
    return {need_dx ? dx : empty, empty, empty, need_db ? d_bias : empty, need_dA ? d_lora_A : empty,
            need_dB ? d_lora_B : empty, empty, empty, empty};
  }
};

at::Tensor int8_lora_linear_autograd(const at::Tensor& x, const at::Tensor& qweight, const at::Tensor& weight_scale,
                                     const std::optional<at::Tensor>& bias, const at::Tensor& lora_A,
                                     const at::Tensor& lora_B, double scaling, double dropout_p, int64_t seed) {
  return Int8LoraLinearFunction::apply(x, qweight, weight_scale, bias, lora_A, lora_B, scaling, dropout_p, seed);
}

// Below autograd (inference mode, or a dispatch that already handled autograd): the forward's y alone.
at::Tensor int8_lora_linear_forward_only(const at::Tensor& x, const at::Tensor& qweight,
                                         const at::Tensor& weight_scale, const std::optional<at::Tensor>& bias,
                                         const at::Tensor& lora_A, const at::Tensor& lora_B, double scaling,
                                         double dropout_p, int64_t seed) {
  const at::Tensor weight = dequantize_int8_op().call(qweight, weight_scale, x.scalar_type());
  const at::Tensor y = std::get<0>(
      lora_forward_op().call(rows_of(kOp, "x", x), weight, bias, lora_A, lora_B, scaling, dropout_p, seed));
  return shaped_like(y, x.sizes(), qweight.size(0));
}

}  // namespace
}  // namespace lowpeft

TORCH_LIBRARY_FRAGMENT(lowpeft, m) {
  m.def(
      "native_int8_lora_linear(Tensor x, Tensor qweight, Tensor weight_scale, Tensor? bias, Tensor lora_A, "
      "Tensor lora_B, float scaling, float dropout_p, int seed) -> Tensor");
}

TORCH_LIBRARY_IMPL(lowpeft, CompositeExplicitAutograd, m) {
  m.impl("native_int8_lora_linear", &lowpeft::int8_lora_linear_forward_only);
}

TORCH_LIBRARY_IMPL(lowpeft, Autograd, m) {
  m.impl("native_int8_lora_linear", &lowpeft::int8_lora_linear_autograd);
}
