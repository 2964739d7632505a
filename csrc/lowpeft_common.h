// Shared by every lowpeft C++/CUDA source: the Philox-4x32-10 dropout draw (host and device), the adapter's
// activation functions and derivatives (used by the CUDA kernels), and the argument checks every backend runs.
//
// Trade-off: the dropout mask is defined once here as a __host__ __device__ inline function, so the CPU and
// CUDA kernels cannot drift apart; both follow lowpeft/reference.py bit for bit. The CPU path takes its
// activations from ATen's vectorized ops instead of these scalar ones (same closed forms as the reference).
#pragma once

#include <cmath>
#include <cstdint>
#include <optional>
#include <string_view>

#include <ATen/core/Tensor.h>
#include <ATen/core/List.h>

#if defined(__CUDACC__)
#define LOWPEFT_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define LOWPEFT_HOST_DEVICE inline
#endif

namespace lowpeft {

// ---------------------------------------------------------------------------------------------------
// Dropout: element (t, k) is kept iff word k % 4 of Philox4x32-10(key = seed; counters k / 4, t, 0, 0) >= threshold.
// ---------------------------------------------------------------------------------------------------
struct PhiloxKey {
  uint32_t low;
  uint32_t high;
};

inline PhiloxKey philox_key(int64_t seed) {
  const uint64_t bits = static_cast<uint64_t>(seed);
  return {static_cast<uint32_t>(bits & 0xffffffffu), static_cast<uint32_t>(bits >> 32)};
}

struct PhiloxWords {
  uint32_t w0, w1, w2, w3;
};

// The four output words of Philox-4x32-10 for counters (c0, c1, 0, 0); bit-exact with reference.philox_words
// and Triton's tl.philox(seed, c0, c1, 0, 0).
LOWPEFT_HOST_DEVICE PhiloxWords philox_words(uint32_t c0, uint32_t c1, uint32_t key0, uint32_t key1) {
  uint32_t c2 = 0, c3 = 0;
#if defined(__CUDACC__)
#pragma unroll
#else
#pragma GCC unroll 10
#endif
  for (int round = 0; round < 10; ++round) {
    const uint64_t product_b = static_cast<uint64_t>(0xCD9E8D57u) * c2;
    const uint64_t product_a = static_cast<uint64_t>(0xD2511F53u) * c0;
    const uint32_t next0 = static_cast<uint32_t>(product_b >> 32) ^ c1 ^ key0;
    const uint32_t next2 = static_cast<uint32_t>(product_a >> 32) ^ c3 ^ key1;
    c1 = static_cast<uint32_t>(product_b);
    c3 = static_cast<uint32_t>(product_a);
    c0 = next0;
    c2 = next2;
    key0 += 0x9E3779B9u;
    key1 += 0xBB67AE85u;
  }
  return {c0, c1, c2, c3};
}

// Word `index` (0..3) of a Philox result, without dynamic indexing (which would put the words in local memory
// on a GPU).
LOWPEFT_HOST_DEVICE uint32_t philox_word(const PhiloxWords& words, uint32_t index) {
  return index == 0 ? words.w0 : index == 1 ? words.w1 : index == 2 ? words.w2 : words.w3;
}

// The draw of dropout element (row, col): reference.dropout_draws.
LOWPEFT_HOST_DEVICE uint32_t dropout_draw(uint32_t col, uint32_t row, uint32_t key0, uint32_t key1) {
  return philox_word(philox_words(col >> 2, row, key0, key1), col & 3u);
}

// reference.dropout_threshold: keep iff draw >= min(int(p * 2^32), 2^32 - 1).
inline uint32_t dropout_threshold(double p) {
  const double scaled = std::floor(p * 4294967296.0);
  return scaled >= 4294967295.0 ? 0xffffffffu : static_cast<uint32_t>(scaled);
}

// ---------------------------------------------------------------------------------------------------
// Activations of the bottleneck adapter (reference.activation_forward / activation_derivative).
// ---------------------------------------------------------------------------------------------------
enum class Activation : int { Gelu = 0, GeluTanh = 1, Relu = 2, Silu = 3 };

template <typename T>
LOWPEFT_HOST_DEVICE T activation_forward(T z, Activation activation) {
  switch (activation) {
    case Activation::Gelu:
      return T(0.5) * z * (T(1) + erf(z * T(0.70710678118654752440)));
    case Activation::GeluTanh: {
      const T inner = T(0.79788456080286535588) * (z + T(0.044715) * z * z * z);
      return T(0.5) * z * (T(1) + tanh(inner));
    }
    case Activation::Relu:
      return z < T(0) ? T(0) : z;  // NaN stays NaN, as torch.relu
    case Activation::Silu:
    default:
      return z / (T(1) + exp(-z));
  }
}

template <typename T>
LOWPEFT_HOST_DEVICE T activation_derivative(T z, Activation activation) {
  switch (activation) {
    case Activation::Gelu: {
      const T cdf = T(0.5) * (T(1) + erf(z * T(0.70710678118654752440)));
      const T pdf = exp(T(-0.5) * z * z) * T(0.39894228040143267794);
      return cdf + z * pdf;
    }
    case Activation::GeluTanh: {
      const T c = T(0.79788456080286535588);
      const T t = tanh(c * (z + T(0.044715) * z * z * z));
      return T(0.5) * (T(1) + t) + T(0.5) * z * (T(1) - t * t) * c * (T(1) + T(3 * 0.044715) * z * z);
    }
    case Activation::Relu:
      return z > T(0) ? T(1) : T(0);
    case Activation::Silu:
    default: {
      const T sig = T(1) / (T(1) + exp(-z));
      return sig * (T(1) + z * (T(1) - sig));
    }
  }
}

// ---------------------------------------------------------------------------------------------------
// Argument checks (defined in registration.cpp): each raises a c10::Error (ValueError / TypeError in
// Python) naming the op, the argument, what was expected and what came.
// ---------------------------------------------------------------------------------------------------
struct LoraNeeds {
  bool dx, d_lora_A, d_lora_B, d_weight, d_bias;
};

Activation parse_activation(std::string_view op, std::string_view activation);

void check_lora_forward(std::string_view op, const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, const at::Tensor& lora_A, const at::Tensor& lora_B,
                        double scaling, double dropout_p);

LoraNeeds check_lora_backward(std::string_view op, const at::Tensor& grad_out, const at::Tensor& x,
                              const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B,
                              const at::Tensor& shrink, double scaling, double dropout_p, const c10::List<bool>& needs);

struct AdapterNeeds {
  bool dh, d_down_weight, d_down_bias, d_up_weight, d_up_bias;
};

Activation check_adapter_forward(std::string_view op, const at::Tensor& h, const at::Tensor& down_weight,
                                 const std::optional<at::Tensor>& down_bias, const at::Tensor& up_weight,
                                 const std::optional<at::Tensor>& up_bias, std::string_view activation, double scale);

AdapterNeeds check_adapter_backward(std::string_view op, const at::Tensor& grad_out, const at::Tensor& h,
                                    const at::Tensor& down_weight, const std::optional<at::Tensor>& down_bias,
                                    const at::Tensor& up_weight, const at::Tensor& z, std::string_view activation,
                                    double scale, const c10::List<bool>& needs);

// The int8 base's dequantize op: qweight int8 [out, in], scale a floating [out] tensor on its device, dtype a
// floating output dtype (ValueError / TypeError naming the argument otherwise).
void check_dequantize_int8(std::string_view op, const at::Tensor& qweight, const at::Tensor& scale,
                           at::ScalarType dtype);

// The dtype of the saved intermediates (S under dropout, the adapter's pre-activation z): float32 for 16-bit inputs.
at::ScalarType accumulate_dtype(at::ScalarType input_dtype);

// The dtype of the LoRA forward's saved S = dropout(x) Aᵀ: the accumulate dtype under dropout (the kernels reduce
// S in float32 while drawing the mask), the inputs' own dtype without (S is then the skinny GEMM's own output,
// saved as it comes: converting it to float32 and back cost two kernels per layer call, a visible share of a
// host-bound model step).
at::ScalarType shrink_dtype(at::ScalarType input_dtype, double dropout_p);

// An empty tensor standing for a gradient that was not asked for.
at::Tensor not_needed(const at::Tensor& like);

// `gradient` if it was computed, else not_needed(like): the backward ops start from undefined tensors and allocate
// the empty stand-ins only for what stays unasked (an allocation per gradient and call saved on the host-bound path).
inline at::Tensor or_not_needed(const at::Tensor& gradient, const at::Tensor& like) {
  return gradient.defined() ? gradient : not_needed(like);
}

}  // namespace lowpeft
