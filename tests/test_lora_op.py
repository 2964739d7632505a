# Property tests of lowpeft.ops.lora_linear on every backend available here, against the float64 oracle
# (lowpeft.reference) with the suite's tolerance rule: forward and all five gradients, ragged shapes, 2-D /
# 3-D / non-contiguous inputs, bias on/off, dropout with the mask every backend must reproduce from the
# seed, empty batches, NaN propagation; plus opcheck, gradcheck and bad-input errors.
import importlib
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowpeft import reference
from lowpeft.ops import _dispatch
from lowpeft.ops import lora_linear
from tests.backends_under_test import DEVICE, backend_params, examples_for
from tests.tolerance import assert_matches_oracle, assert_non_finite_pattern_matches

SIZES = st.sampled_from([1, 7, 16, 33, 64, 123])
TOKENS = st.sampled_from([0, 1, 7, 32, 123])
RANKS = st.sampled_from([1, 3, 8, 16, 40])


def _make_inputs(tokens, in_features, out_features, rank, dtype, device, *, layout, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    if layout == "3d":
        x = rand(1, tokens, in_features)
    elif layout == "transposed":
        x = rand(in_features, tokens).t()  # [T, K] with strides (1, T)
    elif layout == "sliced":
        x = rand(tokens, in_features + 5)[:, 2 : 2 + in_features]
    else:
        x = rand(tokens, in_features)
    weight = rand(out_features, in_features, scale=in_features**-0.5)
    bias = rand(out_features) if with_bias else None
    lora_A = rand(rank, in_features, scale=in_features**-0.5)
    lora_B = rand(out_features, rank, scale=rank**-0.5)
    return x, weight, bias, lora_A, lora_B


def _check_against_oracle(backend, device, dtype, tokens, in_features, out_features, rank, layout, with_bias,
                          dropout_p, seed):
    x, weight, bias, lora_A, lora_B = _make_inputs(
        tokens, in_features, out_features, rank, dtype, device, layout=layout, with_bias=with_bias, seed=seed
    )
    scaling = 2.0 / rank
    leaves = [x, weight, lora_A, lora_B] + ([bias] if with_bias else [])
    for t in leaves:
        t.requires_grad_(True)
    seed_tensor = torch.tensor(seed)
    y = lora_linear(x, weight, bias, lora_A, lora_B, scaling, dropout_p, True, backend=backend, seed=seed_tensor)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grad_out = grad_out.to(device=device, dtype=dtype)
    grads = torch.autograd.grad(y, leaves, grad_out)

    mask = reference.dropout_keep_mask(seed, x.reshape(-1, in_features).shape[0], in_features, dropout_p, device=device)
    mask = mask if dropout_p > 0 else None

    def oracle(cast):
        args = [None if t is None else cast(t.detach()) for t in (x, weight, bias, lora_A, lora_B)]
        out = reference.lora_linear(*args, scaling, mask, dropout_p)
        dx, dA, dB, dW, db = reference.lora_linear_backward(
            cast(grad_out), args[0], args[1], args[3], args[4], scaling, mask, dropout_p
        )
        return [out, dx, dW, dA, dB] + ([db] if with_bias else [])

    ref64 = oracle(lambda t: t.double())
    same = oracle(lambda t: t)
    names = ["y", "dx", "d_weight", "d_lora_A", "d_lora_B", "d_bias"]
    for name, ours, s, r in zip(names, [y, *grads], same, ref64):
        assert_matches_oracle(ours, s, r, name=f"{backend}/{dtype}/{name}")


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_matches_oracle(backend, device, dtype):
    @settings(max_examples=examples_for(backend, device))
    @given(
        tokens=TOKENS, in_features=SIZES, out_features=SIZES, rank=RANKS,
        layout=st.sampled_from(["2d", "3d", "transposed", "sliced"]), with_bias=st.booleans(),
        dropout_p=st.sampled_from([0.0, 0.0, 0.1, 0.5]), seed=st.integers(0, 2**31 - 2),
    )
    def run(**kwargs):
        _check_against_oracle(backend, device, dtype, **kwargs)

    run()


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_frozen_base_gets_no_gradient_and_costs_none(backend, device, dtype):
    x, weight, bias, lora_A, lora_B = _make_inputs(9, 16, 12, 4, dtype, device, layout="2d", with_bias=True, seed=3)
    x.requires_grad_(True)
    lora_A.requires_grad_(True)
    lora_B.requires_grad_(True)
    y = lora_linear(x, weight, bias, lora_A, lora_B, 0.5, backend=backend)
    y.sum().backward()
    assert weight.grad is None and bias.grad is None
    assert x.grad is not None and lora_A.grad is not None and lora_B.grad is not None


@pytest.mark.parametrize("dropout_p", [0.0, 0.5])
@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_zero_out_features_gives_zero_gradients(backend, device, dtype, dropout_p):
    # out_features = 0: y is [T, 0] and every gradient is zeros (the triton and cuda backends once indexed lora_B's
    # row 0 as a shape stand-in: IndexError).
    x = torch.randn(4, 5, device=device, dtype=dtype, requires_grad=True)
    lora_A = torch.randn(2, 5, device=device, dtype=dtype, requires_grad=True)
    lora_B = torch.randn(0, 2, device=device, dtype=dtype, requires_grad=True)
    y = lora_linear(x, torch.randn(0, 5, device=device, dtype=dtype), None, lora_A, lora_B, 1.0, dropout_p, True,
                    backend=backend)
    assert y.shape == (4, 0)
    dx, d_lora_A, d_lora_B = torch.autograd.grad(y.sum(), (x, lora_A, lora_B))
    assert torch.equal(dx, torch.zeros_like(x)) and torch.equal(d_lora_A, torch.zeros_like(lora_A))
    assert d_lora_B.shape == (0, 2)


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_nan_and_inf_propagate_like_the_oracle(backend, device, dtype):
    x, weight, bias, lora_A, lora_B = _make_inputs(7, 16, 12, 4, dtype, device, layout="2d", with_bias=True, seed=5)
    x[2, 3] = float("nan")
    x[4, 0] = float("inf")
    y = lora_linear(x, weight, bias, lora_A, lora_B, 0.5, backend=backend)
    ref = reference.lora_linear(x.double(), weight.double(), bias.double(), lora_A.double(), lora_B.double(), 0.5)
    assert torch.equal(torch.isfinite(y.cpu()), torch.isfinite(ref.cpu()))
    assert torch.isfinite(y[[0, 1, 3, 5, 6]]).all()


@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_scaling_overflow_gives_the_oracles_non_finite_pattern(backend, device, dtype, dropout_p):
    # scaling = max / 4 and lora_A = [I | 0], so S = x[:, :2] = ±10 (0 or ±10 / (1 - p) under dropout): s · S alone
    # overflows, while s · B, the products S_k (s B)_k and the exact y stay far inside the range or overflow with one
    # sign. lora_B's rows: opposite signs with a finite y, one-sided past the range (±Inf), zero (y = x Wᵀ + b), and
    # all positive. A backend that scales S before the up product (the cpu backend, csrc/cuda's dropout path and the
    # triton backend's LOWPEFT_TRITON_GEMM=fused kernel once did) sums Inf · B terms: NaN or ±Inf where the oracle's
    # y is finite, NaN where it is ±Inf.
    gen = torch.Generator().manual_seed(21)
    signs = torch.tensor([[1.0, 1.0], [1.0, -1.0], [-1.0, 1.0], [-1.0, -1.0]], dtype=torch.float64)
    x = torch.cat([10 * signs, 0.1 * torch.randn(4, 3, generator=gen, dtype=torch.float64)], 1)
    lora_A = torch.eye(2, 5, dtype=torch.float64)
    lora_B = torch.tensor([[0.02, -0.01], [0.6, 0.0], [-0.6, 0.0], [0.5, -0.01], [0.0, 0.0], [0.01, 0.02]],
                          dtype=torch.float64)
    weight = 0.1 * torch.randn(6, 5, generator=gen, dtype=torch.float64)
    bias = 0.1 * torch.randn(6, generator=gen, dtype=torch.float64)
    grad_out = 1e-3 * torch.randn(4, 6, generator=gen, dtype=torch.float64)
    scaling = torch.finfo(dtype).max / 4
    args = [t.to(device=device, dtype=dtype).requires_grad_(True) for t in (x, weight, bias, lora_A, lora_B)]
    y = lora_linear(*args, scaling, dropout_p, True, backend=backend, seed=torch.tensor(13))
    grads = torch.autograd.grad(y, args, grad_out.to(device=device, dtype=dtype))
    mask = reference.dropout_keep_mask(13, 4, 5, dropout_p) if dropout_p > 0 else None
    ref_y = reference.lora_linear(x, weight, bias, lora_A, lora_B, scaling, mask, dropout_p)
    dx, d_lora_A, d_lora_B, d_weight, d_bias = reference.lora_linear_backward(
        grad_out, x, weight, lora_A, lora_B, scaling, mask, dropout_p)
    assert torch.isinf(ref_y.to(dtype)).any() and torch.isfinite(ref_y.to(dtype)).any()
    names = ("y", "dx", "d_weight", "d_bias", "d_lora_A", "d_lora_B")
    for name, ours, ref in zip(names[1:], grads, (dx, d_weight, d_bias, d_lora_A, d_lora_B)):
        assert_non_finite_pattern_matches(ours, ref, name=f"{backend}/{dtype}/{name}")
    if device == "cuda" and dtype == torch.float32:
        # cuBLAS's float32 GEMM applies alpha to an operand before the product: PyTorch's own
        # y.addmm_(S, Bᵀ, alpha=s) is NaN where s · S overflows (run 83). A path through that call (the torch
        # backend; the others without dropout) matches plain PyTorch; a path that scales B itself (the cuda
        # backend's dropout path) matches the oracle.
        plain = lora_linear(*args, scaling, dropout_p, True, backend="torch", seed=torch.tensor(13)).detach()
        try:
            assert_non_finite_pattern_matches(y, ref_y, name=f"{backend}/{dtype}/y")
        except AssertionError:
            assert_non_finite_pattern_matches(y, plain, name=f"{backend}/{dtype}/y against plain PyTorch")
    else:
        assert_non_finite_pattern_matches(y, ref_y, name=f"{backend}/{dtype}/y")


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_second_order_gradients_are_refused(backend, device, dtype):
    # The backward is fused kernels (the torch backend: formulas around the saved shrink), so a create_graph=True
    # graph through it would miss terms: every backend refuses it by name instead.
    x, weight, bias, lora_A, lora_B = _make_inputs(5, 8, 6, 2, dtype, device, layout="3d", with_bias=True, seed=9)
    for t in (x, lora_A, lora_B):
        t.requires_grad_(True)
    y = lora_linear(x, weight, bias, lora_A, lora_B, 0.5, backend=backend)
    with pytest.raises(RuntimeError, match="lora_linear: second-order gradients .*create_graph=True"):
        torch.autograd.grad(y.square().sum(), (x, lora_A), create_graph=True)
    # First-order gradients are unaffected.
    assert all(g is not None for g in torch.autograd.grad(y.square().sum(), (x, lora_A, lora_B)))


@pytest.mark.parametrize("layout", ["2d", "3d"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_empty_batch(backend, device, dtype, dropout_p, layout):
    # A 2-D empty output's y.sum() hands backward a gradient with strides (0, 0): it must not trip the kernels'
    # row-major check (the triton backend raised a ValueError there).
    x, weight, bias, lora_A, lora_B = _make_inputs(0, 16, 12, 4, dtype, device, layout=layout, with_bias=True, seed=1)
    for t in (x, weight, bias, lora_A, lora_B):
        t.requires_grad_(True)
    y = lora_linear(x, weight, bias, lora_A, lora_B, 0.5, dropout_p, backend=backend)
    assert y.shape == x.shape[:-1] + (12,)
    y.sum().backward()
    assert x.grad.shape == x.shape and torch.all(lora_A.grad == 0) and torch.all(lora_B.grad == 0)
    assert torch.all(weight.grad == 0) and torch.all(bias.grad == 0)


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_dropout_seed_reproduces_and_masks_differ(backend, device, dtype):
    x, weight, bias, lora_A, lora_B = _make_inputs(33, 16, 12, 4, dtype, device, layout="2d", with_bias=False, seed=2)
    run = lambda s, training=True: lora_linear(
        x, weight, bias, lora_A, lora_B, 1.0, 0.5, training, backend=backend, seed=torch.tensor(s)
    )
    assert torch.equal(run(11), run(11))
    assert not torch.equal(run(11), run(12))
    assert torch.equal(run(11, training=False), run(12, training=False))


def test_dropout_seed_comes_from_torch_generator():
    x = torch.randn(8, 16)
    weight, lora_A, lora_B = torch.randn(12, 16), torch.randn(4, 16), torch.randn(12, 4)
    torch.manual_seed(0)
    first = lora_linear(x, weight, None, lora_A, lora_B, 1.0, 0.5)
    second = lora_linear(x, weight, None, lora_A, lora_B, 1.0, 0.5)
    torch.manual_seed(0)
    again = lora_linear(x, weight, None, lora_A, lora_B, 1.0, 0.5)
    assert torch.equal(first, again) and not torch.equal(first, second)


def test_dropout_under_cuda_graph_capture_without_seed_is_an_error(monkeypatch):
    # A host-drawn seed would be baked into the graph: every replay would reuse one mask, silently.
    op_module = importlib.import_module("lowpeft.ops.lora_linear")
    monkeypatch.setattr(op_module, "_capturing_cuda_graph", lambda x: True)
    x, weight, lora_A, lora_B = torch.randn(8, 16), torch.randn(12, 16), torch.randn(4, 16), torch.randn(12, 4)
    with pytest.raises(ValueError, match="seed: dropout under CUDA graph capture needs an explicit seed"):
        lora_linear(x, weight, None, lora_A, lora_B, 1.0, 0.5)
    lora_linear(x, weight, None, lora_A, lora_B, 1.0, 0.5, seed=torch.tensor(3))  # explicit seed: allowed
    lora_linear(x, weight, None, lora_A, lora_B, 1.0, 0.5, training=False)  # no dropout: allowed


@pytest.mark.skipif(DEVICE != "cuda", reason="needs CUDA graphs")
def test_cuda_graph_capture_replays_the_layer():
    x, weight, bias, lora_A, lora_B = _make_inputs(64, 32, 48, 8, torch.float32, "cuda", layout="2d",
                                                   with_bias=True, seed=5)
    args = (x, weight, bias, lora_A, lora_B, 0.5)
    expected = lora_linear(*args, 0.0)
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        lora_linear(*args, 0.0)
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = lora_linear(*args, 0.0)
        with pytest.raises(ValueError, match="CUDA graph capture"):
            lora_linear(*args, 0.3)
    graph.replay()
    torch.testing.assert_close(captured, expected)


_TRITON_INTERPRETED_FLOAT64 = [
    pytest.param("triton", "cpu", torch.float64, strategy, id=f"triton-cpu-float64-{strategy}",
                 marks=pytest.mark.skipif(DEVICE != "cpu" or os.environ.get("TRITON_INTERPRET") != "1",
                                          reason="float64 triton runs under the CPU interpreter only"))
    for strategy in ("cublas", "fused")
] + [
    # The cuda backend takes float64 too (its kernels are compiled for double); its dropout keep-scale was a float.
    pytest.param("cuda", "cuda", torch.float64, "cublas", id="cuda-cuda-float64",
                 marks=pytest.mark.skipif(DEVICE != "cuda" or _dispatch.unavailable_reason("cuda", "cuda") is not None,
                                          reason="needs the cuda backend on a GPU"))
]


@pytest.mark.parametrize("backend,device,dtype,strategy",
                         [pytest.param(*p.values, None, id=p.id, marks=p.marks) for p in backend_params()
                          if p.values[2] == torch.float64] + _TRITON_INTERPRETED_FLOAT64)
def test_gradcheck_float64(backend, device, dtype, strategy, monkeypatch):
    if strategy is not None:
        monkeypatch.setenv("LOWPEFT_TRITON_GEMM", strategy)
    x, weight, bias, lora_A, lora_B = _make_inputs(5, 7, 6, 3, dtype, device, layout="3d", with_bias=True, seed=4)
    inputs = tuple(t.requires_grad_(True) for t in (x, weight, bias, lora_A, lora_B))
    seed = torch.tensor(9)
    for dropout_p in (0.3, 0.0):
        fn = lambda *a: lora_linear(*a, 0.7, dropout_p, True, backend=backend, seed=seed)  # noqa: E731
        assert torch.autograd.gradcheck(fn, inputs), dropout_p


@pytest.mark.parametrize("backend,device,dtype,strategy", _TRITON_INTERPRETED_FLOAT64)
def test_float64_kernels_match_the_torch_backend_to_float64_rounding(backend, device, dtype, strategy, monkeypatch):
    # gradcheck cannot see a float32 step inside a float64 kernel when forward and backward share it (1 / (1 - p)
    # rounded to float32 gave 2e-8 relative errors): compare with the torch backend's float64 result instead.
    monkeypatch.setenv("LOWPEFT_TRITON_GEMM", strategy)
    x, weight, bias, lora_A, lora_B = _make_inputs(37, 20, 12, 3, dtype, device, layout="2d", with_bias=True, seed=6)
    leaves = [t.requires_grad_(True) for t in (x, weight, bias, lora_A, lora_B)]
    grad_out = torch.randn(37, 12, generator=torch.Generator().manual_seed(7), dtype=dtype).to(device)
    results = {}
    for name in (backend, "torch"):
        y = lora_linear(*leaves, 0.7, 0.3, True, backend=name, seed=torch.tensor(9))
        results[name] = [y] + list(torch.autograd.grad(y, leaves, grad_out))
    for mine, theirs in zip(results[backend], results["torch"]):
        torch.testing.assert_close(mine, theirs, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_opcheck(backend, device, dtype):
    from torch.library import opcheck

    x, weight, bias, lora_A, lora_B = _make_inputs(9, 16, 12, 4, dtype, device, layout="2d", with_bias=True, seed=6)
    for t in (x, lora_A, lora_B):
        t.requires_grad_(True)
    seed = torch.tensor(21)
    opcheck(torch.ops.lowpeft.lora_linear.default, (x, weight, bias, lora_A, lora_B, 0.5, 0.2, seed, backend))
    with torch.no_grad():
        y, shrink = torch.ops.lowpeft.lora_linear(x, weight, bias, lora_A, lora_B, 0.5, 0.2, seed, backend)
    grad = torch.randn_like(y)
    opcheck(
        torch.ops.lowpeft.lora_linear_backward.default,
        (grad, x.detach(), weight, lora_A.detach(), lora_B.detach(), shrink, 0.5, 0.2, seed,
         [True, True, True, False, True], backend),
    )


def test_autocast_behaves_like_linear():
    x = torch.randn(4, 16)
    weight, bias = torch.randn(12, 16), torch.randn(12)
    lora_A, lora_B = torch.randn(4, 16), torch.randn(12, 4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = lora_linear(x, weight, bias, lora_A, lora_B, 0.5, backend="torch")
        expected_dtype = torch.nn.functional.linear(x, weight, bias).dtype
    assert y.dtype == expected_dtype == torch.bfloat16


def _valid():
    return dict(
        x=torch.randn(3, 16), weight=torch.randn(12, 16), bias=torch.randn(12),
        lora_A=torch.randn(4, 16), lora_B=torch.randn(12, 4), scaling=0.5,
    )


@pytest.mark.parametrize(
    "change,error,words",
    [
        (dict(x=torch.randn(3, 15)), ValueError, ["x", "in_features=16", "(3, 15)"]),
        (dict(x=torch.randn(3, 16, dtype=torch.float64)), TypeError, ["weight", "float64", "float32"]),
        (dict(lora_A=torch.randn(4, 15)), ValueError, ["lora_A", "[r, 16]"]),
        (dict(lora_B=torch.randn(12, 5)), ValueError, ["lora_B", "[12, 4]"]),
        (dict(lora_A=torch.randn(0, 16), lora_B=torch.randn(12, 0)), ValueError, ["lora_A", "rank"]),
        (dict(bias=torch.randn(11)), ValueError, ["bias", "[12]"]),
        (dict(x=[1.0, 2.0]), TypeError, ["x", "torch.Tensor", "list"]),
        (dict(x=torch.ones(3, 16, dtype=torch.int64)), TypeError, ["x", "floating-point", "int64"]),
        (dict(dropout_p=1.0), ValueError, ["dropout_p", "[0, 1)", "1.0"]),
        (dict(dropout_p=-0.1), ValueError, ["dropout_p", "[0, 1)"]),
        (dict(scaling=float("nan")), ValueError, ["scaling", "finite"]),
        (dict(backend="fast"), ValueError, ["backend", "'fast'"]),
    ],
)
def test_bad_input_is_a_named_error(change, error, words):
    kwargs = {**_valid(), **change}
    with pytest.raises(error) as info:
        lora_linear(**kwargs)
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


@pytest.mark.parametrize("device", ["meta"] + (["cuda"] if torch.cuda.is_available() else []))
def test_tensors_on_different_devices(device):
    kwargs = _valid()
    kwargs["lora_B"] = kwargs["lora_B"].to(device)
    with pytest.raises(ValueError, match=f"lora_B: expected a tensor on cpu .x's device., got one on {device}"):
        lora_linear(**kwargs)


def test_explicit_backend_that_cannot_run_is_an_error_not_a_fallback():
    kwargs = _valid()
    with pytest.raises(ValueError, match="backend: 'cuda' was requested"):
        lora_linear(**kwargs, backend="cuda")


@pytest.mark.parametrize("strategy", ["cublas", "fused"])
@pytest.mark.parametrize("backend,device,dtype", [p for p in backend_params() if p.values[0] == "triton"])
def test_both_triton_gemm_strategies_match_oracle(strategy, backend, device, dtype, monkeypatch):
    monkeypatch.setenv("LOWPEFT_TRITON_GEMM", strategy)

    @settings(max_examples=examples_for(backend, device, base=12))
    @given(
        tokens=st.sampled_from([1, 33, 123]), in_features=SIZES, out_features=SIZES, rank=RANKS,
        layout=st.sampled_from(["2d", "transposed"]), with_bias=st.booleans(),
        dropout_p=st.sampled_from([0.0, 0.3]), seed=st.integers(0, 2**31 - 2),
    )
    def run(**kwargs):
        _check_against_oracle(backend, device, dtype, **kwargs)

    run()


def test_unknown_triton_gemm_strategy_is_a_named_error(monkeypatch):
    pytest.importorskip("triton")
    from lowpeft.kernels.lora_linear import gemm_strategy

    monkeypatch.setenv("LOWPEFT_TRITON_GEMM", "magic")
    with pytest.raises(ValueError, match="LOWPEFT_TRITON_GEMM.*'magic'"):
        gemm_strategy()


GPU_CASES = [(123, 256, 200, 7, "transposed"), (1000, 512, 384, 16, "3d")]


@pytest.mark.skipif(DEVICE != "cuda", reason="GPU-only: every dtype at fixed shapes (few kernel compilations)")
@pytest.mark.parametrize("strategy", ["cublas", "fused"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_gpu_fixed_shapes_every_dtype(backend, device, dtype, dropout_p, strategy, monkeypatch):
    if strategy == "fused" and backend != "triton":
        pytest.skip("the GEMM strategy is a triton-backend setting")
    monkeypatch.setenv("LOWPEFT_TRITON_GEMM", strategy)
    for tokens, in_features, out_features, rank, layout in GPU_CASES:
        _check_against_oracle(backend, device, dtype, tokens, in_features, out_features, rank, layout,
                              with_bias=True, dropout_p=dropout_p, seed=tokens + rank)


@pytest.mark.parametrize("backend,device,dtype", backend_params())
@pytest.mark.parametrize("leading", [(), (5,), (2, 3), (2, 0)], ids=["1-D", "2-D", "3-D", "3-D-empty"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.3])
def test_any_leading_dimensions_add_no_graph_nodes(backend, device, dtype, leading, dropout_p):
    """x [..., in] of any rank: y and the gradients equal the flattened call's (bit for bit), dx has x's shape, y
    is not a view (FSDP2 warns about module outputs that are views) and its graph has the op's node only (the
    flattening happens inside the autograd Function, Python or C++)."""
    torch.manual_seed(11)
    rows = 1
    for size in leading:
        rows *= size
    x = torch.randn(*leading, 24, 2, device=device, dtype=dtype)[..., 0].requires_grad_(True)  # non-contiguous
    weight = torch.randn(20, 24, device=device, dtype=dtype) / 5
    lora_A = (torch.randn(6, 24, device=device, dtype=dtype) / 5).requires_grad_(True)
    lora_B = (torch.randn(20, 6, device=device, dtype=dtype) / 3).requires_grad_(True)
    grad = torch.randn(*leading, 20, device=device, dtype=dtype)
    seed = torch.tensor(5)
    y = lora_linear(x, weight, None, lora_A, lora_B, 0.5, dropout_p, backend=backend, seed=seed)
    assert y.shape == (*leading, 20) and y._base is None
    assert not any(type(node).__name__.startswith(("View", "Reshape", "UnsafeView"))
                   for node, _ in y.grad_fn.next_functions if node is not None)
    assert "View" not in type(y.grad_fn).__name__
    dx, dA, dB = torch.autograd.grad(y, [x, lora_A, lora_B], grad)
    assert dx.shape == x.shape
    x_rows = x.detach().reshape(rows, 24).requires_grad_(True)
    y_rows = lora_linear(x_rows, weight, None, lora_A, lora_B, 0.5, dropout_p, backend=backend, seed=seed)
    expected = torch.autograd.grad(y_rows, [x_rows, lora_A, lora_B], grad.reshape(rows, 20))
    torch.testing.assert_close(y.reshape(rows, 20), y_rows, rtol=0, atol=0)
    for got, want in zip((dx.reshape(rows, 24), dA, dB), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)


@pytest.mark.parametrize("dropout_p", [0.0, 0.1])
@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_functional_op_traces_under_torch_compile_with_float_attributes(dynamic, dropout_p):
    # Under torch.compile(dynamic=True) a module's float attributes (scaling, dropout_p) arrive symbolic: the op's
    # input checks must trace (comparisons, not math.isfinite) so fullgraph compilation has no graph break.
    class Layer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            gen = torch.Generator().manual_seed(9)
            self.weight = torch.nn.Parameter(torch.randn(8, 16, generator=gen), requires_grad=False)
            self.lora_A = torch.nn.Parameter(torch.randn(4, 16, generator=gen) * 0.25)
            self.lora_B = torch.nn.Parameter(torch.randn(8, 4, generator=gen) * 0.25)
            self.scaling, self.dropout_p = 1.75, dropout_p

        def forward(self, x):
            return lora_linear(x, self.weight, None, self.lora_A, self.lora_B, self.scaling, self.dropout_p,
                               training=False)

    layer = Layer().to(DEVICE)
    x = torch.randn(2, 5, 16, device=DEVICE, requires_grad=True)
    out = torch.compile(layer, backend="aot_eager", fullgraph=True, dynamic=dynamic)(x)
    out.sum().backward()
    torch.testing.assert_close(out, layer(x.detach()))
    assert x.grad is not None and layer.lora_B.grad is not None
