// lowpeft._C: the schemas of the lowpeft::native_* ops, their argument checks, their Meta (fake) kernels and
// the Python module object (which only says whether the CUDA sources were built: WITH_CUDA).
//
// Trade-off: the module is a bare CPython module rather than a pybind11 one, since every entry point is a
// torch.library op reached through torch.ops.lowpeft; that keeps this translation unit cheap to compile.
// The schemas use TORCH_LIBRARY_FRAGMENT because lowpeft/ops/*.py defines other lowpeft:: ops from Python.
#include <Python.h>

#include <cstdio>
#include <string>

#include <ATen/ATen.h>
#include <torch/library.h>

#include "lowpeft_common.h"

#ifndef LOWPEFT_WITH_CUDA
#define LOWPEFT_WITH_CUDA 0
#endif

namespace lowpeft {
namespace {

// Numbers enter error messages as text made here (std::to_string / snprintf), never through an ostream: the
// H100 build (torch 2.11, nvcc 13, 2026-11-24) segfaulted formatting a double into TORCH_CHECK's message, inside
// the copy of std::ostream::_M_insert<double> linked into lowpeft._C (its locale facets are not set up).
std::string number_text(double value) {
  char buffer[32];
  std::snprintf(buffer, sizeof(buffer), "%.17g", value);
  return buffer;
}

std::string number_text(int64_t value) { return std::to_string(value); }

std::string shape_text(const at::Tensor& t) {
  std::string text = "[";
  for (int64_t d = 0; d < t.dim(); ++d) {
    text += (d ? ", " : "") + std::to_string(t.size(d));
  }
  return text + "]";
}

void check_tensor(std::string_view op, const char* name, const at::Tensor& value, const at::Tensor& x,
                  std::initializer_list<int64_t> shape, const char* shape_name) {
  TORCH_CHECK_VALUE(value.dim() == static_cast<int64_t>(shape.size()), op, ": ", name, ": expected a ",
                    number_text(static_cast<int64_t>(shape.size())), "-D tensor ", shape_name, ", got shape ", shape_text(value));
  int64_t d = 0;
  for (int64_t expected : shape) {
    TORCH_CHECK_VALUE(expected < 0 || value.size(d) == expected, op, ": ", name, ": expected shape ", shape_name,
                      " with size ", number_text(expected), " in dimension ", number_text(d), ", got shape ", shape_text(value));
    ++d;
  }
  TORCH_CHECK_VALUE(value.device() == x.device(), op, ": ", name, ": expected a tensor on ", x.device(),
                    " (the input's device), got one on ", value.device());
  TORCH_CHECK_TYPE(value.scalar_type() == x.scalar_type(), op, ": ", name, ": expected dtype ", x.scalar_type(),
                   " (the input's dtype), got ", value.scalar_type());
}

void check_input(std::string_view op, const char* name, const at::Tensor& x, const char* shape_name) {
  TORCH_CHECK_VALUE(x.dim() == 2, op, ": ", name, ": expected a 2-D tensor ", shape_name, ", got shape ",
                    shape_text(x));
  const auto dtype = x.scalar_type();
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
                   ": ", name, ": expected dtype float32, float64, float16 or bfloat16, got ", dtype);
  TORCH_CHECK_VALUE(x.device().is_cpu() || x.device().is_cuda() || x.device().is_meta(), op, ": ", name,
                    ": expected a CPU or CUDA tensor, got one on ", x.device());
}

void check_saved(std::string_view op, const char* name, const at::Tensor& saved, const at::Tensor& x, int64_t rows,
                 int64_t cols, const char* shape_name, at::ScalarType dtype) {
  TORCH_CHECK_VALUE(saved.dim() == 2 && saved.size(0) == rows && saved.size(1) == cols, op, ": ", name,
                    ": expected shape ", shape_name, " = [", number_text(rows), ", ", number_text(cols), "], got ", shape_text(saved));
  TORCH_CHECK_TYPE(saved.scalar_type() == dtype, op, ": ", name, ": expected dtype ", dtype,
                   " (the forward's output for ", x.scalar_type(), " inputs), got ", saved.scalar_type());
  TORCH_CHECK_VALUE(saved.device() == x.device(), op, ": ", name, ": expected a tensor on ", x.device(),
                    ", got one on ", saved.device());
}

void check_needs(std::string_view op, const c10::List<bool>& needs) {
  TORCH_CHECK_VALUE(needs.size() == 5, op, ": needs: expected 5 booleans (one per gradient), got ",
                    number_text(static_cast<int64_t>(needs.size())));
}

void check_finite(std::string_view op, const char* name, double value) {
  TORCH_CHECK_VALUE(std::isfinite(value), op, ": ", name, ": expected a finite float, got ", number_text(value));
}

void check_dropout(std::string_view op, double dropout_p) {
  TORCH_CHECK_VALUE(dropout_p >= 0.0 && dropout_p < 1.0, op, ": dropout_p: expected a float in [0, 1), got ",
                    number_text(dropout_p));
}

}  // namespace

at::ScalarType accumulate_dtype(at::ScalarType input_dtype) {
  return at::promote_types(input_dtype, at::kFloat);
}

at::ScalarType shrink_dtype(at::ScalarType input_dtype, double dropout_p) {
  return dropout_p > 0.0 ? accumulate_dtype(input_dtype) : input_dtype;
}

at::Tensor not_needed(const at::Tensor& like) {
  return at::empty({0}, like.options());
}

Activation parse_activation(std::string_view op, std::string_view activation) {
  if (activation == "gelu") return Activation::Gelu;
  if (activation == "gelu_tanh") return Activation::GeluTanh;
  if (activation == "relu") return Activation::Relu;
  if (activation == "silu") return Activation::Silu;
  TORCH_CHECK_VALUE(false, op, ": activation: expected one of 'gelu', 'gelu_tanh', 'relu', 'silu', got '",
                    std::string(activation), "'");
}

void check_dequantize_int8(std::string_view op, const at::Tensor& qweight, const at::Tensor& scale,
                           at::ScalarType dtype) {
  TORCH_CHECK_TYPE(qweight.scalar_type() == at::kChar, op, ": qweight: expected an int8 tensor, got dtype ",
                   qweight.scalar_type());
  TORCH_CHECK_VALUE(qweight.dim() == 2, op, ": qweight: expected a 2-D tensor [out_features, in_features], got shape ",
                    shape_text(qweight));
  TORCH_CHECK_TYPE(at::isFloatingType(scale.scalar_type()), op, ": weight_scale: expected a floating-point tensor, "
                   "got dtype ", scale.scalar_type());
  TORCH_CHECK_VALUE(scale.dim() == 1 && scale.size(0) == qweight.size(0), op, ": weight_scale: expected shape [",
                    number_text(qweight.size(0)), "] (one scale per output row), got ", shape_text(scale));
  TORCH_CHECK_VALUE(scale.device() == qweight.device(), op, ": weight_scale: expected a tensor on ", qweight.device(),
                    " (qweight's device), got one on ", scale.device());
  TORCH_CHECK_TYPE(dtype == at::kFloat || dtype == at::kDouble || dtype == at::kHalf || dtype == at::kBFloat16, op,
                   ": dtype: expected float32, float64, float16 or bfloat16, got ", dtype);
}

void check_lora_forward(std::string_view op, const at::Tensor& x, const at::Tensor& weight,
                        const std::optional<at::Tensor>& bias, const at::Tensor& lora_A, const at::Tensor& lora_B,
                        double scaling, double dropout_p) {
  check_input(op, "x", x, "[T, in_features]");
  const int64_t in_features = x.size(1);
  TORCH_CHECK_VALUE(weight.dim() == 2, op, ": weight: expected a 2-D tensor [out_features, in_features], got shape ",
                    shape_text(weight));
  const int64_t out_features = weight.size(0);
  check_tensor(op, "weight", weight, x, {out_features, in_features}, "[out_features, in_features]");
  TORCH_CHECK_VALUE(lora_A.dim() == 2 && lora_A.size(0) >= 1, op,
                    ": lora_A: expected a 2-D tensor [r, in_features] with r >= 1, got shape ", shape_text(lora_A));
  const int64_t rank = lora_A.size(0);
  check_tensor(op, "lora_A", lora_A, x, {rank, in_features}, "[r, in_features]");
  check_tensor(op, "lora_B", lora_B, x, {out_features, rank}, "[out_features, r]");
  if (bias.has_value()) {
    check_tensor(op, "bias", *bias, x, {out_features}, "[out_features]");
  }
  check_finite(op, "scaling", scaling);
  check_dropout(op, dropout_p);
}

LoraNeeds check_lora_backward(std::string_view op, const at::Tensor& grad_out, const at::Tensor& x,
                              const at::Tensor& weight, const at::Tensor& lora_A, const at::Tensor& lora_B,
                              const at::Tensor& shrink, double scaling, double dropout_p,
                              const c10::List<bool>& needs) {
  check_lora_forward(op, x, weight, std::nullopt, lora_A, lora_B, scaling, dropout_p);
  check_tensor(op, "grad_out", grad_out, x, {x.size(0), weight.size(0)}, "[T, out_features]");
  check_saved(op, "shrink", shrink, x, x.size(0), lora_A.size(0), "[T, r]", shrink_dtype(x.scalar_type(), dropout_p));
  check_needs(op, needs);
  return {needs.get(0), needs.get(1), needs.get(2), needs.get(3), needs.get(4)};
}

Activation check_adapter_forward(std::string_view op, const at::Tensor& h, const at::Tensor& down_weight,
                                 const std::optional<at::Tensor>& down_bias, const at::Tensor& up_weight,
                                 const std::optional<at::Tensor>& up_bias, std::string_view activation,
                                 double scale) {
  check_input(op, "h", h, "[T, dim]");
  const int64_t dim = h.size(1);
  TORCH_CHECK_VALUE(down_weight.dim() == 2 && down_weight.size(0) >= 1, op,
                    ": down_weight: expected a 2-D tensor [bottleneck, dim] with bottleneck >= 1, got shape ",
                    shape_text(down_weight));
  const int64_t bottleneck = down_weight.size(0);
  check_tensor(op, "down_weight", down_weight, h, {bottleneck, dim}, "[bottleneck, dim]");
  check_tensor(op, "up_weight", up_weight, h, {dim, bottleneck}, "[dim, bottleneck]");
  if (down_bias.has_value()) {
    check_tensor(op, "down_bias", *down_bias, h, {bottleneck}, "[bottleneck]");
  }
  if (up_bias.has_value()) {
    check_tensor(op, "up_bias", *up_bias, h, {dim}, "[dim]");
  }
  check_finite(op, "scale", scale);
  return parse_activation(op, activation);
}

AdapterNeeds check_adapter_backward(std::string_view op, const at::Tensor& grad_out, const at::Tensor& h,
                                    const at::Tensor& down_weight, const std::optional<at::Tensor>& down_bias,
                                    const at::Tensor& up_weight, const at::Tensor& z, std::string_view activation,
                                    double scale, const c10::List<bool>& needs) {
  check_adapter_forward(op, h, down_weight, down_bias, up_weight, std::nullopt, activation, scale);
  check_tensor(op, "grad_out", grad_out, h, {h.size(0), h.size(1)}, "[T, dim]");
  check_saved(op, "z", z, h, h.size(0), down_weight.size(0), "[T, bottleneck]", accumulate_dtype(h.scalar_type()));
  check_needs(op, needs);
  return {needs.get(0), needs.get(1), needs.get(2), needs.get(3), needs.get(4)};
}

namespace {

// Meta kernels: the checks plus the output shapes and dtypes, for FakeTensor, torch.compile and opcheck.
at::Tensor dequantize_int8_meta(const at::Tensor& qweight, const at::Tensor& scale, at::ScalarType dtype) {
  check_dequantize_int8("native_dequantize_int8", qweight, scale, dtype);
  return at::empty(qweight.sizes(), qweight.options().dtype(dtype));
}

std::tuple<at::Tensor, at::Tensor> lora_linear_fwd_meta(const at::Tensor& x, const at::Tensor& weight,
                                                        const std::optional<at::Tensor>& bias,
                                                        const at::Tensor& lora_A, const at::Tensor& lora_B,
                                                        double scaling, double dropout_p, int64_t seed) {
  check_lora_forward("native_lora_linear_fwd", x, weight, bias, lora_A, lora_B, scaling, dropout_p);
  return {at::empty({x.size(0), weight.size(0)}, x.options()),
          at::empty({x.size(0), lora_A.size(0)}, x.options().dtype(shrink_dtype(x.scalar_type(), dropout_p)))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> lora_linear_bwd_meta(
    const at::Tensor& grad_out, const at::Tensor& x, const at::Tensor& weight, const at::Tensor& lora_A,
    const at::Tensor& lora_B, const at::Tensor& shrink, double scaling, double dropout_p, int64_t seed,
    const c10::List<bool>& needs) {
  const LoraNeeds need = check_lora_backward("native_lora_linear_bwd", grad_out, x, weight, lora_A, lora_B, shrink,
                                             scaling, dropout_p, needs);
  auto make = [&](bool needed, at::IntArrayRef shape) {
    return needed ? at::empty(shape, x.options()) : not_needed(x);
  };
  return {make(need.dx, x.sizes()), make(need.d_lora_A, lora_A.sizes()), make(need.d_lora_B, lora_B.sizes()),
          make(need.d_weight, weight.sizes()), make(need.d_bias, {weight.size(0)})};
}

std::tuple<at::Tensor, at::Tensor> bottleneck_adapter_fwd_meta(const at::Tensor& h, const at::Tensor& down_weight,
                                                               const std::optional<at::Tensor>& down_bias,
                                                               const at::Tensor& up_weight,
                                                               const std::optional<at::Tensor>& up_bias,
                                                               c10::string_view activation, double scale) {
  check_adapter_forward("native_bottleneck_adapter_fwd", h, down_weight, down_bias, up_weight, up_bias,
                        std::string_view(activation.data(), activation.size()), scale);
  return {at::empty(h.sizes(), h.options()),
          at::empty({h.size(0), down_weight.size(0)}, h.options().dtype(accumulate_dtype(h.scalar_type())))};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor> bottleneck_adapter_bwd_meta(
    const at::Tensor& grad_out, const at::Tensor& h, const at::Tensor& down_weight,
    const std::optional<at::Tensor>& down_bias, const at::Tensor& up_weight, const at::Tensor& z,
    c10::string_view activation, double scale, const c10::List<bool>& needs) {
  const AdapterNeeds need =
      check_adapter_backward("native_bottleneck_adapter_bwd", grad_out, h, down_weight, down_bias, up_weight, z,
                             std::string_view(activation.data(), activation.size()), scale, needs);
  auto make = [&](bool needed, at::IntArrayRef shape) {
    return needed ? at::empty(shape, h.options()) : not_needed(h);
  };
  return {make(need.dh, h.sizes()), make(need.d_down_weight, down_weight.sizes()),
          make(need.d_down_bias, {down_weight.size(0)}), make(need.d_up_weight, up_weight.sizes()),
          make(need.d_up_bias, {h.size(1)})};
}

}  // namespace
}  // namespace lowpeft

TORCH_LIBRARY_FRAGMENT(lowpeft, m) {
  m.def(
      "native_lora_linear_fwd(Tensor x, Tensor weight, Tensor? bias, Tensor lora_A, Tensor lora_B, float scaling, "
      "float dropout_p, int seed) -> (Tensor y, Tensor shrink)");
  m.def(
      "native_lora_linear_bwd(Tensor grad_out, Tensor x, Tensor weight, Tensor lora_A, Tensor lora_B, "
      "Tensor shrink, float scaling, float dropout_p, int seed, bool[] needs) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
  m.def("native_dequantize_int8(Tensor qweight, Tensor scale, ScalarType dtype) -> Tensor");
  m.def(
      "native_bottleneck_adapter_fwd(Tensor h, Tensor down_weight, Tensor? down_bias, Tensor up_weight, "
      "Tensor? up_bias, str activation, float scale) -> (Tensor out, Tensor z)");
  m.def(
      "native_bottleneck_adapter_bwd(Tensor grad_out, Tensor h, Tensor down_weight, Tensor? down_bias, "
      "Tensor up_weight, Tensor z, str activation, float scale, bool[] needs) "
      "-> (Tensor, Tensor, Tensor, Tensor, Tensor)");
}

TORCH_LIBRARY_IMPL(lowpeft, Meta, m) {
  m.impl("native_lora_linear_fwd", &lowpeft::lora_linear_fwd_meta);
  m.impl("native_lora_linear_bwd", &lowpeft::lora_linear_bwd_meta);
  m.impl("native_dequantize_int8", &lowpeft::dequantize_int8_meta);
  m.impl("native_bottleneck_adapter_fwd", &lowpeft::bottleneck_adapter_fwd_meta);
  m.impl("native_bottleneck_adapter_bwd", &lowpeft::bottleneck_adapter_bwd_meta);
}

static PyModuleDef lowpeft_module = {
    PyModuleDef_HEAD_INIT,
    "lowpeft._C",
    "lowpeft's compiled kernels; the ops are torch.ops.lowpeft.native_*.",
    -1,
    nullptr,
};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&lowpeft_module);
  if (module == nullptr) {
    return nullptr;
  }
  if (PyModule_AddObject(module, "WITH_CUDA", PyBool_FromLong(LOWPEFT_WITH_CUDA)) != 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
