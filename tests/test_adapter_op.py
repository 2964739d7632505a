# Property tests of lowpeft.ops.bottleneck_adapter on every backend available here, against the float64 oracle
# (lowpeft.reference) with the suite's tolerance rule: forward and all five gradients, ragged shapes and
# bottlenecks (not only powers of two), every activation, 2-D / 3-D / non-contiguous inputs, biases on/off,
# frozen inputs, empty batches, NaN/Inf propagation, poisoned outputs, determinism; plus opcheck, gradcheck,
# autocast and bad-input errors. GPU-only tests (bf16 at the benchmark's sizes, D = 16384, T·D > 2³¹) skip on the CPU.
import types

import pytest
import torch
from hypothesis import Phase, given, settings
from hypothesis import strategies as st

from lowpeft import reference
from lowpeft.ops.bottleneck_adapter import bottleneck_adapter
from tests.backends_under_test import DEVICE, backend_params, examples_for
from tests.tolerance import assert_matches_oracle, assert_non_finite_pattern_matches, poison_

DIMS = st.sampled_from([1, 7, 16, 33, 64, 123])
TOKENS = st.sampled_from([0, 1, 7, 32, 123])
BOTTLENECKS = st.sampled_from([1, 3, 16, 40, 64, 100])
ACTIVATIONS = st.sampled_from(reference.ACTIVATIONS)
GRAD_NAMES = ("dh", "d_down_weight", "d_down_bias", "d_up_weight", "d_up_bias")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def _make_inputs(tokens, dim, bottleneck, dtype, device, *, layout="2d", down_bias=True, up_bias=True, seed=0):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    if layout == "3d":
        h = rand(2, tokens, dim)
    elif layout == "transposed":
        h = rand(dim, tokens).t()  # [T, D] with strides (1, T)
    elif layout == "sliced":
        h = rand(tokens, dim + 5)[:, 2 : 2 + dim]
    else:
        h = rand(tokens, dim)
    down_weight = rand(bottleneck, dim, scale=dim**-0.5)
    up_weight = rand(dim, bottleneck, scale=bottleneck**-0.5)
    return (h, down_weight, rand(bottleneck) if down_bias else None, up_weight, rand(dim) if up_bias else None)


def _oracle(args, grad_out, activation, scale, cast):
    h, down_weight, down_bias, up_weight, up_bias = (None if t is None else cast(t.detach()) for t in args)
    out = reference.bottleneck_adapter(h, down_weight, down_bias, up_weight, up_bias, activation, scale)
    grads = reference.bottleneck_adapter_backward(cast(grad_out), h, down_weight, down_bias, up_weight, activation, scale)
    return out, grads


def _check_against_oracle(backend, device, dtype, tokens, dim, bottleneck, layout, down_bias, up_bias, activation,
                          scale, seed):
    args = _make_inputs(tokens, dim, bottleneck, dtype, device, layout=layout, down_bias=down_bias, up_bias=up_bias,
                        seed=seed)
    leaves = [t.requires_grad_(True) for t in args if t is not None]
    out = bottleneck_adapter(*args, activation, scale, backend=backend)
    assert out.shape == args[0].shape and out.dtype == dtype
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grad_out = grad_out.to(device=device, dtype=dtype)
    grads = iter(torch.autograd.grad(out, leaves, grad_out))
    ours = [next(grads) if t is not None else None for t in args]
    ref_out, ref_grads = _oracle(args, grad_out, activation, scale, lambda t: t.double())
    same_out, same_grads = _oracle(args, grad_out, activation, scale, lambda t: t)
    tag = f"{backend}/{dtype}/{activation}"
    assert_matches_oracle(out, same_out, ref_out, name=f"{tag}/out")
    for name, mine, same, ref in zip(GRAD_NAMES, ours, same_grads, ref_grads):
        if mine is not None:
            assert_matches_oracle(mine, same, ref, name=f"{tag}/{name}")


@pytest.mark.parametrize("backend,device,dtype", backend_params())
@pytest.mark.parametrize("view", ["row_offset", "element_offset", "broadcast_grad"])
def test_views_of_h_and_a_broadcast_gradient(backend, device, dtype, view):
    """The residual operands as views: h starting one row into its storage (aligned to 128 bytes, not 256: the
    cuda backend's cuBLASLt call must be told), one element in (2-byte aligned: must take the general path), and
    a gradient expanded from one row (row stride 0)."""
    tokens, dim, bottleneck = 24, 64, 16
    h, down_weight, down_bias, up_weight, up_bias = _make_inputs(tokens, dim, bottleneck, dtype, device, seed=4)
    if view == "row_offset":
        h = torch.cat([torch.zeros_like(h[:1]), h])[1:]
    elif view == "element_offset":
        h = torch.cat([torch.zeros_like(h.reshape(-1)[:1]), h.reshape(-1)])[1:].view(tokens, dim)
    args = [h, down_weight, down_bias, up_weight, up_bias]
    leaves = [t.requires_grad_(True) for t in args]
    out = bottleneck_adapter(*args, "gelu", 0.5, backend=backend)
    grad_out = torch.randn(tokens if view != "broadcast_grad" else 1, dim, generator=torch.Generator().manual_seed(5),
                           dtype=torch.float64).to(device=device, dtype=dtype).expand(tokens, dim)
    grads = torch.autograd.grad(out, leaves, grad_out)
    ref_out, ref_grads = _oracle(args, grad_out, "gelu", 0.5, lambda t: t.double())
    same_out, same_grads = _oracle(args, grad_out, "gelu", 0.5, lambda t: t)
    assert_matches_oracle(out, same_out, ref_out, name=f"{backend}/{view}/out")
    for name, mine, same, ref in zip(GRAD_NAMES, grads, same_grads, ref_grads):
        assert_matches_oracle(mine, same, ref, name=f"{backend}/{view}/{name}")


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_matches_oracle(backend, device, dtype):
    # On the GPU every new shape compiles kernels, so a failing example is reported as drawn, unshrunk.
    phases = (Phase.explicit, Phase.reuse, Phase.generate) if device == "cuda" else tuple(Phase)

    @settings(max_examples=examples_for(backend, device), phases=phases)
    @given(
        tokens=TOKENS, dim=DIMS, bottleneck=BOTTLENECKS, layout=st.sampled_from(["2d", "3d", "transposed", "sliced"]),
        down_bias=st.booleans(), up_bias=st.booleans(), activation=ACTIVATIONS,
        scale=st.sampled_from([1.0, 0.5, -2.0]), seed=st.integers(0, 2**31 - 2),
    )
    def run(**kwargs):
        _check_against_oracle(backend, device, dtype, **kwargs)

    run()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float64])
@pytest.mark.parametrize("activation", reference.ACTIVATIONS)
def test_triton_takes_bfloat16_and_float64(dtype, activation):
    # The shared backend table runs the interpreter in float32 / float16; the kernels upcast bf16 dot operands
    # when interpreting, so bf16 and float64 are covered there too. On CUDA float64 is refused by name.
    if DEVICE == "cuda" and dtype == torch.float64:
        args = _make_inputs(4, 16, 4, dtype, DEVICE, seed=11)
        with pytest.raises(TypeError, match="h: the triton backend takes float32, float16 or bfloat16 on CUDA"):
            bottleneck_adapter(*args, activation, backend="triton")
        return
    _check_against_oracle("triton", DEVICE, dtype, 37, 123, 40, "sliced", True, True, activation, 0.7, seed=11)


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_frozen_inputs_get_no_gradient(backend, device, dtype):
    h, down_weight, down_bias, up_weight, up_bias = _make_inputs(9, 33, 5, dtype, device, seed=3)
    h.requires_grad_(True)
    bottleneck_adapter(h, down_weight, down_bias, up_weight, up_bias, "silu", 0.5, backend=backend).sum().backward()
    assert h.grad is not None and all(t.grad is None for t in (down_weight, down_bias, up_weight, up_bias))

    h.grad = None
    h.requires_grad_(False)
    params = (down_weight, down_bias, up_weight, up_bias)
    for t in params:
        t.requires_grad_(True)
    out = bottleneck_adapter(h, down_weight, down_bias, up_weight, up_bias, "silu", 0.5, backend=backend)
    grad_out = torch.randn_like(out)
    out.backward(grad_out)
    _, ref_grads = _oracle((h, *params), grad_out, "silu", 0.5, lambda t: t.double())
    _, same_grads = _oracle((h, *params), grad_out, "silu", 0.5, lambda t: t)
    for name, t, same, ref in zip(GRAD_NAMES[1:], params, same_grads[1:], ref_grads[1:]):
        assert_matches_oracle(t.grad, same, ref, name=name)


@pytest.mark.parametrize("bottleneck", [6, 100], ids=["narrow", "wide"])
@pytest.mark.parametrize("wanted", range(5), ids=GRAD_NAMES)
@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_one_input_alone_gets_its_gradient(backend, device, dtype, wanted, bottleneck):
    # Each backward kernel runs only for the gradients asked for (the triton backend's g-side and h-side column
    # kernels separately; past M = 64 its GEMMs and bias sums each on their own): every input alone must still get
    # the oracle's gradient.
    args = _make_inputs(37, 70, bottleneck, dtype, device, seed=11)
    args[wanted].requires_grad_(True)
    out = bottleneck_adapter(*args, "gelu_tanh", 0.75, backend=backend)
    grad_out = torch.randn(out.shape, generator=torch.Generator().manual_seed(12), dtype=torch.float64)
    grad_out = grad_out.to(device=device, dtype=dtype)
    (mine,) = torch.autograd.grad(out, args[wanted], grad_out)
    _, ref_grads = _oracle(args, grad_out, "gelu_tanh", 0.75, lambda t: t.double())
    _, same_grads = _oracle(args, grad_out, "gelu_tanh", 0.75, lambda t: t)
    assert_matches_oracle(mine, same_grads[wanted], ref_grads[wanted], name=f"{backend}/{GRAD_NAMES[wanted]}")


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_nan_and_inf_propagate_like_the_oracle(backend, device, dtype):
    for activation in reference.ACTIVATIONS:
        h, down_weight, down_bias, up_weight, up_bias = _make_inputs(7, 16, 4, dtype, device, seed=5)
        h[2, 3] = float("nan")
        h[4, 0] = float("inf")
        out = bottleneck_adapter(h, down_weight, down_bias, up_weight, up_bias, activation, backend=backend)
        ref = reference.bottleneck_adapter(h.double(), down_weight.double(), down_bias.double(), up_weight.double(),
                                           up_bias.double(), activation)
        assert torch.equal(torch.isfinite(out.cpu()), torch.isfinite(ref.cpu())), activation
        assert torch.equal(torch.isnan(out.cpu()), torch.isnan(ref.cpu())), activation
        assert torch.isfinite(out[[0, 1, 3, 5, 6]]).all()


@pytest.mark.parametrize("bottleneck", [40, 100], ids=["narrow", "wide"])
@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_non_finite_weights_give_the_torch_backends_non_finite_gradients(backend, device, dtype, bottleneck):
    # An Inf in W_up makes da (and dz) Inf or NaN in every row, the rows a kernel pads past T included: the bias
    # gradients must sum real rows only (the wide path's db_down once summed a padded row's 0 · Inf = NaN).
    args = _make_inputs(7, 33, bottleneck, dtype, device, seed=37)
    args[3][3, 0] = float("inf")
    grad_out = (torch.rand(7, 33, generator=torch.Generator().manual_seed(38), dtype=torch.float64) + 0.1).to(
        device=device, dtype=dtype)
    grads = {}
    for name in (backend, "torch"):
        leaves = [t.detach().clone().requires_grad_(True) for t in args]
        out = bottleneck_adapter(*leaves, "relu", 0.5, backend=name)
        grads[name] = torch.autograd.grad(out, leaves, grad_out)
    for name, mine, theirs in zip(GRAD_NAMES, grads[backend], grads["torch"]):
        assert torch.equal(torch.isnan(mine.cpu()), torch.isnan(theirs.cpu())), name
        assert torch.equal(torch.isinf(mine.cpu()), torch.isinf(theirs.cpu())), name


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_second_order_gradients_are_refused(backend, device, dtype):
    # The backward is fused kernels (the torch backend: formulas around the saved pre-activation), so a
    # create_graph=True graph through it would miss terms (its Hessian-vector product came out 8 % off): every
    # backend refuses it by name instead.
    args = _make_inputs(5, 8, 3, dtype, device, layout="3d", seed=39)
    for t in args:
        t.requires_grad_(True)
    out = bottleneck_adapter(*args, "gelu", 0.5, backend=backend)
    with pytest.raises(RuntimeError, match="bottleneck_adapter: second-order gradients .*create_graph=True"):
        torch.autograd.grad(out.square().sum(), args[0], create_graph=True)
    assert all(g is not None for g in torch.autograd.grad(out.square().sum(), args))


def test_transposed_views_past_int32_column_offsets_are_copied_row_major():
    # The kernels' offsets along D are 32-bit: a view whose (D - 1) · stride passes 2³¹ goes in as a row-major copy;
    # anything smaller goes in as it is (meta tensors: the strides without the memory).
    from lowpeft.kernels.bottleneck_adapter import column_offsets_fit

    huge = torch.empty_strided((2, 3), (1, 2**30), device="meta")
    assert column_offsets_fit(huge).stride() == (3, 1)
    small = torch.empty_strided((2, 3), (1, 2**29), device="meta")
    assert column_offsets_fit(small) is small
    one_column = torch.empty_strided((2, 1), (1, 2**40), device="meta")
    assert column_offsets_fit(one_column) is one_column


@pytest.mark.parametrize("backend,device", sorted({tuple(p.values[:2]) for p in backend_params()}))
def test_float16_gelu_tanh_far_from_zero_keeps_finite_gradients(backend, device):
    # z = ±1000 in float16: gelu_tanh's closed-form derivative has 0.134 · z² (past float16's range) times
    # 1 - tanh² = 0; evaluated in float16 (the torch backend once did) that is Inf · 0 = NaN in dh, dW_down and
    # db_down. Eager float16 autograd, like every backend here, computes act' in float32: act'(1000) = 1,
    # act'(-1000) = 0.
    h = torch.cat([torch.full((2, 4), 250.0), torch.full((1, 4), -250.0)]).to(device=device, dtype=torch.float16)
    args = [h, torch.ones(2, 4), torch.zeros(2), torch.full((4, 2), 0.01), torch.zeros(4)]
    args = [t.to(device=device, dtype=torch.float16).requires_grad_(True) for t in args]
    grad_out = torch.ones(3, 4, device=device, dtype=torch.float16)
    grads = torch.autograd.grad(bottleneck_adapter(*args, "gelu_tanh", 1.0, backend=backend), args, grad_out)
    ref_out, ref_grads = _oracle([t.double() for t in args], grad_out.double(), "gelu_tanh", 1.0, lambda t: t)
    for name, mine, ref in zip(GRAD_NAMES, grads, ref_grads):
        assert torch.isfinite(mine).all(), f"{backend}: {name} = {mine}"
        torch.testing.assert_close(mine.double(), ref, rtol=2e-3, atol=2e-3, msg=name)


@pytest.mark.parametrize("activation", reference.ACTIVATIONS)
@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_scale_overflow_gives_the_oracles_non_finite_pattern(backend, device, dtype, activation):
    # scale = max / 4, W_down = [I | 0] and W_up = [I; 0], so z = ±1 and g W_up = g[:, :2]: 10 where a unit is off
    # (z = -1), 0.1 where it is on. The exact dz = s · (g W_up) ⊙ act'(z) stays in range (0 for relu off, at most
    # 0.21 · max), as do out, dh, dW_down and db_down; dW_up and db_up overflow with one sign. A backend that scales
    # g W_up before act' (the cpu, cuda and triton backends and the oracle once did) gets s · 10 = Inf first:
    # Inf · 0 = NaN (relu) or ±Inf where dz is finite, spread over whole rows by dz W_down.
    gen = torch.Generator().manual_seed(22)
    signs = torch.tensor([[1.0, -1.0], [-1.0, 1.0], [1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    h = torch.cat([signs, 0.1 * torch.randn(4, 4, generator=gen, dtype=torch.float64)], 1)
    grad_out = torch.cat([torch.where(signs < 0, 10.0, 0.1),
                          0.01 * torch.randn(4, 4, generator=gen, dtype=torch.float64)], 1)
    down_weight, up_weight = torch.eye(2, 6, dtype=torch.float64), torch.eye(6, 2, dtype=torch.float64)
    biases = torch.zeros(2, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    scale = torch.finfo(dtype).max / 4
    args = [t.to(device=device, dtype=dtype).requires_grad_(True)
            for t in (h, down_weight, biases[0], up_weight, biases[1])]
    out = bottleneck_adapter(*args, activation, scale, backend=backend)
    grads = torch.autograd.grad(out, args, grad_out.to(device=device, dtype=dtype))
    ref_out, ref_grads = _oracle((h, down_weight, biases[0], up_weight, biases[1]), grad_out, activation, scale,
                                 lambda t: t)
    assert torch.isinf(ref_grads[3].to(dtype)).any() and torch.isfinite(ref_grads[0].to(dtype)).all()
    for name, mine, ref in zip(("out",) + GRAD_NAMES, (out, *grads), (ref_out, *ref_grads)):
        assert_non_finite_pattern_matches(mine, ref, name=f"{backend}/{dtype}/{activation}/{name}")


@pytest.mark.parametrize("bottleneck", [24, 100], ids=["narrow", "wide"])
@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_inf_row_that_relu_zeroes_stays_finite(backend, device, dtype, bottleneck):
    # relu of -Inf is 0: a row whose every z is -Inf has out = h + s · b_up, Inf in column 0 alone. A kernel that let
    # the padded bottleneck columns (Inf · 0 = NaN in z) reach the up product would turn the whole row NaN.
    h, down_weight, down_bias, up_weight, up_bias = _make_inputs(7, 40, bottleneck, dtype, device, seed=36)
    down_weight[:, 0] = -down_weight[:, 0].abs() - 0.1
    h[4, 0] = float("inf")
    out = bottleneck_adapter(h, down_weight, down_bias, up_weight, up_bias, "relu", backend=backend)
    assert torch.isinf(out[4, 0]) and torch.isfinite(out[4, 1:]).all()
    assert torch.isfinite(out[[0, 1, 2, 3, 5, 6]]).all()


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_empty_batch(backend, device, dtype):
    args = _make_inputs(0, 16, 4, dtype, device, layout="3d", seed=1)
    for t in args:
        t.requires_grad_(True)
    out = bottleneck_adapter(*args, "gelu", backend=backend)
    assert out.shape == (2, 0, 16)
    out.sum().backward()
    assert args[0].grad.shape == args[0].shape
    assert all(torch.all(t.grad == 0) for t in args[1:])


class _PoisoningTorch(types.SimpleNamespace):
    """Stands in for the torch module inside the kernel launchers: every torch.empty comes back NaN-filled."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*args, **kwargs):
        return poison_(torch.empty(*args, **kwargs))


@pytest.mark.parametrize("backend,device,dtype", [p for p in backend_params() if p.values[0] == "triton"])
def test_triton_writes_every_output_element(backend, device, dtype, monkeypatch):
    # Outputs, saved z, the [T, M] intermediates and the split-T partials are all poisoned before the kernels
    # run: any element a kernel fails to write shows up as a NaN against the oracle.
    from lowpeft.kernels import bottleneck_adapter as kernels

    monkeypatch.setattr(kernels, "torch", _PoisoningTorch())
    # The last case is a wide bottleneck: its up kernel's per-split and the row kernel's per-block bias partials.
    for tokens, dim, bottleneck in ((123, 33, 3), (70, 200, 17), (45, 150, 130)):
        _check_against_oracle(backend, device, dtype, tokens, dim, bottleneck, "2d", True, True, "gelu", 0.5, seed=8)


@pytest.mark.parametrize("bottleneck", [16, 100], ids=["narrow", "wide"])
@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_backward_is_deterministic(backend, device, dtype, bottleneck):
    args = _make_inputs(123, 64, bottleneck, dtype, device, seed=12)
    for t in args:
        t.requires_grad_(True)

    def grads():
        out = bottleneck_adapter(*args, "gelu", 0.5, backend=backend)
        return torch.autograd.grad(out, args, torch.ones_like(out))

    for first, second in zip(grads(), grads()):
        assert torch.equal(first, second)


@pytest.mark.parametrize("backend,device,dtype", [p for p in backend_params() if p.values[2] == torch.float64]
                         + [pytest.param("triton", "cpu", torch.float64, id="triton-cpu-float64",
                                         marks=pytest.mark.skipif(DEVICE != "cpu", reason="interpreter only"))])
def test_gradcheck_float64(backend, device, dtype):
    args = _make_inputs(5, 7, 3, dtype, device, layout="3d", seed=4)
    inputs = tuple(t.requires_grad_(True) for t in args)
    # The interpreter is slow: one activation there (each one's derivative is checked against the oracle above).
    activations = ("gelu_tanh",) if (backend, device) == ("triton", "cpu") else reference.ACTIVATIONS
    for activation in activations:
        fn = lambda *a: bottleneck_adapter(*a, activation, 0.7, backend=backend)  # noqa: E731
        assert torch.autograd.gradcheck(fn, inputs), activation


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_opcheck(backend, device, dtype):
    from torch.library import opcheck

    h, down_weight, down_bias, up_weight, up_bias = _make_inputs(9, 33, 5, dtype, device, seed=6)
    for t in (h, down_weight, up_weight, up_bias):
        t.requires_grad_(True)
    opcheck(torch.ops.lowpeft.bottleneck_adapter.default,
            (h, down_weight, down_bias, up_weight, up_bias, "gelu_tanh", 0.5, backend))
    with torch.no_grad():
        out, z = torch.ops.lowpeft.bottleneck_adapter(h, down_weight, down_bias, up_weight, up_bias, "gelu_tanh", 0.5,
                                                      backend)
    grad = torch.randn_like(out)
    opcheck(
        torch.ops.lowpeft.bottleneck_adapter_backward.default,
        (grad, h.detach(), down_weight.detach(), down_bias, up_weight.detach(), z, "gelu_tanh", 0.5,
         [True, True, False, True, True], backend),
    )


def test_saved_pre_activation_is_not_differentiable():
    args = _make_inputs(4, 8, 2, torch.float32, "cpu", seed=7)
    args[0].requires_grad_(True)
    out, z = torch.ops.lowpeft.bottleneck_adapter(*args, "relu", 1.0, "torch")
    assert out.requires_grad and not z.requires_grad and z.dtype == torch.float32


def test_autocast_behaves_like_linear():
    args = _make_inputs(4, 16, 4, torch.float32, "cpu", seed=9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = bottleneck_adapter(*args, backend="torch")
        expected_dtype = torch.nn.functional.linear(args[0], args[1], args[2]).dtype
    assert out.dtype == expected_dtype == torch.bfloat16


def _valid():
    args = _make_inputs(3, 16, 4, torch.float32, "cpu", seed=10)
    return dict(zip(("h", "down_weight", "down_bias", "up_weight", "up_bias"), args), activation="gelu", scale=1.0)


@pytest.mark.parametrize(
    "change,error,words",
    [
        (dict(h=torch.randn(3, 15)), ValueError, ["h", "dim=16", "(3, 15)"]),
        (dict(h=torch.randn(3, 16, dtype=torch.float64)), TypeError, ["down_weight", "float64", "float32"]),
        (dict(h=[1.0, 2.0]), TypeError, ["h", "torch.Tensor", "list"]),
        (dict(h=torch.tensor(1.0)), ValueError, ["h", "0-d"]),
        (dict(h=torch.ones(3, 16, dtype=torch.int64)), TypeError, ["h", "floating-point", "int64"]),
        (dict(down_weight=torch.randn(4, 16, 1)), ValueError, ["down_weight", "2-D", "(4, 16, 1)"]),
        (dict(down_weight=torch.randn(0, 16), up_weight=torch.randn(16, 0), down_bias=None), ValueError,
         ["down_weight", "at least 1"]),
        (dict(up_weight=torch.randn(16, 5)), ValueError, ["up_weight", "[16, 4]", "(16, 5)"]),
        (dict(down_bias=torch.randn(5)), ValueError, ["down_bias", "[4]", "(5,)"]),
        (dict(up_bias=torch.randn(15)), ValueError, ["up_bias", "[16]", "(15,)"]),
        (dict(up_bias=torch.randn(16, dtype=torch.float16)), TypeError, ["up_bias", "float32", "float16"]),
        (dict(activation="tanh"), ValueError, ["activation", "'tanh'", "gelu"]),
        (dict(scale=float("inf")), ValueError, ["scale", "finite"]),
        (dict(scale=float("nan")), ValueError, ["scale", "finite"]),
        (dict(scale="1"), TypeError, ["scale", "'1'"]),
        (dict(backend="fast"), ValueError, ["backend", "'fast'"]),
    ],
)
def test_bad_input_is_a_named_error(change, error, words):
    kwargs = {**_valid(), **change}
    backend = kwargs.pop("backend", "torch")
    with pytest.raises(error) as info:
        bottleneck_adapter(**kwargs, backend=backend)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_explicit_backend_that_cannot_run_is_an_error_not_a_fallback():
    with pytest.raises(ValueError, match="backend: 'cuda' was requested"):
        bottleneck_adapter(**_valid(), backend="cuda")


@needs_cuda
def test_tensors_on_different_devices():
    kwargs = _valid()
    kwargs["up_weight"] = kwargs["up_weight"].cuda()
    with pytest.raises(ValueError, match="up_weight.*cuda"):
        bottleneck_adapter(**kwargs)


@needs_cuda
def test_triton_rejects_a_bottleneck_wider_than_256():
    args = _make_inputs(4, 16, 257, torch.float16, "cuda", seed=2)
    with pytest.raises(ValueError, match="down_weight.*256.*257"):
        bottleneck_adapter(*args, backend="triton")


@needs_cuda
@pytest.mark.parametrize("bottleneck,dtype", [(257, torch.bfloat16), (128, torch.float16), (16, torch.float64)])
def test_auto_takes_every_width_and_dtype_on_cuda(bottleneck, dtype):
    # backend="auto" picks per call (lowpeft/ops/bottleneck_adapter.adapter_auto_order): wider than the triton
    # kernels take, or float64, it must still run and be right, not raise the triton backend's errors.
    _check_against_oracle("auto", "cuda", dtype, 100, 512, bottleneck, "2d", True, True, "gelu", 0.5, 21)


@needs_cuda
@pytest.mark.parametrize(
    "tokens,dim,bottleneck,dtype,activation",
    [(1000, 4096, 64, torch.bfloat16, "gelu"), (300, 16384, 200, torch.bfloat16, "silu"),
     (129, 1024, 256, torch.bfloat16, "gelu_tanh"), (77, 8192, 16, torch.bfloat16, "relu"),
     (4100, 4096, 64, torch.bfloat16, "gelu"), (513, 4096, 64, torch.float32, "gelu"),
     (200, 2048, 128, torch.float16, "silu"), (300, 2048, 256, torch.float32, "gelu"),
     (4100, 1024, 100, torch.float32, "relu"), (257, 4096, 193, torch.float16, "gelu_tanh")],
)
def test_triton_at_benchmark_sizes(tokens, dim, bottleneck, dtype, activation):
    # 4100 rows: above the autotuning threshold, so the tuned configurations are checked too.
    _check_against_oracle("triton", "cuda", dtype, tokens, dim, bottleneck, "2d", True, True, activation, 0.5, 13)


@needs_cuda
@pytest.mark.parametrize("bottleneck", [64, 200], ids=["narrow", "wide"])
def test_triton_float32_follows_matmul_precision(bottleneck):
    # "highest" (the default): IEEE float32, relative error far under tf32's ~1e-3, the gradients too (the wide
    # path's weight gradients come from torch.mm, which follows the same setting).
    args = _make_inputs(256, 1024, bottleneck, torch.float32, "cuda", seed=14)
    ref = reference.bottleneck_adapter(*(t.double() for t in args), "gelu", 1.0)
    delta = lambda out: ((out.double() - ref).norm() / (ref - args[0].double()).norm()).item()  # noqa: E731
    leaves = [t.requires_grad_(True) for t in args]
    out = bottleneck_adapter(*leaves, backend="triton")
    assert delta(out) < 1e-5
    grad_out = torch.randn_like(out)
    mine = torch.autograd.grad(out, leaves, grad_out)
    wanted = torch.autograd.grad(reference.bottleneck_adapter(*(t.double() for t in leaves), "gelu", 1.0), leaves,
                                 grad_out.double())
    for name, got, want in zip(GRAD_NAMES, mine, wanted):
        assert ((got.double() - want).norm() / want.norm()).item() < 1e-5, name
    previous = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        assert delta(bottleneck_adapter(*args, backend="triton")) < 1e-2
    finally:
        torch.set_float32_matmul_precision(previous)


@needs_cuda
@pytest.mark.parametrize("bottleneck", [16, 100], ids=["narrow", "wide"])
def test_triton_64_bit_offsets(bottleneck):
    # T·D > 2³¹: offsets along T must be 64-bit. The last rows are checked against the oracle; the weight
    # gradients (which reduce over every row) against the torch backend.
    tokens, dim = (2**31) // 4096 + 64, 4096
    free, _ = torch.cuda.mem_get_info()
    if free < 6 * tokens * dim * 2:
        pytest.skip("not enough GPU memory for a T·D > 2³¹ test")
    gen = torch.Generator(device="cuda").manual_seed(0)
    h = torch.randn(tokens, dim, device="cuda", dtype=torch.bfloat16, generator=gen)
    _, down_weight, down_bias, up_weight, up_bias = _make_inputs(1, dim, bottleneck, torch.bfloat16, "cuda", seed=15)
    params = [t.requires_grad_(True) for t in (down_weight, down_bias, up_weight, up_bias)]
    h.requires_grad_(True)
    out = bottleneck_adapter(h, *params, "gelu", backend="triton")
    grad_out = torch.randn(out.shape, device="cuda", dtype=out.dtype, generator=gen)
    tail = slice(tokens - 40, tokens)
    same_out, same_grads = _oracle((h[tail], *params), grad_out[tail], "gelu", 1.0, lambda t: t)
    ref_out, ref_grads = _oracle((h[tail], *params), grad_out[tail], "gelu", 1.0, lambda t: t.double())
    assert_matches_oracle(out[tail], same_out, ref_out, name="out (last rows)")
    ours = torch.autograd.grad(out, [h, *params], grad_out)
    del out
    assert_matches_oracle(ours[0][tail], same_grads[0], ref_grads[0], name="dh (last rows)")
    torch_grads = torch.autograd.grad(bottleneck_adapter(h, *params, "gelu", backend="torch"), params, grad_out)
    for name, mine, theirs in zip(GRAD_NAMES[1:], ours[1:], torch_grads):
        relative = ((mine.float() - theirs.float()).norm() / theirs.float().norm()).item()
        assert relative < 2e-2, f"{name}: relative difference {relative:.2e} to the torch backend"


@pytest.mark.parametrize("T,D,block_t,block_d,per_sm,memory_cap,expected", [
    (8192, 4096, 64, 128, 1, 10**6, 4),    # 32 column blocks, one program per SM: 128 programs, one wave
    (8192, 4096, 64, 128, 2, 10**6, 8),    # two programs per SM: 256 programs still fit in one wave
    (16384, 8192, 64, 64, 2, 10**6, 2),    # 128 column blocks: 256 programs in one wave
    (4096, 1024, 64, 128, 1, 10**6, 16),   # 8 column blocks: 128 programs
    (4096, 1024, 64, 64, 1, 10**6, 8),     # 16 narrower column blocks: the same 128 programs with half the splits
    (4096, 1024, 64, 128, 1, 5, 5),        # the partial-memory cap wins
    (64, 4096, 64, 128, 1, 10**6, 1),      # never more splits than row blocks
])
def test_backward_split_count_fills_whole_waves(monkeypatch, T, D, block_t, block_d, per_sm, memory_cap, expected):
    """_t_splits on a 132-SM GPU: never a second, mostly idle wave (160 eight-warp programs on 132 SMs ran two
    waves on the H100), within the partial-memory cap. A pure function of the SM count; no GPU needed."""
    from lowpeft.kernels import bottleneck_adapter as kernels

    monkeypatch.setattr(kernels, "_multiprocessors", lambda index: 132)
    splits = kernels._t_splits(T, D, block_t, block_d, 1, per_sm, torch.device("cuda", 0), memory_cap)
    assert splits == expected


@pytest.mark.parametrize("backend,device,dtype", backend_params())
@pytest.mark.parametrize("leading", [(), (5,), (2, 3), (2, 0)], ids=["1-D", "2-D", "3-D", "3-D-empty"])
def test_any_leading_dimensions_are_flattened_without_graph_nodes(backend, device, dtype, leading):
    """h [..., dim] of any rank: out and the gradients equal the flattened call's (bit for bit), dh has h's
    shape, and out is not a view (FSDP2 warns about module outputs that are views): the flattening happens inside
    the autograd Function (Python or C++), so out's graph node is the op's own."""
    torch.manual_seed(12)
    rows = 1
    for size in leading:
        rows *= size
    h = torch.randn(*leading, 24, 2, device=device, dtype=dtype)[..., 0].requires_grad_(True)  # non-contiguous
    down_weight = (torch.randn(8, 24, device=device, dtype=dtype) / 5).requires_grad_(True)
    up_weight = (torch.randn(24, 8, device=device, dtype=dtype) / 3).requires_grad_(True)
    grad = torch.randn(*leading, 24, device=device, dtype=dtype)
    out = bottleneck_adapter(h, down_weight, None, up_weight, None, "gelu", 0.5, backend=backend)
    assert out.shape == h.shape and out._base is None
    assert "View" not in type(out.grad_fn).__name__ and "BottleneckAdapter" in out.grad_fn.name()
    dh, d_down, d_up = torch.autograd.grad(out, [h, down_weight, up_weight], grad)
    assert dh.shape == h.shape
    h_rows = h.detach().reshape(rows, 24).requires_grad_(True)
    out_rows = bottleneck_adapter(h_rows, down_weight, None, up_weight, None, "gelu", 0.5, backend=backend)
    expected = torch.autograd.grad(out_rows, [h_rows, down_weight, up_weight], grad.reshape(rows, 24))
    torch.testing.assert_close(out.reshape(rows, 24), out_rows, rtol=0, atol=0)
    for got, want in zip((dh.reshape(rows, 24), d_down, d_up), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("bottleneck,dtype,only_fallback", [(64, torch.bfloat16, False), (256, torch.bfloat16, False),
                                                            (128, torch.float32, False), (256, torch.float32, False),
                                                            (256, torch.float64, True)])
def test_row_kernels_race_their_small_fallback_tile_only_when_nothing_else_fits(monkeypatch, bottleneck, dtype,
                                                                                 only_fallback):
    # The H100 candidate list (not the interpreter's one-config list): the fallback 32 x 32 tile won one process's
    # autotuning at 4096 x 1024, M = 64 at 2.8x the usual winner's time (run 53), so it is kept out of the race.
    from lowpeft.kernels import bottleneck_adapter as kernels

    monkeypatch.setattr(kernels, "interpreting", lambda: False)
    configs = kernels.row_block_configs()
    block_m = max(16, 1 << (bottleneck - 1).bit_length())
    named = {"h_ptr": torch.empty(0, dtype=dtype), "T_BUCKET": 4096}
    kept = kernels.prune_row_block_configs(configs, named, BLOCK_M=block_m, M_CHUNK=kernels.bottleneck_chunk(block_m))
    assert (kept == configs[-1:]) == only_fallback
    assert only_fallback or configs[-1] not in kept


@pytest.mark.parametrize("M_pad,D,expected", [
    (64, 1024, (64, 64, 4, 3, 1, 1, True)),     # narrow D: 64-column chunks, each SM filled once, one launch
    (16, 1920, (64, 64, 4, 3, 1, 1, True)),
    (64, 2048, (64, 128, 4, 3, 1, 2, False)),   # 16 chunks of 128 columns and more: two per SM, two launches
    (64, 4096, (64, 128, 4, 3, 1, 2, False)),
])
def test_backward_column_tile_by_bottleneck_and_width(monkeypatch, M_pad, D, expected):
    from lowpeft.kernels import bottleneck_adapter as kernels

    monkeypatch.setattr(kernels, "interpreting", lambda: False)
    assert kernels.column_block_config(M_pad, D, 2) == expected


@pytest.mark.parametrize("one_launch", [True, False], ids=["one-launch", "two-launches"])
def test_both_column_launch_plans_give_the_oracle_gradients(monkeypatch, one_launch):
    """The backward's g and h sides run as one launch or two (column_block_config decides by shape; on the CPU
    interpreter the plan is always one launch): both plans give every gradient, and each side alone (dh from the
    g side, d_down_weight from the h side) is right too."""
    from lowpeft.kernels import bottleneck_adapter as kernels

    if DEVICE == "cpu" and not kernels.interpreting():
        pytest.skip("the triton kernels run on the CPU only under TRITON_INTERPRET=1")
    plan = kernels.column_block_config
    monkeypatch.setattr(kernels, "column_block_config", lambda *a: plan(*a)._replace(one_launch=one_launch))
    _check_against_oracle("triton", DEVICE, torch.float32, 45, 70, 24, "2d", True, True, "gelu", 0.5, 31)
    for alone in (0, 1):  # h (g side only), down_weight (h side only)
        args = _make_inputs(45, 70, 24, torch.float32, DEVICE, seed=32)
        args[alone].requires_grad_(True)
        out = bottleneck_adapter(*args, "gelu", 0.5, backend="triton")
        (mine,) = torch.autograd.grad(out, args[alone], torch.ones_like(out))
        expected = reference.bottleneck_adapter_backward(
            torch.ones_like(out).double(), *(None if t is None else t.detach().double() for t in args[:4]), "gelu",
            0.5)[alone]
        assert_matches_oracle(mine, expected.to(mine.dtype), expected, name=f"{GRAD_NAMES[alone]} alone")
