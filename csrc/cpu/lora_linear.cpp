// CPU kernels of lowpeft::native_lora_linear_fwd / _bwd (DESIGN §2): every matrix product through ATen
// (MKL / oneDNN), the Philox dropout in one OpenMP pass of our own, the LoRA term folded into the frozen GEMM.
//
// Trade-off: on a CPU the skinny LoRA products (rank r ≪ K, N) run fastest as GEMMs too, so the fused path
// keeps them in ATen and removes what eager LoRA spends around them: no mask tensor and no bernoulli draw
// (the mask is regenerated from Philox, AVX-512 / AVX2 intrinsics, inside the pass that applies it), no [T, N]
// temporary or extra add for the LoRA term (a rank-(r+1) GEMM [S | 1] [s·B | b]ᵀ writes y, bias included,
// and the frozen GEMM accumulates onto it with beta = 1; in backward dS A is written to dx first and g W
// accumulated onto it), and with dropout the mask on dx and the dropped input for dA come out of one pass. Only
// with dropout does backward hold a [T, K] temporary (the dropped x) for the dA GEMM. The scaling multiplies B, not
// S (an [N, r] multiply instead of a [T, r] one), as MKL applies float32 alpha in the torch backend's
// addmm_(S, Bᵀ, alpha = s). The price, in 16-bit, where ATen applies alpha after its float32 accumulation: s·B is
// rounded to the input dtype, so |s·B| past that dtype's range gives Inf where y is finite (LoRA's B starts at zero
// and stays small); s·S first overflowed where |s·S| does, which 16-bit activations of a few thousand reach at
// s ≥ 16. Backward scales after each product, as the torch backend does.
// 16-bit inputs are widened to float32 for the small products (S, dS, dA, dB are accumulated in float32; the
// frozen GEMMs keep the input dtype, as nn.Linear does).
#include <optional>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../lowpeft_common.h"
#include "cpu_common.h"
#include "philox_rows.h"

namespace lowpeft::cpu {
namespace {

// The dropout multipliers of one row: 1/(1-p) where kept, 0 where dropped (reference.dropout_keep_mask).
template <typename acc_t>
class RowDropout {
 public:
  RowDropout(int64_t seed, double p, int64_t cols)
      : key_(philox_key(seed)), threshold_(dropout_threshold(p)), keep_scale_(static_cast<acc_t>(1.0 / (1.0 - p))),
        draws_(cols), multipliers_(cols) {}

  const acc_t* row(int64_t t) {
    const int64_t cols = static_cast<int64_t>(draws_.size());
    philox_row(key_.low, key_.high, static_cast<uint32_t>(t), cols, draws_.data());
    keep_multipliers(draws_.data(), threshold_, keep_scale_, multipliers_.data(), cols);
    return multipliers_.data();
  }

 private:
  PhiloxKey key_;
  uint32_t threshold_;
  acc_t keep_scale_;
  std::vector<uint32_t> draws_;
  std::vector<acc_t> multipliers_;
};

// One pass over the rows, m regenerated from Philox row by row: dropped[t] = x[t] ⊙ m[t] (if wanted) and
// dx[t] *= m[t] in place (if given: dx then holds dS A, the LoRA part of dx, before the frozen GEMM adds g W).
template <typename scalar_t, typename acc_t>
void dropout_pass(const at::Tensor& x, double dropout_p, int64_t seed, at::Tensor* dropped, at::Tensor* dx) {
  const int64_t rows = x.size(0), cols = x.size(1);
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  const int64_t row_stride = x.stride(0), col_stride = x.stride(1);
  acc_t* dropped_data = dropped ? dropped->mutable_data_ptr<acc_t>() : nullptr;
  scalar_t* dx_data = dx ? dx->mutable_data_ptr<scalar_t>() : nullptr;
  at::parallel_for(0, rows, row_grain(64 * cols), [&](int64_t begin, int64_t end) {
    RowDropout<acc_t> dropout(seed, dropout_p, cols);
    for (int64_t t = begin; t < end; ++t) {
      const acc_t* multipliers = dropout.row(t);
      if (dropped_data) {
        acc_t* out = dropped_data + t * cols;
        load_row(x_data + t * row_stride, col_stride, cols, out);
        multiply(multipliers, out, cols);
      }
      if (dx_data) multiply_row(multipliers, dx_data + t * cols, cols);
    }
  });
}

// x ⊙ m / (1-p) in the accumulation dtype ([T, K]); x itself (no copy) when p = 0 and x is float32/64.
at::Tensor dropped_input(const at::Tensor& x, double dropout_p, int64_t seed) {
  const auto acc_dtype = accumulate_dtype(x.scalar_type());
  if (dropout_p == 0.0) return x.to(acc_dtype);
  at::Tensor dropped = at::empty(x.sizes(), x.options().dtype(acc_dtype));
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "lowpeft_dropped_input", [&] {
    dropout_pass<scalar_t, at::opmath_type<scalar_t>>(x, dropout_p, seed, &dropped, nullptr);
  });
  return dropped;
}

std::tuple<at::Tensor, at::Tensor> lora_linear_fwd(const at::Tensor& x, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias, const at::Tensor& lora_A,
                                                   const at::Tensor& lora_B, double scaling, double dropout_p,
                                                   int64_t seed) {
  check_lora_forward("native_lora_linear_fwd", x, weight, bias, lora_A, lora_B, scaling, dropout_p);
  const auto acc_dtype = accumulate_dtype(x.scalar_type());
  at::Tensor shrink = at::mm(dropped_input(x, dropout_p, seed), lora_A.to(acc_dtype).t());
  // y = [S | 1] [s·B | b]ᵀ writes y once (LoRA term and bias), then the frozen GEMM accumulates onto it.
  at::Tensor low = shrink.to(x.scalar_type());
  at::Tensor up = lora_B.mul(scaling);
  if (bias.has_value()) {
    low = at::cat({low, at::ones({x.size(0), 1}, x.options())}, 1);
    up = at::cat({up, bias->unsqueeze(1)}, 1);
  }
  at::Tensor y = at::mm(low, up.t());
  y.addmm_(x, weight.t());
  return {y, shrink.to(shrink_dtype(x.scalar_type(), dropout_p))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_bwd(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_A,
    const at::Tensor& lora_B, const at::Tensor& shrink, double scaling, double dropout_p, int64_t seed,
    const c10::List<bool>& needs) {
  const LoraNeeds need = check_lora_backward("native_lora_linear_bwd", grad_out, x, weight, lora_A, lora_B, shrink,
                                             scaling, dropout_p, needs);
  const auto dtype = x.scalar_type();
  const auto acc_dtype = accumulate_dtype(dtype);
  const at::Tensor grad_acc = grad_out.to(acc_dtype);
  at::Tensor dx, d_lora_A, d_lora_B;
  // dB = s · gᵀ S, computed as (Sᵀ g)ᵀ: MKL runs the [r, T] x [T, N] orientation faster.
  if (need.d_lora_B) d_lora_B = at::mm(shrink.to(acc_dtype).t(), grad_acc).mul_(scaling).t().contiguous().to(dtype);
  if (need.dx || need.d_lora_A) {
    const at::Tensor d_shrink = at::mm(grad_acc, lora_B.to(acc_dtype)).mul_(scaling);
    // dx = (dS A) ⊙ m/(1-p) written first, then the frozen GEMM accumulates g W onto it (beta = 1).
    if (need.dx) dx = at::mm(d_shrink.to(dtype), lora_A);
    if (dropout_p == 0.0) {
      if (need.d_lora_A) d_lora_A = at::mm(d_shrink.t(), x.to(acc_dtype)).to(dtype);
    } else {
      at::Tensor dropped;
      if (need.d_lora_A) dropped = at::empty(x.sizes(), x.options().dtype(acc_dtype));
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "native_lora_linear_bwd", [&] {
        dropout_pass<scalar_t, at::opmath_type<scalar_t>>(x, dropout_p, seed, need.d_lora_A ? &dropped : nullptr,
                                                          need.dx ? &dx : nullptr);
      });
      if (need.d_lora_A) d_lora_A = at::mm(d_shrink.t(), dropped).to(dtype);
    }
    if (need.dx) dx.addmm_(grad_out, weight);
  }
  return {or_not_needed(dx, x), or_not_needed(d_lora_A, x), or_not_needed(d_lora_B, x),
          need.d_weight ? at::mm(grad_out.t(), x) : not_needed(x), need.d_bias ? grad_out.sum(0) : not_needed(x)};
}

}  // namespace
}  // namespace lowpeft::cpu

TORCH_LIBRARY_IMPL(lowpeft, CPU, m) {
  m.impl("native_lora_linear_fwd", &lowpeft::cpu::lora_linear_fwd);
  m.impl("native_lora_linear_bwd", &lowpeft::cpu::lora_linear_bwd);
}
