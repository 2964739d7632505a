# Tests of the compiled backends (lowpeft._C: "cpu" everywhere, "cuda" where CUDA exists): the raw
# lowpeft::native_* ops and the public ops on them against the float64 oracle (tests/tolerance.py's rule),
# agreement with the torch backend under the same dropout seed, opcheck on every native op, gradcheck in
# float64, empty batches, non-contiguous inputs, NaN propagation, determinism, 64-bit offsets (GPU) and named
# errors for bad input. In CI (CI=true) the extension must load: its absence fails instead of skipping.
import math
import os
import subprocess
import sys
import textwrap

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lowpeft import _extension, reference
from lowpeft.ops import _dispatch
from lowpeft.ops.lora_linear import lora_linear
from tests.tolerance import assert_matches_oracle

IN_CI = os.environ.get("CI") == "true"
EXTENSION_ERROR = _extension.unavailable_reason()
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
DTYPES = {
    "cpu": (torch.float64, torch.float32, torch.bfloat16),
    "cuda": (torch.float32, torch.float16, torch.bfloat16),
}
ACTIVATIONS = reference.ACTIVATIONS


def _skip_unless_backend(device):
    if EXTENSION_ERROR is not None and IN_CI:
        pytest.fail(f"CI requires the compiled extension: {EXTENSION_ERROR}")
    reason = _dispatch.unavailable_reason(device, device)
    if reason is not None:
        pytest.skip(f"backend {device} unavailable: {reason}")


def _params():
    return [pytest.param(device, dtype, id=f"{device}-{str(dtype)[6:]}") for device in DEVICES for dtype in DTYPES[device]]


def test_extension_loads_and_reports_its_cuda_sources():
    if EXTENSION_ERROR is not None:
        if IN_CI:
            pytest.fail(f"CI requires the compiled extension: {EXTENSION_ERROR}")
        pytest.skip(EXTENSION_ERROR)
    module = _extension.load()
    assert isinstance(module.WITH_CUDA, bool)
    if torch.cuda.is_available() and torch.version.cuda is not None:
        assert module.WITH_CUDA, "a CUDA torch with nvcc should build the CUDA sources"
    assert _dispatch.unavailable_reason("cpu", "cpu") is None


def _poison_allocator(device):
    """Leave NaN in freshly freed memory so that an output element a kernel forgets to write shows up."""
    block = torch.full((1 << 20,), float("nan"), device=device)
    del block


def _rand(gen, *shape, dtype, device, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)


def _layout(gen, tokens, cols, layout, dtype, device):
    if layout == "transposed":
        return _rand(gen, cols, tokens, dtype=dtype, device=device).t()
    if layout == "sliced":
        return _rand(gen, tokens, cols + 5, dtype=dtype, device=device)[:, 2 : 2 + cols]
    return _rand(gen, tokens, cols, dtype=dtype, device=device)


# ----------------------------------------------------------------------------------------------------
# LoRA
# ----------------------------------------------------------------------------------------------------
def _lora_inputs(tokens, in_features, out_features, rank, dtype, device, layout, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    x = _layout(gen, tokens, in_features, layout, dtype, device)
    weight = _rand(gen, out_features, in_features, dtype=dtype, device=device, scale=in_features**-0.5)
    bias = _rand(gen, out_features, dtype=dtype, device=device) if with_bias else None
    lora_A = _rand(gen, rank, in_features, dtype=dtype, device=device, scale=in_features**-0.5)
    lora_B = _rand(gen, out_features, rank, dtype=dtype, device=device, scale=rank**-0.5)
    grad_out = _rand(gen, tokens, out_features, dtype=dtype, device=device)
    return x, weight, bias, lora_A, lora_B, grad_out


def _lora_oracle(cast, x, weight, bias, lora_A, lora_B, grad_out, scaling, mask, p):
    x, weight, lora_A, lora_B, grad_out = (cast(t) for t in (x, weight, lora_A, lora_B, grad_out))
    bias = None if bias is None else cast(bias)
    dropped = x if mask is None else x * mask.to(x.dtype) / (1.0 - p)
    y = reference.lora_linear(x, weight, bias, lora_A, lora_B, scaling, mask, p)
    return (y, dropped @ lora_A.t()) + tuple(reference.lora_linear_backward(grad_out, x, weight, lora_A, lora_B, scaling, mask, p))


def _check_raw_lora(device, dtype, tokens, in_features, out_features, rank, layout, with_bias, dropout_p, seed):
    x, weight, bias, lora_A, lora_B, grad_out = _lora_inputs(
        tokens, in_features, out_features, rank, dtype, device, layout, with_bias, seed % 1000
    )
    scaling = 1.5 / rank
    _poison_allocator(device)
    y, shrink = torch.ops.lowpeft.native_lora_linear_fwd(x, weight, bias, lora_A, lora_B, scaling, dropout_p, seed)
    assert shrink.dtype == (torch.promote_types(dtype, torch.float32) if dropout_p > 0 else dtype)
    _poison_allocator(device)
    grads = torch.ops.lowpeft.native_lora_linear_bwd(
        grad_out, x, weight, lora_A, lora_B, shrink, scaling, dropout_p, seed, [True] * 5
    )
    mask = reference.dropout_keep_mask(seed, tokens, in_features, dropout_p, device=device) if dropout_p > 0 else None
    ref64 = _lora_oracle(lambda t: t.double(), x, weight, bias, lora_A, lora_B, grad_out, scaling, mask, dropout_p)
    same = _lora_oracle(lambda t: t, x, weight, bias, lora_A, lora_B, grad_out, scaling, mask, dropout_p)
    names = ("y", "shrink", "dx", "d_lora_A", "d_lora_B", "d_weight", "d_bias")
    for name, ours, s, r in zip(names, (y, shrink) + tuple(grads), same, ref64):
        assert_matches_oracle(ours, s, r, name=f"{device}/{dtype}/{name}")


@pytest.mark.parametrize("device,dtype", _params())
def test_raw_lora_ops_match_oracle(device, dtype):
    _skip_unless_backend(device)

    @settings(max_examples=20)
    @given(
        tokens=st.sampled_from([0, 1, 7, 33, 123]), in_features=st.sampled_from([1, 7, 16, 64, 123]),
        out_features=st.sampled_from([1, 7, 33, 64]), rank=st.sampled_from([1, 3, 16, 17, 40]),
        layout=st.sampled_from(["2d", "transposed", "sliced"]), with_bias=st.booleans(),
        dropout_p=st.sampled_from([0.0, 0.1, 0.5]), seed=st.integers(0, 2**40),
    )
    def run(**kwargs):
        _check_raw_lora(device, dtype, **kwargs)

    run()


@pytest.mark.parametrize("device,dtype", _params())
@pytest.mark.parametrize("dropout_p", [0.0, 0.25])
def test_lora_backend_agrees_with_torch_backend_under_the_same_seed(device, dtype, dropout_p):
    _skip_unless_backend(device)
    x, weight, bias, lora_A, lora_B, _ = _lora_inputs(2, 123, 33, 8, dtype, device, "2d", True, 0)
    x = _rand(torch.Generator().manual_seed(1), 2, 57, 123, dtype=dtype, device=device)
    seed = torch.tensor(4242)
    outs = {}
    for backend in (device, "torch"):
        leaves = [t.detach().clone().requires_grad_(True) for t in (x, weight, bias, lora_A, lora_B)]
        y = lora_linear(*leaves, 0.75, dropout_p, True, backend=backend, seed=seed)
        y.backward(torch.ones_like(y))
        outs[backend] = [y] + [t.grad for t in leaves]
    mask = reference.dropout_keep_mask(4242, 114, 123, dropout_p, device=device) if dropout_p > 0 else None
    x64 = x.reshape(-1, 123).double()
    ref_y = reference.lora_linear(x64, weight.double(), bias.double(), lora_A.double(), lora_B.double(), 0.75, mask, dropout_p)
    dx, dA, dB, dW, db = reference.lora_linear_backward(
        torch.ones_like(ref_y), x64, weight.double(), lora_A.double(), lora_B.double(), 0.75, mask, dropout_p
    )
    for name, ours, theirs, ref in zip(("y", "dx", "dW", "db", "dA", "dB"), outs[device], outs["torch"],
                                       (ref_y, dx, dW, db, dA, dB)):
        assert_matches_oracle(ours.reshape(ref.shape), theirs.reshape(ref.shape), ref, name=f"{device}-vs-torch/{name}")


_MASK_SCRIPT = textwrap.dedent("""
    import torch
    from lowpeft import _extension, reference
    _extension.load()
    T, K, p, seed = 5, 150, 0.3, 12345  # 150 columns: full AVX-512 (64) and AVX2 (32) steps plus a ragged tail
    eye = torch.eye(K, dtype=torch.float64)
    _, shrink = torch.ops.lowpeft.native_lora_linear_fwd(
        torch.ones(T, K, dtype=torch.float64), torch.zeros(K, K, dtype=torch.float64), None, eye, eye, 1.0, p, seed)
    expected = reference.dropout_keep_mask(seed, T, K, p)
    wrong = ((shrink != 0) ^ expected).nonzero().tolist()
    assert not wrong, f"mask differs at (row, col) {wrong[:8]}"
""")


@pytest.mark.parametrize("isa", ["widest", "avx2", "scalar"])
def test_cpu_dropout_mask_is_the_reference_mask_on_every_instruction_set(isa):
    """The cpu backend's Philox row generator (AVX-512, AVX2 with its 4 x 8 transpose, scalar) draws exactly
    reference.dropout_keep_mask; each variant in its own process ($LOWPEFT_CPU_ISA is read once)."""
    _skip_unless_backend("cpu")
    env = dict(os.environ)
    if isa != "widest":
        env["LOWPEFT_CPU_ISA"] = isa
    run = subprocess.run([sys.executable, "-c", _MASK_SCRIPT], env=env, capture_output=True, text=True, timeout=300,
                         cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert run.returncode == 0, run.stderr[-2000:]


@pytest.mark.parametrize("device", DEVICES)
def test_lora_backward_is_deterministic(device):
    _skip_unless_backend(device)
    x, weight, _, lora_A, lora_B, grad_out = _lora_inputs(1000, 64, 48, 16, torch.float32, device, "2d", False, 3)
    y, shrink = torch.ops.lowpeft.native_lora_linear_fwd(x, weight, None, lora_A, lora_B, 0.5, 0.2, 77)
    first = torch.ops.lowpeft.native_lora_linear_bwd(grad_out, x, weight, lora_A, lora_B, shrink, 0.5, 0.2, 77, [True] * 5)
    again = torch.ops.lowpeft.native_lora_linear_bwd(grad_out, x, weight, lora_A, lora_B, shrink, 0.5, 0.2, 77, [True] * 5)
    for a, b in zip(first, again):
        assert torch.equal(a, b)


@pytest.mark.parametrize("device", DEVICES)
def test_lora_unneeded_gradients_are_empty(device):
    _skip_unless_backend(device)
    x, weight, bias, lora_A, lora_B, grad_out = _lora_inputs(5, 16, 12, 4, torch.float32, device, "2d", True, 2)
    _, shrink = torch.ops.lowpeft.native_lora_linear_fwd(x, weight, bias, lora_A, lora_B, 0.5, 0.0, 1)
    needs = [False, True, False, False, True]
    grads = torch.ops.lowpeft.native_lora_linear_bwd(grad_out, x, weight, lora_A, lora_B, shrink, 0.5, 0.0, 1, needs)
    assert [g.numel() > 0 for g in grads] == needs


@pytest.mark.parametrize("device", DEVICES)
def test_lora_nan_propagates_like_the_oracle(device):
    _skip_unless_backend(device)
    x, weight, bias, lora_A, lora_B, _ = _lora_inputs(6, 16, 12, 4, torch.float32, device, "2d", True, 5)
    x[2, 3] = float("nan")
    y, shrink = torch.ops.lowpeft.native_lora_linear_fwd(x, weight, bias, lora_A, lora_B, 0.5, 0.3, 9)
    mask = reference.dropout_keep_mask(9, 6, 16, 0.3, device=device)
    ref = reference.lora_linear(x.double(), weight.double(), bias.double(), lora_A.double(), lora_B.double(), 0.5, mask, 0.3)
    assert torch.equal(torch.isnan(y), torch.isnan(ref))


def test_gradcheck_float64_cpu():
    _skip_unless_backend("cpu")
    x, weight, bias, lora_A, lora_B, _ = _lora_inputs(6, 7, 5, 3, torch.float64, "cpu", "transposed", True, 4)
    inputs = tuple(t.detach().requires_grad_(True) for t in (x, weight, bias, lora_A, lora_B))
    for p in (0.0, 0.3):
        fn = lambda *a: lora_linear(*a, 0.7, p, True, backend="cpu", seed=torch.tensor(2**33 + 5))
        assert torch.autograd.gradcheck(fn, inputs)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_native_lora_ops(device):
    _skip_unless_backend(device)
    from torch.library import opcheck

    dtype = torch.float64 if device == "cpu" else torch.float32
    for with_bias, p in ((True, 0.2), (False, 0.0)):
        x, weight, bias, lora_A, lora_B, grad_out = _lora_inputs(9, 16, 12, 5, dtype, device, "2d", with_bias, 6)
        opcheck(torch.ops.lowpeft.native_lora_linear_fwd.default, (x, weight, bias, lora_A, lora_B, 0.5, p, 21))
        _, shrink = torch.ops.lowpeft.native_lora_linear_fwd(x, weight, bias, lora_A, lora_B, 0.5, p, 21)
        for needs in ([True] * 5, [True, False, True, False, False]):
            opcheck(
                torch.ops.lowpeft.native_lora_linear_bwd.default,
                (grad_out, x, weight, lora_A, lora_B, shrink, 0.5, p, 21, needs),
            )
        leaves = [t.requires_grad_(True) if t is not None else None for t in (x, weight, bias, lora_A, lora_B)]
        opcheck(torch.ops.lowpeft.native_lora_linear.default, (*leaves, 0.5, p, 21))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("frozen_base", [True, False])
def test_native_autograd_op_gradients_match_the_backward_op(device, frozen_base):
    """lowpeft::native_lora_linear (C++ autograd, what the public op calls on the compiled backends) gives the
    gradients of native_lora_linear_bwd for exactly the inputs that require grad, with and without a bias."""
    _skip_unless_backend(device)
    dtype = torch.float64 if device == "cpu" else torch.float32
    for with_bias in (True, False):
        x, weight, bias, lora_A, lora_B, grad_out = _lora_inputs(9, 16, 12, 5, dtype, device, "2d", with_bias, 6)
        leaves = [x, weight, bias, lora_A, lora_B]
        trainable = [0, 3, 4] if frozen_base else [0, 1, 2, 3, 4]
        for index in trainable:
            if leaves[index] is not None:
                leaves[index].requires_grad_(True)
        y = torch.ops.lowpeft.native_lora_linear(*leaves, 0.5, 0.2, 21)
        assert y.grad_fn is not None and "LoraLinearFunction" in type(y.grad_fn).__name__ + y.grad_fn.name()
        wanted = [t for t in leaves if t is not None and t.requires_grad]
        grads = torch.autograd.grad(y, wanted, grad_out)
        _, shrink = torch.ops.lowpeft.native_lora_linear_fwd(x, weight, bias, lora_A, lora_B, 0.5, 0.2, 21)
        needs = [True, True, True, not frozen_base, with_bias and not frozen_base]
        dx, dA, dB, dW, db = torch.ops.lowpeft.native_lora_linear_bwd(grad_out, x, weight, lora_A, lora_B, shrink,
                                                                      0.5, 0.2, 21, needs)
        expected = {0: dx, 1: dW, 2: db, 3: dA, 4: dB}
        for got, index in zip(grads, [i for i in range(5) if leaves[i] is not None and leaves[i].requires_grad]):
            torch.testing.assert_close(got, expected[index], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("leading", [(), (3,), (2, 3), (2, 0)], ids=["1-D", "2-D", "3-D", "3-D-empty"])
@pytest.mark.parametrize("dropout_p", [0.0, 0.2])
def test_native_autograd_op_takes_any_leading_dimensions(device, leading, dropout_p):
    """lowpeft::native_lora_linear flattens x [..., in] itself (the public op hands it N-D inputs as they come):
    y and every gradient equal the 2-D call's, dx has x's shape, y is not a view, and the only node in y's graph
    is the op's own (no reshape nodes), also for a non-contiguous x."""
    _skip_unless_backend(device)
    dtype = torch.float64 if device == "cpu" else torch.float32
    x, weight, bias, lora_A, lora_B, _ = _lora_inputs(6, 16, 12, 5, dtype, device, "2d", True, 3)
    rows = math.prod(leading) if leading else 1
    x_nd = torch.randn(*leading, 16, 2, dtype=dtype, device=device)[..., 0]  # non-contiguous
    grad_nd = torch.randn(*leading, 12, dtype=dtype, device=device)
    leaves = [lora_A.requires_grad_(True), lora_B.requires_grad_(True)]
    x_nd.requires_grad_(True)
    y = torch.ops.lowpeft.native_lora_linear(x_nd, weight, bias, *leaves, 0.5, dropout_p, 21)
    assert y.shape == (*leading, 12) and y._base is None
    assert "LoraLinearFunction" in type(y.grad_fn).__name__ + y.grad_fn.name()
    dx, dA, dB = torch.autograd.grad(y, [x_nd] + leaves, grad_nd)
    x_rows = x_nd.detach().reshape(rows, 16).requires_grad_(True)
    y_rows = torch.ops.lowpeft.native_lora_linear(x_rows, weight, bias, *leaves, 0.5, dropout_p, 21)
    expected = torch.autograd.grad(y_rows, [x_rows] + leaves, grad_nd.reshape(rows, 12))
    torch.testing.assert_close(y, y_rows.reshape(*leading, 12), rtol=0, atol=0)
    assert dx.shape == x_nd.shape
    for got, want in zip((dx.reshape(rows, 16), dA, dB), expected):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
    with torch.no_grad():
        torch.testing.assert_close(torch.ops.lowpeft.native_lora_linear(x_nd, weight, bias, *leaves, 0.5, dropout_p, 21),
                                   y, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU with > 9 GB free")
def test_cuda_lora_64_bit_offsets():
    _skip_unless_backend("cuda")
    in_features, rank = 4096, 4
    tokens = 2**31 // in_features + 3  # T·K > 2^31
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(tokens, in_features, device="cuda", dtype=torch.bfloat16, generator=gen)
    weight = torch.randn(8, in_features, device="cuda", dtype=torch.bfloat16, generator=gen) / 64
    lora_A = torch.randn(rank, in_features, device="cuda", dtype=torch.bfloat16, generator=gen) / 64
    lora_B = torch.randn(8, rank, device="cuda", dtype=torch.bfloat16, generator=gen)
    y, shrink = torch.ops.lowpeft.native_lora_linear_fwd(x, weight, None, lora_A, lora_B, 1.0, 0.5, 3)
    tail = torch.arange(tokens - 4, tokens, device="cuda")
    cols = torch.arange(in_features, device="cuda")
    keep = reference.dropout_draws(3, tail.unsqueeze(1).expand(-1, in_features), cols.unsqueeze(0).expand(4, -1))
    mask = keep >= reference.dropout_threshold(0.5)
    x_tail = x[-4:].double()
    ref_shrink = (x_tail * mask / 0.5) @ lora_A.double().t()
    same_shrink = (x[-4:] * mask.to(x.dtype) / 0.5) @ lora_A.t()
    assert_matches_oracle(shrink[-4:], same_shrink, ref_shrink, name="shrink tail")
    del x, y


# ----------------------------------------------------------------------------------------------------
# Bottleneck adapter
# ----------------------------------------------------------------------------------------------------
def _adapter_inputs(tokens, dim, bottleneck, dtype, device, layout, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    h = _layout(gen, tokens, dim, layout, dtype, device)
    down_weight = _rand(gen, bottleneck, dim, dtype=dtype, device=device, scale=dim**-0.5)
    down_bias = _rand(gen, bottleneck, dtype=dtype, device=device, scale=0.5) if with_bias else None
    up_weight = _rand(gen, dim, bottleneck, dtype=dtype, device=device, scale=bottleneck**-0.5)
    up_bias = _rand(gen, dim, dtype=dtype, device=device, scale=0.5) if with_bias else None
    grad_out = _rand(gen, tokens, dim, dtype=dtype, device=device)
    return h, down_weight, down_bias, up_weight, up_bias, grad_out


def _adapter_oracle(cast, h, down_weight, down_bias, up_weight, up_bias, grad_out, activation, scale):
    h, down_weight, up_weight, grad_out = (cast(t) for t in (h, down_weight, up_weight, grad_out))
    down_bias, up_bias = (None if t is None else cast(t) for t in (down_bias, up_bias))
    z = h @ down_weight.t() + (0 if down_bias is None else down_bias)
    out = reference.bottleneck_adapter(h, down_weight, down_bias, up_weight, up_bias, activation, scale)
    grads = reference.bottleneck_adapter_backward(grad_out, h, down_weight, down_bias, up_weight, activation, scale)
    return (out, z) + tuple(grads)


def _check_raw_adapter(device, dtype, tokens, dim, bottleneck, layout, with_bias, activation, scale, seed):
    h, down_weight, down_bias, up_weight, up_bias, grad_out = _adapter_inputs(
        tokens, dim, bottleneck, dtype, device, layout, with_bias, seed
    )
    _poison_allocator(device)
    out, z = torch.ops.lowpeft.native_bottleneck_adapter_fwd(h, down_weight, down_bias, up_weight, up_bias, activation, scale)
    assert z.dtype == torch.promote_types(dtype, torch.float32)
    _poison_allocator(device)
    needs = [True, True, with_bias, True, with_bias]
    grads = torch.ops.lowpeft.native_bottleneck_adapter_bwd(
        grad_out, h, down_weight, down_bias, up_weight, z, activation, scale, needs
    )
    args = (h, down_weight, down_bias, up_weight, up_bias, grad_out, activation, scale)
    ref64 = _adapter_oracle(lambda t: t.double(), *args)
    same = _adapter_oracle(lambda t: t, *args)
    names = ("out", "z", "dh", "d_down_weight", "d_down_bias", "d_up_weight", "d_up_bias")
    for name, ours, s, r, need in zip(names, (out, z) + tuple(grads), same, ref64, [True, True] + needs):
        if need:
            assert_matches_oracle(ours, s, r, name=f"{device}/{dtype}/{activation}/{name}")
        else:
            assert ours.numel() == 0


@pytest.mark.parametrize("device,dtype", _params())
def test_raw_adapter_ops_match_oracle(device, dtype):
    _skip_unless_backend(device)

    @settings(max_examples=20)
    @given(
        tokens=st.sampled_from([0, 1, 7, 33, 123]), dim=st.sampled_from([1, 7, 16, 64, 123]),
        bottleneck=st.sampled_from([1, 3, 16, 64, 65]), layout=st.sampled_from(["2d", "transposed", "sliced"]),
        with_bias=st.booleans(), activation=st.sampled_from(ACTIVATIONS), scale=st.sampled_from([1.0, 0.3, -2.0]),
        seed=st.integers(0, 1000),
    )
    def run(**kwargs):
        _check_raw_adapter(device, dtype, **kwargs)

    run()


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck_native_adapter_ops(device):
    _skip_unless_backend(device)
    from torch.library import opcheck

    dtype = torch.float64 if device == "cpu" else torch.float32
    for with_bias, activation in ((True, "gelu"), (False, "silu")):
        h, dw, db, uw, ub, grad_out = _adapter_inputs(9, 16, 5, dtype, device, "2d", with_bias, 6)
        opcheck(torch.ops.lowpeft.native_bottleneck_adapter_fwd.default, (h, dw, db, uw, ub, activation, 0.5))
        _, z = torch.ops.lowpeft.native_bottleneck_adapter_fwd(h, dw, db, uw, ub, activation, 0.5)
        for needs in ([True, True, with_bias, True, with_bias], [True, False, False, True, False]):
            opcheck(
                torch.ops.lowpeft.native_bottleneck_adapter_bwd.default,
                (grad_out, h, dw, db, uw, z, activation, 0.5, needs),
            )
        leaves = [t.requires_grad_(True) if t is not None else None for t in (h, dw, db, uw, ub)]
        opcheck(torch.ops.lowpeft.native_bottleneck_adapter.default, (*leaves, activation, 0.5))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("trainable", ["all", "adapter_only_weights", "input_only"])
def test_native_adapter_autograd_op_gradients_match_the_backward_op(device, trainable):
    """lowpeft::native_bottleneck_adapter (C++ autograd, what the public op calls on the compiled backends) gives
    the gradients of native_bottleneck_adapter_bwd for exactly the inputs that require grad, biases on and off."""
    _skip_unless_backend(device)
    dtype = torch.float64 if device == "cpu" else torch.float32
    wanted_index = {"all": [0, 1, 2, 3, 4], "adapter_only_weights": [1, 3], "input_only": [0]}[trainable]
    for with_bias in (True, False):
        h, dw, db, uw, ub, grad_out = _adapter_inputs(9, 16, 5, dtype, device, "2d", with_bias, 6)
        leaves = [h, dw, db, uw, ub]
        for index in wanted_index:
            if leaves[index] is not None:
                leaves[index].requires_grad_(True)
        out = torch.ops.lowpeft.native_bottleneck_adapter(*leaves, "gelu_tanh", 0.5)
        assert "BottleneckAdapterFunction" in out.grad_fn.name()
        order = [i for i in range(5) if leaves[i] is not None and leaves[i].requires_grad]
        grads = torch.autograd.grad(out, [leaves[i] for i in order], grad_out)
        _, z = torch.ops.lowpeft.native_bottleneck_adapter_fwd(h, dw, db, uw, ub, "gelu_tanh", 0.5)
        needs = [i in order for i in range(5)]
        expected = torch.ops.lowpeft.native_bottleneck_adapter_bwd(grad_out, h, dw, db, uw, z, "gelu_tanh", 0.5, needs)
        for got, index in zip(grads, order):
            torch.testing.assert_close(got, expected[index], rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_adapter_public_op_on_native_backend_matches_torch_backend(device):
    _skip_unless_backend(device)
    from lowpeft.ops.bottleneck_adapter import bottleneck_adapter

    h, dw, db, uw, ub, _ = _adapter_inputs(2 * 19, 33, 7, torch.float32, device, "2d", True, 8)
    h = h.reshape(2, 19, 33)
    outs = {}
    for backend in (device, "torch"):
        leaves = [t.detach().clone().requires_grad_(True) for t in (h, dw, db, uw, ub)]
        out = bottleneck_adapter(*leaves, "gelu_tanh", 0.5, backend=backend)
        out.backward(torch.ones_like(out))
        outs[backend] = [out] + [t.grad for t in leaves]
    h64 = h.reshape(-1, 33).double()
    ref = reference.bottleneck_adapter(h64, dw.double(), db.double(), uw.double(), ub.double(), "gelu_tanh", 0.5)
    grads = reference.bottleneck_adapter_backward(torch.ones_like(ref), h64, dw.double(), db.double(), uw.double(), "gelu_tanh", 0.5)
    for name, ours, theirs, r in zip(("out", "dh", "ddw", "ddb", "duw", "dub"), outs[device], outs["torch"], (ref,) + tuple(grads)):
        assert_matches_oracle(ours.reshape(r.shape), theirs.reshape(r.shape), r, name=f"{device}-vs-torch/{name}")


def test_gradcheck_adapter_float64_cpu():
    _skip_unless_backend("cpu")
    from lowpeft.ops.bottleneck_adapter import bottleneck_adapter

    h, dw, db, uw, ub, _ = _adapter_inputs(5, 6, 3, torch.float64, "cpu", "sliced", True, 4)
    inputs = tuple(t.detach().requires_grad_(True) for t in (h, dw, db, uw, ub))
    for activation in ACTIVATIONS:
        fn = lambda *a: bottleneck_adapter(*a, activation, 0.7, backend="cpu")
        assert torch.autograd.gradcheck(fn, inputs)


# ----------------------------------------------------------------------------------------------------
# Bad input to the raw ops: a named error, never a wrong answer
# ----------------------------------------------------------------------------------------------------
def _lora_args(**change):
    args = dict(x=torch.randn(3, 16), weight=torch.randn(12, 16), bias=torch.randn(12), lora_A=torch.randn(4, 16),
                lora_B=torch.randn(12, 4), scaling=0.5, dropout_p=0.1, seed=1)
    args.update(change)
    return args


@pytest.mark.parametrize(
    "change,error,words",
    [
        (dict(x=torch.randn(3, 4, 16)), ValueError, ["x", "2-D", "[3, 4, 16]"]),
        (dict(x=torch.randn(3, 15)), ValueError, ["weight", "16"]),
        (dict(weight=torch.randn(12, 16, dtype=torch.float64)), TypeError, ["weight", "Float", "Double"]),
        (dict(x=torch.ones(3, 16, dtype=torch.int32)), TypeError, ["x", "float32", "Int"]),
        (dict(lora_A=torch.randn(4, 15)), ValueError, ["lora_A", "[r, in_features]"]),
        (dict(lora_A=torch.randn(0, 16)), ValueError, ["lora_A", "r >= 1"]),
        (dict(lora_B=torch.randn(12, 5)), ValueError, ["lora_B", "[out_features, r]"]),
        (dict(bias=torch.randn(11)), ValueError, ["bias", "[out_features]"]),
        (dict(dropout_p=1.0), ValueError, ["dropout_p", "[0, 1)"]),
        (dict(scaling=float("inf")), ValueError, ["scaling", "finite"]),
    ],
)
def test_raw_lora_bad_input_is_a_named_error(change, error, words):
    _skip_unless_backend("cpu")
    args = _lora_args(**change)
    with pytest.raises(error) as info:
        torch.ops.lowpeft.native_lora_linear_fwd(*args.values())
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_raw_lora_backward_bad_input_is_a_named_error():
    _skip_unless_backend("cpu")
    a = _lora_args()
    y, shrink = torch.ops.lowpeft.native_lora_linear_fwd(*a.values())
    base = (y, a["x"], a["weight"], a["lora_A"], a["lora_B"], shrink, 0.5, 0.1, 1)
    with pytest.raises(ValueError, match="needs: expected 5"):
        torch.ops.lowpeft.native_lora_linear_bwd(*base, [True] * 4)
    with pytest.raises(TypeError, match="shrink: expected dtype Float"):
        torch.ops.lowpeft.native_lora_linear_bwd(*base[:5], shrink.double(), *base[6:], [True] * 5)
    with pytest.raises(ValueError, match="grad_out"):
        torch.ops.lowpeft.native_lora_linear_bwd(y[:, :5], *base[1:], [True] * 5)


def test_raw_adapter_bad_input_is_a_named_error():
    _skip_unless_backend("cpu")
    h, dw, db, uw, ub, g = _adapter_inputs(4, 16, 3, torch.float32, "cpu", "2d", True, 1)
    with pytest.raises(ValueError, match="activation: expected one of .* got 'tanh'"):
        torch.ops.lowpeft.native_bottleneck_adapter_fwd(h, dw, db, uw, ub, "tanh", 1.0)
    with pytest.raises(ValueError, match="up_weight"):
        torch.ops.lowpeft.native_bottleneck_adapter_fwd(h, dw, db, uw.t(), ub, "gelu", 1.0)
    with pytest.raises(ValueError, match="down_bias"):
        torch.ops.lowpeft.native_bottleneck_adapter_fwd(h, dw, ub, uw, ub, "gelu", 1.0)
    with pytest.raises(TypeError, match="up_bias: expected dtype Float"):
        torch.ops.lowpeft.native_bottleneck_adapter_fwd(h, dw, db, uw, ub.double(), "gelu", 1.0)
    _, z = torch.ops.lowpeft.native_bottleneck_adapter_fwd(h, dw, db, uw, ub, "gelu", 1.0)
    with pytest.raises(ValueError, match="z: expected shape"):
        torch.ops.lowpeft.native_bottleneck_adapter_bwd(g, h, dw, db, uw, z[:, :2], "gelu", 1.0, [True] * 5)
