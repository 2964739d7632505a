// CPU kernels of lowpeft::native_bottleneck_adapter_fwd / _bwd (DESIGN §2): out = h + s · (act(h W_downᵀ +
// b_down) W_upᵀ + b_up) and its gradients, everything through ATen (MKL GEMMs, vectorized activations).
//
// Trade-off: on the CPU the six skinny GEMMs (M ≪ D) dominate and ATen runs them near the machine's peak,
// so the fused path keeps them and removes everything else eager PyTorch spends on [T, D] tensors: the
// residual and the scale fold into one addmm (beta = 1, alpha = s), the up bias rides along as an extra
// column of ones in the activations (so b_up costs neither a broadcast pass forward nor a Σ g pass backward:
// it falls out of the dW_up GEMM), and dh = g + dz W_down is one addmm. Only z ([T, M]) is saved.
// The price of the fused residual: MKL applies alpha = s to the packed [W_up | b_up], so where s · W_up or a product
// a · (s · W_up) overflows, the forward can hold NaN or ±Inf where the torch backend's h + s · (a W_upᵀ + b_up)
// holds ±Inf or a finite value; scaling after the product needs its own pass over [T, D] (GEMM plus add measured
// 1.1-1.6x this addmm's time at T · D ≤ 4096 · 1024 and 0.93-0.95x at 8192 · 4096, M ≤ 64, on 2 cores). The
// backward scales last, as the torch backend does.
#include <optional>
#include <string_view>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "../lowpeft_common.h"

namespace lowpeft::cpu {
namespace {

constexpr std::string_view kForward = "native_bottleneck_adapter_fwd";
constexpr std::string_view kBackward = "native_bottleneck_adapter_bwd";

at::Tensor activation_of(const at::Tensor& z, Activation activation) {
  switch (activation) {
    case Activation::Gelu:
      return at::gelu(z);
    case Activation::GeluTanh:
      return at::gelu(z, "tanh");
    case Activation::Relu:
      return at::relu(z);
    case Activation::Silu:
    default:
      return at::silu(z);
  }
}

// grad ⊙ act'(z) (relu' taken as 0 at 0 and at NaN, as reference.activation_derivative).
at::Tensor activation_grad(const at::Tensor& grad, const at::Tensor& z, Activation activation) {
  switch (activation) {
    case Activation::Gelu:
      return at::gelu_backward(grad, z);
    case Activation::GeluTanh:
      return at::gelu_backward(grad, z, "tanh");
    case Activation::Relu:
      return at::mul(grad, z.gt(0));
    case Activation::Silu:
    default:
      return at::silu_backward(grad, z);
  }
}

// The up GEMM's left operand in the input dtype: act(z) [T, M] or, with a trailing column of ones, [T, M + 1].
at::Tensor activation_operand(const at::Tensor& z, Activation activation, bool ones_column, at::ScalarType dtype) {
  const at::Tensor act = activation_of(z, activation);
  if (!ones_column) return act.to(dtype);
  const int64_t bottleneck = z.size(1);
  at::Tensor operand = at::empty({z.size(0), bottleneck + 1}, z.options().dtype(dtype));
  operand.narrow(1, 0, bottleneck).copy_(act);
  operand.select(1, bottleneck).fill_(1);
  return operand;
}

std::tuple<at::Tensor, at::Tensor> bottleneck_adapter_fwd(const at::Tensor& h, const at::Tensor& down_weight,
                                                          const std::optional<at::Tensor>& down_bias,
                                                          const at::Tensor& up_weight,
                                                          const std::optional<at::Tensor>& up_bias,
                                                          c10::string_view activation_name, double scale) {
  const Activation activation =
      check_adapter_forward(kForward, h, down_weight, down_bias, up_weight, up_bias,
                            std::string_view(activation_name.data(), activation_name.size()), scale);
  const auto dtype = h.scalar_type();
  const at::Tensor z_in = down_bias.has_value() ? at::addmm(*down_bias, h, down_weight.t()) : at::mm(h, down_weight.t());
  const at::Tensor z = z_in.to(accumulate_dtype(dtype)).contiguous();
  const at::Tensor act = activation_operand(z, activation, up_bias.has_value(), dtype);
  const at::Tensor up = up_bias.has_value() ? at::cat({up_weight, up_bias->unsqueeze(1)}, 1) : up_weight;
  return {at::addmm(h, act, up.t(), 1.0, scale), z};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bottleneck_adapter_bwd(
    const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& down_weight,
    const std::optional<at::Tensor>& down_bias, const at::Tensor& up_weight, const at::Tensor& z,
    c10::string_view activation_name, double scale, const c10::List<bool>& needs) {
  const std::string_view name(activation_name.data(), activation_name.size());
  const AdapterNeeds need =
      check_adapter_backward(kBackward, grad_out, h, down_weight, down_bias, up_weight, z, name, scale, needs);
  const Activation activation = parse_activation(kBackward, name);
  const auto dtype = h.scalar_type();
  const int64_t bottleneck = down_weight.size(0);
  const at::Tensor z_acc = z.contiguous();
  at::Tensor dh, d_down_weight, d_down_bias, d_up_weight, d_up_bias;
  if (need.dh || need.d_down_weight || need.d_down_bias) {
    // dz = ((g W_up) ⊙ act'(z)) · s, the scale last as in the torch backend: scaling g W_up first overflows to Inf
    // where act'(z) = 0 (relu off, gelu far left) and turns the reference's 0 into Inf · 0 = NaN.
    const at::Tensor d_act = at::mm(grad_out, up_weight).to(z_acc.scalar_type());
    const at::Tensor dz = activation_grad(d_act, z_acc, activation).mul_(scale);
    const at::Tensor dz_in = dz.to(dtype);
    if (need.dh) dh = at::addmm(grad_out, dz_in, down_weight);
    if (need.d_down_weight) d_down_weight = at::mm(dz_in.t(), h);
    if (need.d_down_bias) d_down_bias = dz.sum(0).to(dtype);
  }
  if (need.d_up_weight) {
    const at::Tensor act = activation_operand(z_acc, activation, need.d_up_bias, dtype);
    // [dW_up | db_up]ᵀ = s · [a | 1]ᵀ g: MKL runs this orientation faster than gᵀ [a | 1].
    const at::Tensor grads_t = at::mm(act.t(), grad_out).mul_(scale);
    d_up_weight = grads_t.narrow(0, 0, bottleneck).t().contiguous();
    if (need.d_up_bias) d_up_bias = grads_t.select(0, bottleneck).clone();
  } else if (need.d_up_bias) {
    d_up_bias = grad_out.sum(0).mul_(scale);
  }
  return {or_not_needed(dh, h), or_not_needed(d_down_weight, h), or_not_needed(d_down_bias, h),
          or_not_needed(d_up_weight, h), or_not_needed(d_up_bias, h)};
}

}  // namespace
}  // namespace lowpeft::cpu

TORCH_LIBRARY_IMPL(lowpeft, CPU, m) {
  m.impl("native_bottleneck_adapter_fwd", &lowpeft::cpu::bottleneck_adapter_fwd);
  m.impl("native_bottleneck_adapter_bwd", &lowpeft::cpu::bottleneck_adapter_bwd);
}
