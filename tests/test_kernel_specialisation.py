# The memory-bound Triton kernels keep their size arguments specialised. With a size in do_not_specialize, triton
# cannot know the size's divisibility by 16, so a mask against it has no known constancy: the masked loads drop to
# 2-byte accesses and the compiler leaves them out of the software pipeline. On the H100 that cost the one-pass
# LoRA dropout backward 5 % of the layer (session 4, run 31) and the adapter's backward kernels 1.5-2.4x at M = 64
# (session 5, runs 43-46). Neither showed in any correctness test, hence this check of the decorators.
#
# Trade-off: it reads the kernels' decorator arguments (JITFunction.do_not_specialize on the GPU, the interpreter's
# recorded kwargs on the CPU) rather than timing anything, so it runs everywhere in milliseconds; the fused-GEMM
# kernels, which read their tiles through TMA descriptors and keep sizes unspecialised on purpose, are not listed.
import pytest
import triton

from lowpeft.kernels import bottleneck_adapter, lora_expand, lora_expand_grad_A, lora_grad_weights, lora_shrink

SIZE_ARGUMENTS = {"T", "D", "M", "K", "R", "C"}
KERNELS = {
    "adapter down": bottleneck_adapter._down_kernel,
    "adapter up": bottleneck_adapter._up_kernel,
    "adapter backward_rows": bottleneck_adapter._backward_rows_kernel,
    "adapter backward_cols": bottleneck_adapter._backward_cols_kernel,
    "lora shrink": lora_shrink._lora_shrink_kernel,
    "lora expand-add": lora_expand._lora_expand_add_kernel,
    "lora one-pass dx / dA": lora_expand_grad_A._lora_expand_add_grad_a_kernel,
    "lora split-T weight gradients": lora_grad_weights._lora_split_t_kernel,
}


def _jit_function(kernel):
    return kernel.fn if isinstance(kernel, triton.runtime.Autotuner) else kernel


def _unspecialised_arguments(kernel) -> set[str]:
    function = _jit_function(kernel)
    if hasattr(function, "do_not_specialize"):  # a JITFunction: indices or names
        return {function.arg_names[item] if isinstance(item, int) else item for item in function.do_not_specialize}
    return set(function.kwargs.get("do_not_specialize") or ())  # the interpreter's InterpretedFunction


@pytest.mark.parametrize("name", list(KERNELS))
def test_size_arguments_stay_specialised(name):
    kernel = KERNELS[name]
    sizes = SIZE_ARGUMENTS & set(_jit_function(kernel).arg_names)
    assert sizes, f"{name}: none of {sorted(SIZE_ARGUMENTS)} among its arguments; is the list out of date?"
    assert not sizes & _unspecialised_arguments(kernel), f"{name}: size arguments in do_not_specialize"
