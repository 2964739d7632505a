# Tests of the fused LoRA Triton kernels (lowpeft/kernels/lora_*.py) through lowpeft.ops.lora_linear(backend="triton"):
# every output and all five gradients against the float64 oracle with explicit dropout masks, ragged shapes,
# ranks 1..256, strided / 3-D inputs, zero tokens, NaN / Inf propagation, the dropout mask's properties, and
# (GPU only) 64-bit offsets at T·K > 2³¹.
#
# Trade-off: on the CPU the kernels run under TRITON_INTERPRET=1 (set by conftest.py), which is slow, so the
# hypothesis examples use small shapes and few examples; the same tests run on the GPU with all three dtypes.
# Outputs are poisoned by filling the allocator's free memory with NaN before each call (the op allocates its
# own outputs), so an element a kernel forgets to write shows up as NaN.
import math
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowpeft import reference
from lowpeft.ops import lora_linear
from tests.tolerance import assert_matches_oracle

DEVICES = [
    pytest.param("cpu", marks=pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1",
                                                 reason="triton runs on CPU tensors only under TRITON_INTERPRET=1")),
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")),
]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
GRAD_NAMES = ("dx", "dA", "dB", "dW", "db")


def _poison_allocator(device, nbytes=1 << 22):
    """Hand the next allocations NaN-filled memory, so unwritten output elements read as NaN."""
    block = torch.empty(nbytes // 4, dtype=torch.float32, device=device).fill_(float("nan"))
    del block


def _layout(base_2d, layout):
    """A view of base_2d's values with the requested memory layout (same values, different strides / rank)."""
    if layout == "contiguous":
        return base_2d.clone()
    if layout == "transposed":
        return base_2d.t().contiguous().t()
    if layout == "sliced":
        rows, cols = base_2d.shape
        wide = torch.full((rows, 2 * cols + 3), float("nan"), dtype=base_2d.dtype, device=base_2d.device)
        wide[:, 1 : 2 * cols + 1 : 2] = base_2d
        return wide[:, 1 : 2 * cols + 1 : 2]
    if layout == "3d":
        rows, cols = base_2d.shape
        return base_2d.clone().reshape(1, rows, cols) if rows % 2 else base_2d.clone().reshape(2, rows // 2, cols)
    raise AssertionError(layout)


def _run_case(device, dtype, T, K, N, r, p, bias, layout, weight_grad, seed=1234, x_values=None):
    torch.manual_seed(T * 1000 + K * 10 + N + r)
    make = lambda *shape, scale=1.0: (torch.randn(*shape) * scale).to(device=device, dtype=dtype)  # noqa: E731
    x2 = make(T, K) if x_values is None else x_values.to(device=device, dtype=dtype)
    x = _layout(x2, layout).requires_grad_(True)
    weight = make(N, K, scale=K**-0.5).requires_grad_(weight_grad)
    b = make(N).requires_grad_(weight_grad) if bias else None
    lora_A = make(r, K, scale=K**-0.5).requires_grad_(True)
    lora_B = make(N, r, scale=r**-0.5).requires_grad_(True)
    grad_out = make(*x.shape[:-1], N)
    scaling = 0.75

    _poison_allocator(device)
    y = lora_linear(x, weight, b, lora_A, lora_B, scaling, p, training=True, backend="triton",
                    seed=torch.tensor(seed))
    leaves = [x, lora_A, lora_B] + ([weight] if weight_grad else []) + ([b] if weight_grad and bias else [])
    _poison_allocator(device)
    grads = torch.autograd.grad(y, leaves, grad_out)

    mask = reference.dropout_keep_mask(seed, T, K, p, device=device) if p > 0 else None
    detached = [t.detach() if t is not None else None for t in (x, weight, b, lora_A, lora_B)]
    as64 = [t.double() if t is not None else None for t in detached]
    y64 = reference.lora_linear(*as64, scaling, mask, p)
    y_same = reference.lora_linear(*detached, scaling, mask, p)
    assert_matches_oracle(y, y_same, y64, "y")
    g64 = reference.lora_linear_backward(grad_out.double(), as64[0], as64[1], as64[3], as64[4], scaling, mask, p)
    g_same = reference.lora_linear_backward(grad_out, detached[0], detached[1], detached[3], detached[4], scaling,
                                            mask, p)
    wanted = [0, 1, 2] + ([3] if weight_grad else []) + ([4] if weight_grad and bias else [])
    for grad, index in zip(grads, wanted):
        assert_matches_oracle(grad, g_same[index], g64[index], GRAD_NAMES[index])
    return y, grads


@pytest.mark.parametrize("device", DEVICES)
@settings(max_examples=int(os.environ.get("LOWPEFT_TRITON_EXAMPLES", "12")))
@given(
    data=st.data(),
    T=st.sampled_from([1, 7, 33, 64, 123]),
    K=st.sampled_from([8, 16, 45, 123]),
    N=st.sampled_from([1, 7, 29, 64, 100]),
    r=st.sampled_from([1, 3, 8, 16, 33, 100]),
    p=st.sampled_from([0.0, 0.1, 0.5]),
    bias=st.booleans(),
    layout=st.sampled_from(["contiguous", "transposed", "sliced", "3d"]),
    weight_grad=st.booleans(),
)
def test_matches_oracle(device, data, T, K, N, r, p, bias, layout, weight_grad):
    dtype = data.draw(st.sampled_from(DTYPES), label="dtype")
    _run_case(device, dtype, T, K, N, r, p, bias, layout, weight_grad)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("r", [1, 7, 64, 100, 256])
def test_ranks_one_to_256(device, r):
    _run_case(device, torch.float32, 40, 45, 30, r, 0.0, True, "contiguous", True)
    _run_case(device, torch.float16, 40, 45, 30, r, 0.2, False, "transposed", False)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("p", [0.0, 0.1])
def test_gpu_aligned_shapes_every_dtype(dtype, p):
    """Shapes the persistent TMA kernels take (row-major, 16-byte aligned) and ragged ones beside them."""
    for T, K, N, r in [(1000, 256, 384, 16), (513, 128, 200, 8), (2048, 1024, 512, 64), (300, 64, 64, 128)]:
        _run_case("cuda", dtype, T, K, N, r, p, True, "contiguous", True)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_tokens(device):
    x = torch.randn(0, 16, device=device, requires_grad=True)
    weight = torch.randn(8, 16, device=device, requires_grad=True)
    bias = torch.randn(8, device=device, requires_grad=True)
    lora_A = torch.randn(4, 16, device=device, requires_grad=True)
    lora_B = torch.randn(8, 4, device=device, requires_grad=True)
    y = lora_linear(x, weight, bias, lora_A, lora_B, 2.0, 0.1, backend="triton", seed=torch.tensor(3))
    assert y.shape == (0, 8)
    grads = torch.autograd.grad(y, [x, lora_A, lora_B, weight, bias], torch.randn(0, 8, device=device))
    assert grads[0].shape == (0, 16)
    for grad, leaf in zip(grads[1:], [lora_A, lora_B, weight, bias]):
        assert grad.shape == leaf.shape and torch.equal(grad, torch.zeros_like(leaf))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_float64_is_refused_on_cuda():
    # float64 runs only under the CPU interpreter (for gradcheck, tests/test_lora_op.py).
    from lowpeft.kernels.lora_linear import lora_linear_fwd

    device = "cuda"
    x = torch.randn(4, 8, dtype=torch.float64, device=device)
    with pytest.raises(TypeError, match="float64"):
        lora_linear_fwd(x, torch.randn(3, 8, dtype=torch.float64, device=device), None,
                        torch.randn(2, 8, dtype=torch.float64, device=device),
                        torch.randn(3, 2, dtype=torch.float64, device=device), 1.0, 0.0, 0)


@pytest.mark.parametrize("device", DEVICES)
def test_rank_above_256_is_refused(device):
    from lowpeft.kernels.lora_linear import lora_linear_fwd

    with pytest.raises(ValueError, match="r=257"):
        lora_linear_fwd(torch.randn(4, 8, device=device), torch.randn(3, 8, device=device), None,
                        torch.randn(257, 8, device=device), torch.randn(3, 257, device=device), 1.0, 0.0, 0)


@pytest.mark.parametrize("device", DEVICES)
def test_nan_and_inf_propagate_like_the_oracle(device):
    values = torch.randn(37, 45)
    values[3, 7] = float("nan")
    values[20, 11] = float("inf")
    for p in (0.0, 0.3):
        _run_case(device, torch.float32, 37, 45, 29, 5, p, True, "contiguous", True, x_values=values)


def _identity_layer(device, width, x, p, seed):
    """W = 0, A = B = I, s = 1: y = dropout(x), and dx = dropout mask applied to g."""
    zeros = torch.zeros(width, width, device=device)
    eye_A = torch.eye(width, device=device).requires_grad_(True)
    eye_B = torch.eye(width, device=device).requires_grad_(True)
    x = x.detach().requires_grad_(True)
    y = lora_linear(x, zeros, None, eye_A, eye_B, 1.0, p, backend="triton",
                    seed=None if seed is None else torch.tensor(seed))
    return x, y


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("p", [0.1, 0.5])
def test_dropout_outputs_zero_or_scaled_input_at_binomial_rate(device, p):
    torch.manual_seed(0)
    T, width = 256, 64
    x = torch.rand(T, width, device=device) + 0.5  # no zeros: a zero output means dropped
    _, y = _identity_layer(device, width, x, p, seed=99)
    kept = y != 0
    assert torch.allclose(y[kept], x[kept] / (1 - p), rtol=1e-6, atol=0)
    n = T * width
    rate = kept.float().mean().item()
    sigma = math.sqrt(p * (1 - p) / n)
    assert abs(rate - (1 - p)) < 5 * sigma, f"keep rate {rate:.4f}, expected {1 - p} ± {5 * sigma:.4f}"
    assert torch.equal(kept.cpu(), reference.dropout_keep_mask(99, T, width, p))


@pytest.mark.parametrize("device", DEVICES)
def test_backward_uses_the_forward_mask(device):
    torch.manual_seed(1)
    T, width, p = 96, 32, 0.3
    x_in, y = _identity_layer(device, width, torch.rand(T, width, device=device) + 0.5, p, seed=5)
    grad_out = torch.rand(T, width, device=device) + 0.5
    (dx,) = torch.autograd.grad(y, [x_in], grad_out)
    assert torch.equal(dx != 0, y != 0)
    assert torch.allclose(dx[y != 0], grad_out[y != 0] / (1 - p), rtol=1e-6, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_same_seed_same_mask_other_seed_other_mask(device):
    T, width, p = 64, 32, 0.5
    x = torch.rand(T, width, device=device) + 0.5
    masks = [(_identity_layer(device, width, x, p, seed)[1] != 0) for seed in (11, 11, 12)]
    assert torch.equal(masks[0], masks[1])
    assert not torch.equal(masks[0], masks[2])


@pytest.mark.parametrize("device", DEVICES)
def test_successive_calls_draw_new_masks_and_manual_seed_replays(device):
    T, width, p = 64, 32, 0.5
    x = torch.rand(T, width, device=device) + 0.5
    torch.manual_seed(2024)
    first = _identity_layer(device, width, x, p, seed=None)[1] != 0
    second = _identity_layer(device, width, x, p, seed=None)[1] != 0
    torch.manual_seed(2024)
    replay = _identity_layer(device, width, x, p, seed=None)[1] != 0
    assert not torch.equal(first, second)
    assert torch.equal(first, replay)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (tens of GiB)")
def test_gpu_64bit_offsets_beyond_2_pow_31_elements():
    """T·K > 2³¹: rows past the 32-bit range must be right (forward and backward, with dropout)."""
    K, N, r, p, seed = 4096, 32, 16, 0.1, 77
    T = (2**31) // K + 1000
    device, dtype = "cuda", torch.bfloat16
    torch.manual_seed(0)
    x = torch.randn(T, K, device=device, dtype=dtype).requires_grad_(True)
    weight = (torch.randn(N, K, device=device, dtype=dtype) * K**-0.5)
    lora_A = (torch.randn(r, K, device=device, dtype=dtype) * K**-0.5).requires_grad_(True)
    lora_B = (torch.randn(N, r, device=device, dtype=dtype) * r**-0.5).requires_grad_(True)
    grad_out = torch.randn(T, N, device=device, dtype=dtype)
    y = lora_linear(x, weight, None, lora_A, lora_B, 0.5, p, backend="triton", seed=torch.tensor(seed))
    (dx,) = torch.autograd.grad(y, [x], grad_out)
    tail = slice(T - 1000, T)
    rows = torch.arange(T - 1000, T, device=device).unsqueeze(1).expand(1000, K)
    cols = torch.arange(K, device=device).unsqueeze(0).expand(1000, K)
    keep = reference.dropout_draws(seed, rows, cols) >= reference.dropout_threshold(p)
    xt = x.detach()[tail].double()
    args64 = (xt, weight.double(), None, lora_A.detach().double(), lora_B.detach().double(), 0.5, keep, p)
    y64 = reference.lora_linear(*args64)
    y_same = reference.lora_linear(x.detach()[tail], weight, None, lora_A.detach(), lora_B.detach(), 0.5, keep, p)
    assert_matches_oracle(y[tail], y_same, y64, "y (rows past 2^31 / K)")
    dx64 = reference.lora_linear_backward(grad_out[tail].double(), xt, weight.double(), lora_A.detach().double(),
                                          lora_B.detach().double(), 0.5, keep, p)[0]
    dx_same = reference.lora_linear_backward(grad_out[tail], x.detach()[tail], weight, lora_A.detach(),
                                             lora_B.detach(), 0.5, keep, p)[0]
    assert_matches_oracle(dx[tail], dx_same, dx64, "dx (rows past 2^31 / K)")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: the autotuner times configs on the GPU")
def test_gpu_in_place_expand_add_is_right_on_the_autotuning_call():
    """The first call at a new autotune key times every config on the live buffers; the in-place expand-add
    (dx += mask ⊙ dS A) must come out as if it ran once (found on the H100: without restore_value it added the
    term once per timed config)."""
    from lowpeft.kernels._tuning import autotuning
    from lowpeft.kernels.lora_expand import lora_expand_add
    from lowpeft.kernels.lora_expand_grad_A import lora_expand_add_grad_A

    if not autotuning():
        pytest.skip("LOWPEFT_AUTOTUNE=0: one config, nothing is timed")
    torch.manual_seed(5)
    tokens, width, rank, p = 771, 333, 3, 0.5  # a shape no other test uses: a fresh autotune key
    d_shrink = torch.randn(tokens, rank, device="cuda")
    lora_A = torch.randn(rank, width, device="cuda")
    start = torch.randn(tokens, width, device="cuda")
    out = start.clone()
    lora_expand_add(d_shrink, lora_A, out, seed=31, threshold=reference.dropout_threshold(p), inv_keep=1 / (1 - p),
                    has_dropout=True, rank_padded=16, dot_precision="ieee")
    keep = reference.dropout_keep_mask(31, tokens, width, p, device="cuda").double() / (1 - p)
    expected = start.double() + keep * (d_shrink.double() @ lora_A.double())
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)

    out = start.clone()
    x = torch.randn(tokens + 1, width, device="cuda")[1:]  # another fresh key (and an offset base)
    grad_A = lora_expand_add_grad_A(d_shrink, lora_A, out, x, seed=31, threshold=reference.dropout_threshold(p),
                                    inv_keep=1 / (1 - p), rank_padded=16, dot_precision="ieee", dot_upcast=False)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad_A.double(), d_shrink.double().t() @ (keep * x.double()), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_one_pass_dropout_backward_skips_the_autotuner_when_autotuning_is_off(device, monkeypatch):
    """Under LOWPEFT_AUTOTUNE=0 the one-pass dx / dA kernel launches its first fitting config itself: triton's
    autotuner would still benchmark that lone config on a key's first call, allocating do_bench's L2-flush buffer
    and a copy of dx (on the H100 the p = 0.1 layer's peak extra memory read 3.5x the frozen layer's, run 31)."""
    from lowpeft.kernels import lora_expand_grad_A as module

    def autotuner_called(*args, **kwargs):
        raise AssertionError("the autotuner ran under LOWPEFT_AUTOTUNE=0")

    monkeypatch.setenv("LOWPEFT_AUTOTUNE", "0")
    monkeypatch.setattr(module._lora_expand_add_grad_a_kernel, "run", autotuner_called)
    torch.manual_seed(6)
    tokens, width, rank, p = 97, 40, 3, 0.25
    d_shrink = torch.randn(tokens, rank, device=device)
    lora_A = torch.randn(rank, width, device=device)
    x = torch.randn(tokens, width, device=device)
    start = torch.randn(tokens, width, device=device)
    out = start.clone()
    grad_A = module.lora_expand_add_grad_A(d_shrink, lora_A, out, x, seed=8, threshold=reference.dropout_threshold(p),
                                           inv_keep=1 / (1 - p), rank_padded=16, dot_precision="ieee",
                                           dot_upcast=False)
    keep = reference.dropout_keep_mask(8, tokens, width, p, device=device).double() / (1 - p)
    torch.testing.assert_close(out.double(), start.double() + keep * (d_shrink.double() @ lora_A.double()),
                               rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(grad_A.double(), d_shrink.double().t() @ (keep * x.double()), rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("device", DEVICES)
def test_autotuned_launches_skip_the_autotuner_after_a_key_is_tuned(device, monkeypatch):
    """_tuning.launch_autotuned: the first call at a key goes through the autotuner, later calls at the same key
    launch the remembered config directly (the same result), and a new key goes through the autotuner again."""
    from lowpeft.kernels import lora_shrink as module

    torch.manual_seed(9)
    matrix = torch.randn(48, 5, device=device)

    def shrink(x):
        out = torch.full((x.shape[0], 5), float("nan"), device=device)
        return module.lora_shrink(x, matrix, out, scale=0.5, seed=0, threshold=0, inv_keep=1.0, has_dropout=False,
                                  rank_padded=16, dot_precision="ieee", dot_upcast=False)

    x = torch.randn(37, 48, device=device)
    first = shrink(x)

    def autotuner_called(*args, **kwargs):
        raise AssertionError("autotuner called")

    monkeypatch.setattr(module._lora_shrink_kernel, "run", autotuner_called)
    torch.testing.assert_close(shrink(x), first, rtol=0, atol=0)
    torch.testing.assert_close(first.double(), 0.5 * x.double() @ matrix.double(), rtol=1e-5, atol=1e-5)
    with pytest.raises(AssertionError, match="autotuner called"):
        shrink(torch.randn(37, 48, device=device, dtype=torch.float16))  # a new key: another dtype


@given(st.integers(0, 2**40), st.integers(1, 2**20))
@settings(max_examples=200, deadline=None)
def test_host_size_helpers_match_triton(numerator, denominator):
    """_tuning.ceil_div / next_power_of_2 (plain Python: triton's are ConstexprFunctions, ~2 µs a call from the
    host in triton 3.9) agree with triton.cdiv / triton.next_power_of_2."""
    import triton

    from lowpeft.kernels._tuning import ceil_div, next_power_of_2

    assert ceil_div(numerator, denominator) == triton.cdiv(numerator, denominator)
    assert next_power_of_2(numerator) == triton.next_power_of_2(numerator)


def test_in_place_kernels_declare_what_the_autotuner_must_restore():
    """Every kernel that accumulates into an argument lists it in restore_value, so timing configs on live
    buffers (the first call at each autotune key) cannot add the term more than once."""
    from lowpeft.kernels.lora_expand import _lora_expand_add_kernel
    from lowpeft.kernels.lora_expand_grad_A import _lora_expand_add_grad_a_kernel

    assert "out_ptr" in _lora_expand_add_kernel.restore_value
    assert "dx_ptr" in _lora_expand_add_grad_a_kernel.restore_value


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("wanted", ["dx only", "dA only", "dx and dA"])
def test_dropout_backward_for_each_subset_of_dx_and_dA(device, wanted):
    """The dropout backward has three routes (dx alone: the masked expand-add; dA alone: the split-T kernel;
    both: one pass doing both); each matches the oracle with the forward's mask. 300 tokens make the split-T
    reductions use several token slices on the CPU too (slices are whole 128-row blocks)."""
    T, K, N, r, p, seed = 300, 37, 29, 5, 0.5, 77
    torch.manual_seed(3)
    x = torch.randn(T, K, device=device).requires_grad_(wanted != "dA only")
    weight = torch.randn(N, K, device=device) * K**-0.5
    lora_A = (torch.randn(r, K, device=device) * K**-0.5).requires_grad_(wanted != "dx only")
    lora_B = (torch.randn(N, r, device=device) * r**-0.5).requires_grad_(True)
    grad_out = torch.randn(T, N, device=device)
    y = lora_linear(x, weight, None, lora_A, lora_B, 0.75, p, training=True, backend="triton", seed=torch.tensor(seed))
    leaves = [t for t in (x, lora_A) if t.requires_grad]
    grads = torch.autograd.grad(y, leaves, grad_out)
    mask = reference.dropout_keep_mask(seed, T, K, p, device=device)
    args = (x.detach(), weight, lora_A.detach(), lora_B.detach())
    g64 = reference.lora_linear_backward(grad_out.double(), *(t.double() for t in args), 0.75, mask, p)
    g_same = reference.lora_linear_backward(grad_out, *args, 0.75, mask, p)
    indices = [i for i, t in ((0, x), (1, lora_A)) if t.requires_grad]
    for grad, index in zip(grads, indices):
        assert_matches_oracle(grad, g_same[index], g64[index], GRAD_NAMES[index])


@pytest.mark.parametrize("tokens,rank,element_size,expected", [
    (8192, 16, 2, 8),     # enough slices for two waves of 32 column blocks on 132 SMs, in 1024-row slices
    (8192, 128, 2, 4),    # capped: float32 [slices, 128, K] partials stay under an eighth of a bf16 [T, K]
    (100, 16, 2, 1),      # never more slices than 64-row blocks allow after the memory cap
])
def test_token_slices_balance_waves_and_partial_memory(monkeypatch, tokens, rank, element_size, expected):
    from lowpeft.kernels import _tuning

    monkeypatch.setattr(_tuning, "multiprocessor_count", lambda index: 132)
    slices, rows_per_slice = _tuning.token_slices(tokens, 32, torch.device("cuda", 0), rank=rank,
                                                  element_size=element_size)
    assert slices == expected
    assert rows_per_slice % 128 == 0 and (slices - 1) * rows_per_slice < tokens <= slices * rows_per_slice


@pytest.mark.parametrize("legacy,new,expected", [
    ("highest", None, "ieee"), ("high", None, "tf32"), ("medium", None, "tf32"),
    (None, "tf32", "tf32"), (None, "ieee", "ieee"),
])
def test_float32_dot_precision_follows_both_torch_apis(legacy, new, expected):
    # Both kernel families take tf32 exactly where torch's float32 matmuls do, whichever API set it; after the
    # new torch.backends.cuda.matmul.fp32_precision the legacy getter raises, so it must not be what is read.
    from lowpeft.kernels import _tuning

    matmul = torch.backends.cuda.matmul
    if new is not None and not hasattr(matmul, "fp32_precision"):
        pytest.skip("this torch has no torch.backends.cuda.matmul.fp32_precision")
    saved = torch.get_float32_matmul_precision()
    try:
        if legacy is not None:
            torch.set_float32_matmul_precision(legacy)
        else:
            matmul.fp32_precision = new
        assert _tuning.float32_dot_precision() == expected
    finally:
        if hasattr(matmul, "fp32_precision"):
            matmul.fp32_precision = "none"
        torch.set_float32_matmul_precision(saved)
