// CUDA kernels of lowpeft::native_bottleneck_adapter_fwd / _bwd (DESIGN §2) for sm_90: out = h + s · (act(h
// W_downᵀ + b_down) W_upᵀ + b_up) and its gradients.
//
// Trade-off: the adapter's six GEMMs (2·T·D·M flops each, 26 GFLOP at T=8192, D=4096, M=64) need tensor
// cores to stay memory-bound, so they run in cuBLAS, each reading its [T, D] operand once, with everything
// else folded in: the residual and the scale by beta = 1 / alpha = s, b_up as a column of ones in the
// activations (no broadcast pass forward, no Σ g pass backward: it falls out of the dW_up GEMM). out = h +
// s · act W_upᵀ and dh = g + dz W_down are each one cuBLASLt call that reads the residual and writes the
// result (gemm_residual.cu: ATen's out-of-place addmm would copy the residual first). Our own kernels do the
// [T, M] work between the GEMMs in one pass each: forward, z (saved, float32) and the activations with their
// ones column; backward, dz = s · da ⊙ act'(z) in both precisions and the activations again (recomputed from
// z, never stored).
#include <optional>
#include <string_view>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../lowpeft_common.h"
#include "cuda_common.cuh"
#include "gemm_residual.h"

namespace lowpeft::cuda {
namespace {

constexpr std::string_view kForward = "native_bottleneck_adapter_fwd";
constexpr std::string_view kBackward = "native_bottleneck_adapter_bwd";
constexpr int kThreads = 256;

// Activation operand [T, width]: act(z) in columns < M, then 1 at column M when ones_column, then zeros.
template <typename scalar_t, typename acc_t>
__device__ __forceinline__ scalar_t activation_operand(const acc_t* z, int64_t t, int64_t m, int64_t bottleneck,
                                                       bool ones_column, Activation activation) {
  if (m < bottleneck) return static_cast<scalar_t>(activation_forward(z[t * bottleneck + m], activation));
  return static_cast<scalar_t>(ones_column && m == bottleneck ? 1 : 0);
}

// z = z_in widened (saved for backward); act_out = the activation operand of the up GEMM.
template <typename scalar_t, typename acc_t>
__global__ void forward_epilogue_kernel(const scalar_t* __restrict__ z_in, int64_t rows, int64_t bottleneck,
                                        int64_t width, bool ones_column, Activation activation,
                                        acc_t* __restrict__ z, scalar_t* __restrict__ act_out) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  if (index >= rows * width) return;
  const int64_t t = index / width, m = index % width;
  acc_t value = acc_t(0);
  if (m < bottleneck) {
    value = static_cast<acc_t>(z_in[t * bottleneck + m]);
    z[t * bottleneck + m] = value;
    act_out[index] = static_cast<scalar_t>(activation_forward(value, activation));
  } else {
    act_out[index] = static_cast<scalar_t>(ones_column && m == bottleneck ? 1 : 0);
  }
}

// dz = s · da ⊙ act'(z) (float32 and input dtype); act_out (if given) = the activation operand again.
template <typename scalar_t, typename acc_t>
__global__ void backward_prologue_kernel(const scalar_t* __restrict__ d_act, const acc_t* __restrict__ z,
                                         int64_t rows, int64_t bottleneck, int64_t width, bool ones_column,
                                         Activation activation, acc_t scale, acc_t* __restrict__ dz,
                                         scalar_t* __restrict__ dz_low, scalar_t* __restrict__ act_out) {
  const int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
  const int64_t span = dz != nullptr ? rows * bottleneck : 0;
  if (index < span) {
    // The scale last, as the torch backend: s · (g W_up) first overflows where act'(z) = 0 (Inf · 0 = NaN).
    const acc_t value = static_cast<acc_t>(d_act[index]) * activation_derivative(z[index], activation) * scale;
    dz[index] = value;
    dz_low[index] = static_cast<scalar_t>(value);
  }
  if (act_out != nullptr && index < rows * width) {
    act_out[index] =
        activation_operand<scalar_t, acc_t>(z, index / width, index % width, bottleneck, ones_column, activation);
  }
}

int64_t padded_width(int64_t bottleneck, bool ones_column) {
  return ceil_div(bottleneck + (ones_column ? 1 : 0), 8) * 8;
}

std::tuple<at::Tensor, at::Tensor> bottleneck_adapter_fwd(const at::Tensor& h, const at::Tensor& down_weight,
                                                          const std::optional<at::Tensor>& down_bias,
                                                          const at::Tensor& up_weight,
                                                          const std::optional<at::Tensor>& up_bias,
                                                          c10::string_view activation_name, double scale) {
  const Activation activation =
      check_adapter_forward(kForward, h, down_weight, down_bias, up_weight, up_bias,
                            std::string_view(activation_name.data(), activation_name.size()), scale);
  const c10::cuda::CUDAGuard guard(h.device());
  const auto dtype = h.scalar_type();
  const int64_t rows = h.size(0), dim = h.size(1), bottleneck = down_weight.size(0);
  const bool ones_column = up_bias.has_value();
  const int64_t width = padded_width(bottleneck, ones_column);
  const at::Tensor z_in =
      down_bias.has_value() ? at::addmm(*down_bias, h, down_weight.t()) : at::mm(h, down_weight.t());
  at::Tensor z = at::empty({rows, bottleneck}, h.options().dtype(accumulate_dtype(dtype)));
  at::Tensor act = at::empty({rows, width}, h.options());
  if (rows > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "native_bottleneck_adapter_fwd_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      forward_epilogue_kernel<scalar_t, acc_t>
          <<<ceil_div(rows * width, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              z_in.const_data_ptr<scalar_t>(), rows, bottleneck, width, ones_column, activation,
              z.mutable_data_ptr<acc_t>(), act.mutable_data_ptr<scalar_t>());
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  // [W_up | b_up | 0 ...] as one cat kernel (after a fill of the zero padding, where the width needs one); a
  // zeros fill of the whole operand and two strided copies took ~10 µs at D = 4096.
  std::vector<at::Tensor> columns{up_weight};
  if (ones_column) columns.push_back(up_bias->unsqueeze(1));
  if (width > bottleneck + (ones_column ? 1 : 0)) {
    columns.push_back(at::zeros({dim, width - bottleneck - (ones_column ? 1 : 0)}, h.options()));
  }
  const at::Tensor up = at::cat(columns, 1);
  return {gemm_residual(h, act, up.t(), scale), z};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bottleneck_adapter_bwd(
    const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& down_weight,
    const std::optional<at::Tensor>& down_bias, const at::Tensor& up_weight, const at::Tensor& z,
    c10::string_view activation_name, double scale, const c10::List<bool>& needs) {
  const std::string_view name(activation_name.data(), activation_name.size());
  const AdapterNeeds need =
      check_adapter_backward(kBackward, grad_out, h, down_weight, down_bias, up_weight, z, name, scale, needs);
  const Activation activation = parse_activation(kBackward, name);
  const c10::cuda::CUDAGuard guard(h.device());
  const auto dtype = h.scalar_type();
  const int64_t rows = h.size(0), bottleneck = down_weight.size(0);
  const bool need_dz = need.dh || need.d_down_weight || need.d_down_bias;
  const bool ones_column = need.d_up_bias;
  const int64_t width = padded_width(bottleneck, ones_column);
  const at::Tensor z_rows = z.contiguous();
  at::Tensor dz, dz_low, act;
  const at::Tensor d_act = need_dz ? at::mm(grad_out, up_weight) : at::Tensor();
  if (need_dz) {
    dz = at::empty({rows, bottleneck}, z.options());
    dz_low = at::empty({rows, bottleneck}, h.options());
  }
  if (need.d_up_weight) act = at::empty({rows, width}, h.options());
  const int64_t span = std::max(need_dz ? rows * bottleneck : 0, need.d_up_weight ? rows * width : 0);
  if (span > 0) {
    AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "native_bottleneck_adapter_bwd_cuda", [&] {
      using acc_t = at::opmath_type<scalar_t>;
      backward_prologue_kernel<scalar_t, acc_t>
          <<<ceil_div(span, kThreads), kThreads, 0, c10::cuda::getCurrentCUDAStream()>>>(
              need_dz ? d_act.const_data_ptr<scalar_t>() : nullptr, z_rows.const_data_ptr<acc_t>(), rows,
              bottleneck, width, ones_column, activation, static_cast<acc_t>(scale),
              need_dz ? dz.mutable_data_ptr<acc_t>() : nullptr, need_dz ? dz_low.mutable_data_ptr<scalar_t>() : nullptr,
              need.d_up_weight ? act.mutable_data_ptr<scalar_t>() : nullptr);
      C10_CUDA_KERNEL_LAUNCH_CHECK();
    });
  }
  at::Tensor dh, d_down_weight, d_down_bias, d_up_weight, d_up_bias;
  if (need.dh) dh = gemm_residual(grad_out, dz_low, down_weight, 1.0);
  if (need.d_down_weight) d_down_weight = at::mm(dz_low.t(), h);
  // Σₜ dz as a matrix-vector product: dz.sum(0) ran ATen's reduce kernel over [T, M] with only M outputs, 17.7 µs
  // at 8192 x 4096, M = 256 (gemv reads dz once; dz is float32, float64 for float64 inputs, and a gemv has no
  // tensor-core path, so no tf32 either).
  if (need.d_down_bias) d_down_bias = at::mv(dz.t(), at::ones({rows}, dz.options())).to(dtype);
  if (need.d_up_weight) {
    // The scale rides in alpha; addmm with beta = 0 never reads its input, so an uninitialised 0-dim tensor
    // (broadcastable to any result) stands in for it.
    const at::Tensor grads = at::addmm(at::empty({}, act.options()), grad_out.t(), act, 0.0, scale);
    d_up_weight = grads.narrow(1, 0, bottleneck).contiguous();
    if (need.d_up_bias) d_up_bias = grads.select(1, bottleneck).contiguous();
  } else if (need.d_up_bias) {
    d_up_bias = grad_out.sum(0).mul_(scale);
  }
  return {or_not_needed(dh, h), or_not_needed(d_down_weight, h), or_not_needed(d_down_bias, h),
          or_not_needed(d_up_weight, h), or_not_needed(d_up_bias, h)};
}

}  // namespace
}  // namespace lowpeft::cuda

TORCH_LIBRARY_IMPL(lowpeft, CUDA, m) {
  m.impl("native_bottleneck_adapter_fwd", &lowpeft::cuda::bottleneck_adapter_fwd);
  m.impl("native_bottleneck_adapter_bwd", &lowpeft::cuda::bottleneck_adapter_bwd);
}
