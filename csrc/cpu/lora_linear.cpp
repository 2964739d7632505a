// CPU kernels of lowpeft::native_lora_linear_fwd / _bwd (DESIGN §2): OpenMP (at::parallel_for) + vector loops
// for the memory-bound LoRA pieces, ATen (MKL / oneDNN) for the frozen GEMMs.
//
// Trade-off: the frozen GEMMs stay in ATen, which no hand-written CPU kernel beats, and the LoRA term is
// folded into them with addmm_(beta = 1) so no [T, N] temporary exists; what eager LoRA spends beyond the
// frozen layer (a dropout mask tensor, skinny GEMMs, [T, N] / [T, K] temporaries and adds) becomes two
// row-streaming passes: the shrink S = dropout(x) Aᵀ in forward, and in backward one pass over g for dS and dB
// and one over x for the dx term and dA, the dropout mask regenerated per row from Philox in both.
// Reductions over T use a fixed row partition (independent of the thread count) and an ordered sum, so
// results are deterministic. 16-bit inputs are widened row by row to float32; nothing is accumulated in 16 bits.
#include <algorithm>
#include <optional>
#include <vector>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include "../lowpeft_common.h"
#include "cpu_common.h"

namespace lowpeft::cpu {
namespace {

// Philox draws of one row (counters c0 = col0 + i, c1 = row); cloned per ISA so the lane loop vectorizes.
__attribute__((target_clones("avx512f", "avx2", "default"))) void philox_row(uint32_t key0, uint32_t key1,
                                                                               uint32_t row, int64_t col0,
                                                                               int64_t count, uint32_t* draws) {
  for (int64_t i = 0; i < count; ++i) {
    draws[i] = philox_first_word(static_cast<uint32_t>(col0 + i), row, key0, key1);
  }
}

// The dropout multiplier of row t: 1/(1-p) where kept, 0 where dropped (reference.dropout_keep_mask).
template <typename acc_t>
struct RowDropout {
  PhiloxKey key;
  uint32_t threshold;
  acc_t keep_scale;
  std::vector<uint32_t> draws;

  RowDropout(int64_t seed, double p, int64_t cols)
      : key(philox_key(seed)), threshold(dropout_threshold(p)), keep_scale(static_cast<acc_t>(1.0 / (1.0 - p))),
        draws(cols) {}

  void multipliers(int64_t row, acc_t* out) {
    const int64_t cols = static_cast<int64_t>(draws.size());
    philox_row(key.low, key.high, static_cast<uint32_t>(row), 0, cols, draws.data());
    for (int64_t k = 0; k < cols; ++k) {
      out[k] = draws[k] >= threshold ? keep_scale : acc_t(0);
    }
  }
};

// S[t, j] = Σ_k dropout(x)[t, k] A[j, k].
template <typename scalar_t, typename acc_t>
void shrink_rows(const at::Tensor& x, const at::Tensor& lora_A_acc, double dropout_p, int64_t seed,
                 at::Tensor& shrink) {
  const int64_t rows = x.size(0), cols = x.size(1), rank = lora_A_acc.size(0);
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  const int64_t x_row_stride = x.stride(0), x_col_stride = x.stride(1);
  const acc_t* a_data = lora_A_acc.const_data_ptr<acc_t>();
  acc_t* s_data = shrink.mutable_data_ptr<acc_t>();
  at::parallel_for(0, rows, row_grain(cols * rank), [&](int64_t begin, int64_t end) {
    std::vector<acc_t> row(cols), multiplier(dropout_p > 0.0 ? cols : 0);
    std::optional<RowDropout<acc_t>> dropout;
    if (dropout_p > 0.0) dropout.emplace(seed, dropout_p, cols);
    for (int64_t t = begin; t < end; ++t) {
      load_row(x_data + t * x_row_stride, x_col_stride, cols, row.data());
      if (dropout) {
        dropout->multipliers(t, multiplier.data());
        multiply(multiplier.data(), row.data(), cols);
      }
      for (int64_t j = 0; j < rank; ++j) {
        s_data[t * rank + j] = dot(row.data(), a_data + j * cols, cols);
      }
    }
  });
}

// One pass over g: dS = s · g B (if wanted) and dBᵀ = s · Sᵀ g (if wanted), returned as [r, N].
template <typename scalar_t, typename acc_t>
void grad_out_pass(const at::Tensor& grad_out, const at::Tensor& lora_B_t_acc, const at::Tensor& shrink,
                   double scaling, at::Tensor* d_shrink, at::Tensor* d_lora_B_t) {
  const int64_t rows = grad_out.size(0), cols = grad_out.size(1), rank = lora_B_t_acc.size(0);
  const scalar_t* g_data = grad_out.const_data_ptr<scalar_t>();
  const int64_t g_row_stride = grad_out.stride(0), g_col_stride = grad_out.stride(1);
  const acc_t* bt_data = lora_B_t_acc.const_data_ptr<acc_t>();
  const acc_t* s_data = shrink.const_data_ptr<acc_t>();
  const acc_t scale = static_cast<acc_t>(scaling);
  acc_t* ds_data = d_shrink ? d_shrink->mutable_data_ptr<acc_t>() : nullptr;
  const RowChunks chunks(rows);
  at::Tensor partials;
  acc_t* partial_data = nullptr;
  if (d_lora_B_t) {
    partials = at::zeros({chunks.count, rank, cols}, shrink.options());
    partial_data = partials.mutable_data_ptr<acc_t>();
  }
  at::parallel_for(0, chunks.count, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    std::vector<acc_t> row(cols);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      acc_t* partial = partial_data ? partial_data + chunk * rank * cols : nullptr;
      for (int64_t t = chunks.begin(chunk); t < chunks.end(chunk); ++t) {
        load_row(g_data + t * g_row_stride, g_col_stride, cols, row.data());
        for (int64_t j = 0; j < rank; ++j) {
          if (ds_data) ds_data[t * rank + j] = scale * dot(row.data(), bt_data + j * cols, cols);
          if (partial) axpy(s_data[t * rank + j], row.data(), partial + j * cols, cols);
        }
      }
    }
  });
  if (d_lora_B_t) {
    *d_lora_B_t = ordered_sum(partials, scale);
  }
}

// One pass over x: dx += (dS A) ⊙ m / (1-p) (if dx is given) and dA = dSᵀ (x ⊙ m / (1-p)) (if wanted).
template <typename scalar_t, typename acc_t>
void input_pass(const at::Tensor& x, const at::Tensor& lora_A_acc, const at::Tensor& d_shrink, double dropout_p,
                int64_t seed, at::Tensor* dx, at::Tensor* d_lora_A) {
  const int64_t rows = x.size(0), cols = x.size(1), rank = lora_A_acc.size(0);
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  const int64_t x_row_stride = x.stride(0), x_col_stride = x.stride(1);
  const acc_t* a_data = lora_A_acc.const_data_ptr<acc_t>();
  const acc_t* ds_data = d_shrink.const_data_ptr<acc_t>();
  scalar_t* dx_data = dx ? dx->mutable_data_ptr<scalar_t>() : nullptr;
  const RowChunks chunks(rows);
  at::Tensor partials;
  acc_t* partial_data = nullptr;
  if (d_lora_A) {
    partials = at::zeros({chunks.count, rank, cols}, d_shrink.options());
    partial_data = partials.mutable_data_ptr<acc_t>();
  }
  at::parallel_for(0, chunks.count, 1, [&](int64_t chunk_begin, int64_t chunk_end) {
    std::vector<acc_t> row(cols), lora(cols), multiplier(dropout_p > 0.0 ? cols : 0);
    std::optional<RowDropout<acc_t>> dropout;
    if (dropout_p > 0.0) dropout.emplace(seed, dropout_p, cols);
    for (int64_t chunk = chunk_begin; chunk < chunk_end; ++chunk) {
      acc_t* partial = partial_data ? partial_data + chunk * rank * cols : nullptr;
      for (int64_t t = chunks.begin(chunk); t < chunks.end(chunk); ++t) {
        const acc_t* ds_row = ds_data + t * rank;
        if (dropout) dropout->multipliers(t, multiplier.data());
        if (dx_data) {
          std::fill(lora.begin(), lora.end(), acc_t(0));
          for (int64_t j = 0; j < rank; ++j) axpy(ds_row[j], a_data + j * cols, lora.data(), cols);
          if (dropout) multiply(multiplier.data(), lora.data(), cols);
          add_into_row(lora.data(), dx_data + t * cols, cols);
        }
        if (partial) {
          load_row(x_data + t * x_row_stride, x_col_stride, cols, row.data());
          if (dropout) multiply(multiplier.data(), row.data(), cols);
          for (int64_t j = 0; j < rank; ++j) axpy(ds_row[j], row.data(), partial + j * cols, cols);
        }
      }
    }
  });
  if (d_lora_A) {
    *d_lora_A = ordered_sum(partials, acc_t(1));
  }
}

std::tuple<at::Tensor, at::Tensor> lora_linear_fwd(const at::Tensor& x, const at::Tensor& weight,
                                                   const std::optional<at::Tensor>& bias, const at::Tensor& lora_A,
                                                   const at::Tensor& lora_B, double scaling, double dropout_p,
                                                   int64_t seed) {
  check_lora_forward("native_lora_linear_fwd", x, weight, bias, lora_A, lora_B, scaling, dropout_p);
  const auto acc_dtype = accumulate_dtype(x.scalar_type());
  at::Tensor shrink = at::empty({x.size(0), lora_A.size(0)}, x.options().dtype(acc_dtype));
  const at::Tensor lora_A_acc = lora_A.to(acc_dtype).contiguous();
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, x.scalar_type(), "native_lora_linear_fwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    shrink_rows<scalar_t, acc_t>(x, lora_A_acc, dropout_p, seed, shrink);
  });
  at::Tensor y = bias.has_value() ? at::addmm(*bias, x, weight.t()) : at::mm(x, weight.t());
  y.addmm_(shrink.to(x.scalar_type()), lora_B.t(), 1.0, scaling);
  return {y, shrink};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_bwd(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_A,
    const at::Tensor& lora_B, const at::Tensor& shrink, double scaling, double dropout_p, int64_t seed,
    const c10::List<bool>& needs) {
  const LoraNeeds need = check_lora_backward("native_lora_linear_bwd", grad_out, x, weight, lora_A, lora_B, shrink,
                                             scaling, dropout_p, needs);
  const auto dtype = x.scalar_type();
  const auto acc_dtype = accumulate_dtype(dtype);
  const bool need_d_shrink = need.dx || need.d_lora_A;
  at::Tensor d_shrink, d_lora_B_t, d_lora_A_acc;
  at::Tensor dx = need.dx ? at::mm(grad_out, weight) : not_needed(x);
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, dtype, "native_lora_linear_bwd", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    if (need_d_shrink || need.d_lora_B) {
      if (need_d_shrink) d_shrink = at::empty({x.size(0), lora_A.size(0)}, x.options().dtype(acc_dtype));
      const at::Tensor lora_B_t_acc = lora_B.t().to(acc_dtype).contiguous();
      grad_out_pass<scalar_t, acc_t>(grad_out, lora_B_t_acc, shrink.contiguous(), scaling,
                                     need_d_shrink ? &d_shrink : nullptr, need.d_lora_B ? &d_lora_B_t : nullptr);
    }
    if (need_d_shrink) {
      const at::Tensor lora_A_acc = lora_A.to(acc_dtype).contiguous();
      input_pass<scalar_t, acc_t>(x, lora_A_acc, d_shrink, dropout_p, seed, need.dx ? &dx : nullptr,
                                  need.d_lora_A ? &d_lora_A_acc : nullptr);
    }
  });
  return {dx,
          need.d_lora_A ? d_lora_A_acc.to(dtype) : not_needed(x),
          need.d_lora_B ? d_lora_B_t.t().to(dtype).contiguous() : not_needed(x),
          need.d_weight ? at::mm(grad_out.t(), x) : not_needed(x),
          need.d_bias ? grad_out.sum(0) : not_needed(x)};
}

}  // namespace
}  // namespace lowpeft::cpu

TORCH_LIBRARY_IMPL(lowpeft, CPU, m) {
  m.impl("native_lora_linear_fwd", &lowpeft::cpu::lora_linear_fwd);
  m.impl("native_lora_linear_bwd", &lowpeft::cpu::lora_linear_bwd);
}
