# The int8 frozen base: quantize_int8 / dequantize_int8, the int8_lora_linear op on every backend against the
# float64 oracle (lowpeft.reference.int8_lora_linear, the dequantized weight in LoRA's oracle), what autograd saves,
# gradcheck, opcheck, bad input; the Int8Linear / Int8LoRALinear modules; quantize_base with apply, training,
# save / load, merge and merge_and_unload on a tiny Llama.
import tempfile

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lowpeft
from lowpeft import reference
from lowpeft.nn.int8_linear import Int8AdapterLinear, Int8Linear, Int8LoRALinear
from lowpeft.ops import dequantize_int8, int8_lora_linear, quantize_int8
from tests.backends_under_test import DEVICE, backend_params, examples_for
from tests.tolerance import assert_matches_oracle

SIZES = st.sampled_from([1, 7, 16, 33, 64])


def _int8_inputs(tokens, in_features, out_features, rank, dtype, device, *, with_bias, seed, leading=()):
    gen = torch.Generator().manual_seed(seed)

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(device=device, dtype=dtype)

    qweight, scale = quantize_int8(torch.randn(out_features, in_features, generator=gen, dtype=torch.float64)
                                   * in_features**-0.5)
    scale = scale.to(torch.float64 if dtype == torch.float64 else torch.float32)
    x = rand(*leading, tokens, in_features)
    bias = rand(out_features) if with_bias else None
    lora_A = rand(rank, in_features, scale=in_features**-0.5)
    lora_B = rand(out_features, rank, scale=rank**-0.5)
    return x, qweight.to(device), scale.to(device), bias, lora_A, lora_B


# ------------------------------------------------------------------------------------------------------
# the weight format
# ------------------------------------------------------------------------------------------------------
@settings(max_examples=30, deadline=None)
@given(rows=st.integers(0, 9), cols=st.integers(0, 40), magnitude=st.sampled_from([1e-6, 1.0, 1e4]),
       dtype=st.sampled_from([torch.float32, torch.float64, torch.bfloat16]), seed=st.integers(0, 2**31 - 1))
def test_quantize_round_trip_is_within_half_a_step(rows, cols, magnitude, dtype, seed):
    weight = (torch.randn(rows, cols, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
              * magnitude).to(dtype)
    if rows:
        weight[0] = 0.0  # an all-zero row
    qweight, scale = quantize_int8(weight)
    assert qweight.dtype == torch.int8 and qweight.shape == weight.shape and scale.shape == (rows,)
    assert scale.dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert int(qweight.abs().max()) <= 127 if qweight.numel() else True
    error = (reference.dequantize_int8(qweight, scale) - weight.double()).abs()
    assert (error <= scale.double()[:, None] * (0.5 + 1e-6)).all()
    if rows:
        assert scale[0] == 1 and not qweight[0].any()


@pytest.mark.parametrize("weight,error,words", [
    (torch.tensor([[1.0, float("nan")]]), ValueError, "finite"),
    (torch.ones(2, 3, dtype=torch.int32), TypeError, "floating"),
    (torch.ones(3), ValueError, "2-D"),
    ([[1.0]], TypeError, "torch.Tensor"),
])
def test_quantize_bad_input_is_a_named_error(weight, error, words):
    with pytest.raises(error, match=words):
        quantize_int8(weight)


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_dequantize_matches_the_oracle(backend, device, dtype):
    qweight, scale = quantize_int8(torch.randn(37, 53, generator=torch.Generator().manual_seed(1)))
    qweight, scale = qweight.to(device), scale.to(device)
    ours = dequantize_int8(qweight, scale, dtype, backend=backend)
    expected = reference.dequantize_int8(qweight, scale, dtype)
    if backend == "triton" and device == "cpu" and dtype == torch.bfloat16:
        pytest.skip("the Triton interpreter's float32 -> bfloat16 conversion truncates (checked on the GPU)")
    # q · scale in float32, then rounded to dtype: at most one ulp of dtype from the float64 product rounded once.
    torch.testing.assert_close(ours, expected, rtol=torch.finfo(dtype).eps, atol=0)
    assert ours.dtype == dtype and ours.is_contiguous()
    view = dequantize_int8(qweight.t().contiguous().t(), scale, dtype, backend=backend)  # column-major qweight
    torch.testing.assert_close(view, ours, rtol=0, atol=0)


@pytest.mark.parametrize("args,error,words", [
    ((torch.ones(2, 3), torch.ones(2)), TypeError, "qweight: expected an int8"),
    ((torch.ones(2, 3, dtype=torch.int8), torch.ones(3)), ValueError, r"weight_scale: expected shape \[2\]"),
    ((torch.ones(2, 3, dtype=torch.int8), torch.ones(2, dtype=torch.int32)), TypeError, "weight_scale: expected a f"),
    ((torch.ones(3, dtype=torch.int8), torch.ones(3)), ValueError, "qweight: expected a 2-D"),
    ((torch.ones(2, 3, dtype=torch.int8), torch.ones(2, requires_grad=True)), ValueError, "frozen"),
])
def test_dequantize_bad_input_is_a_named_error(args, error, words):
    with pytest.raises(error, match=words):
        dequantize_int8(*args)
    with pytest.raises(TypeError, match="dtype"):
        dequantize_int8(torch.ones(2, 3, dtype=torch.int8), torch.ones(2), torch.int32)


# ------------------------------------------------------------------------------------------------------
# the op
# ------------------------------------------------------------------------------------------------------
def _check_against_oracle(backend, device, dtype, tokens, in_features, out_features, rank, three_d, with_bias,
                          dropout_p, seed):
    x, qweight, scale, bias, lora_A, lora_B = _int8_inputs(tokens, in_features, out_features, rank, dtype, device,
                                                           with_bias=with_bias, seed=seed,
                                                           leading=(2,) if three_d else ())
    leaves = [x, lora_A, lora_B] + ([bias] if with_bias else [])
    for t in leaves:
        t.requires_grad_(True)
    scaling = 2.0 / rank
    y = int8_lora_linear(x, qweight, scale, bias, lora_A, lora_B, scaling, dropout_p, True, backend=backend,
                         seed=torch.tensor(seed))
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64)
    grad_out = grad_out.to(device=device, dtype=dtype)
    grads = torch.autograd.grad(y, leaves, grad_out)
    rows = x.reshape(-1, in_features).shape[0]
    mask = reference.dropout_keep_mask(seed, rows, in_features, dropout_p, device=device) if dropout_p else None

    def oracle(cast, weight_dtype):
        args = [None if t is None else cast(t.detach()) for t in (x, bias, lora_A, lora_B)]
        weight = reference.dequantize_int8(qweight, scale, weight_dtype)
        out = reference.int8_lora_linear(args[0], qweight, scale, args[1], args[2], args[3], scaling, mask, dropout_p)
        dx, dA, dB, _, db = reference.lora_linear_backward(cast(grad_out), args[0], weight, args[2], args[3],
                                                           scaling, mask, dropout_p)
        return [out, dx, dA, dB] + ([db] if with_bias else [])

    for name, ours, same, ref in zip(["y", "dx", "d_lora_A", "d_lora_B", "d_bias"], [y, *grads],
                                     oracle(lambda t: t, dtype), oracle(lambda t: t.double(), torch.float64)):
        assert_matches_oracle(ours, same, ref, name=f"{backend}/{dtype}/{name}")


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_matches_oracle(backend, device, dtype):
    @settings(max_examples=examples_for(backend, device, 20), deadline=None)
    @given(tokens=st.sampled_from([0, 1, 9, 40]), in_features=SIZES, out_features=SIZES,
           rank=st.sampled_from([1, 4, 16]), three_d=st.booleans(), with_bias=st.booleans(),
           dropout_p=st.sampled_from([0.0, 0.0, 0.3]), seed=st.integers(0, 2**31 - 2))
    def run(**kwargs):
        _check_against_oracle(backend, device, dtype, **kwargs)

    run()


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_saves_the_int8_base_not_a_float_weight(backend, device, dtype):
    # Between forward and backward the layer holds qweight (1 byte per weight), never the dequantized Ŵ.
    x, qweight, scale, bias, lora_A, lora_B = _int8_inputs(8, 24, 20, 4, dtype, device, with_bias=True, seed=2)
    for t in (x, lora_A, lora_B):
        t.requires_grad_(True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = int8_lora_linear(x, qweight, scale, bias, lora_A, lora_B, 0.5, 0.2, True, backend=backend)
    assert any(t.dtype == torch.int8 for t in saved)
    assert not [t for t in saved if t.is_floating_point() and tuple(t.shape) == tuple(qweight.shape)]
    y.sum().backward()
    assert qweight.grad is None and scale.grad is None and x.grad is not None


_FLOAT64 = [p for p in backend_params() if p.values[2] == torch.float64]
_FLOAT64 += [pytest.param("triton", "cpu", torch.float64, id="triton-cpu-float64",
                          marks=pytest.mark.skipif(DEVICE != "cpu" or not lowpeft.ops._dispatch.triton_interpreting(),
                                                   reason="float64 Triton runs under the CPU interpreter only"))]


@pytest.mark.parametrize("backend,device,dtype", _FLOAT64)
def test_gradcheck_float64(backend, device, dtype):
    x, qweight, scale, bias, lora_A, lora_B = _int8_inputs(5, 7, 6, 3, dtype, device, with_bias=True, seed=4,
                                                           leading=(2,))
    inputs = tuple(t.requires_grad_(True) for t in (x, bias, lora_A, lora_B))
    for dropout_p in (0.3, 0.0):
        def fn(x, bias, lora_A, lora_B):
            return int8_lora_linear(x, qweight, scale, bias, lora_A, lora_B, 0.7, dropout_p, True, backend=backend,
                                    seed=torch.tensor(9))

        assert torch.autograd.gradcheck(fn, inputs), dropout_p


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_opcheck(backend, device, dtype):
    from torch.library import opcheck

    x, qweight, scale, bias, lora_A, lora_B = _int8_inputs(9, 16, 12, 4, dtype, device, with_bias=True, seed=6)
    for t in (x, bias, lora_A, lora_B):
        t.requires_grad_(True)
    seed = torch.tensor(21)
    opcheck(torch.ops.lowpeft.int8_lora_linear.default,
            (x, qweight, scale, bias, lora_A, lora_B, 0.5, 0.2, seed, backend))
    with torch.no_grad():
        y, shrink = torch.ops.lowpeft.int8_lora_linear(x, qweight, scale, bias, lora_A, lora_B, 0.5, 0.2, seed,
                                                       backend)
    opcheck(torch.ops.lowpeft.int8_lora_linear_backward.default,
            (torch.randn_like(y), x.detach(), qweight, scale, lora_A.detach(), lora_B.detach(), shrink, 0.5, 0.2,
             seed, [True, True, True, False, True], backend))
    opcheck(torch.ops.lowpeft.dequantize_int8.default, (qweight, scale, dtype, backend))


_NATIVE = [p for p in backend_params() if p.values[0] in ("cpu", "cuda") and p.values[2] != torch.float64]


@pytest.mark.parametrize("backend,device,dtype", _NATIVE)
def test_native_ops_opcheck_and_match_the_python_path(backend, device, dtype):
    # The compiled backends' eager path is lowpeft::native_int8_lora_linear (its autograd in C++); the Python
    # Function (the torch.compile path, here through the torch.library op) must give the same numbers.
    from torch.library import opcheck

    x, qweight, scale, bias, lora_A, lora_B = _int8_inputs(9, 16, 12, 4, dtype, device, with_bias=True, seed=8,
                                                           leading=(3,))
    leaves = [t.requires_grad_(True) for t in (x, bias, lora_A, lora_B)]
    opcheck(torch.ops.lowpeft.native_dequantize_int8.default, (qweight, scale, dtype))
    opcheck(torch.ops.lowpeft.native_int8_lora_linear.default,
            (x, qweight, scale, bias, lora_A, lora_B, 0.5, 0.2, 17))
    grad = torch.randn(3, 9, 12, device=device, dtype=dtype)
    native = torch.ops.lowpeft.native_int8_lora_linear(x, qweight, scale, bias, lora_A, lora_B, 0.5, 0.2, 17)
    via_python = torch.ops.lowpeft.int8_lora_linear(x.reshape(27, 16), qweight, scale, bias, lora_A, lora_B, 0.5,
                                                    0.2, torch.tensor(17), backend)[0].reshape(3, 9, 12)
    torch.testing.assert_close(native, via_python, rtol=0, atol=0)
    for mine, theirs in zip(torch.autograd.grad(native, leaves, grad), torch.autograd.grad(via_python, leaves, grad)):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=0)
    with pytest.raises(TypeError, match="qweight: expected an int8 tensor"):
        torch.ops.lowpeft.native_dequantize_int8(qweight.float(), scale, dtype)
    with pytest.raises(ValueError, match=r"weight_scale: expected shape \[12\]"):
        torch.ops.lowpeft.native_dequantize_int8(qweight, scale[:5], dtype)


def _valid_call():
    x, qweight, scale, bias, lora_A, lora_B = _int8_inputs(4, 8, 6, 2, torch.float32, "cpu", with_bias=True, seed=0)
    return dict(x=x, qweight=qweight, weight_scale=scale, bias=bias, lora_A=lora_A, lora_B=lora_B, scaling=0.5)


@pytest.mark.parametrize("change,error,words", [
    (dict(qweight=torch.ones(6, 8)), TypeError, "qweight: expected an int8"),
    (dict(weight_scale=torch.ones(5)), ValueError, r"weight_scale: expected shape \[6\]"),
    (dict(weight_scale=torch.ones(6, requires_grad=True)), ValueError, "weight_scale: expected a frozen"),
    (dict(x=torch.ones(4, 9)), ValueError, "x: expected last dimension in_features=8"),
    (dict(lora_A=torch.ones(2, 8, dtype=torch.float64)), TypeError, "lora_A: expected dtype torch.float32"),
    (dict(bias=torch.ones(5)), ValueError, r"bias: expected shape \[6\]"),
    (dict(scaling=float("inf")), ValueError, "scaling: expected a finite float"),
    (dict(x=[[1.0]]), TypeError, "x: expected a torch.Tensor"),
])
def test_bad_input_is_a_named_error(change, error, words):
    call = dict(_valid_call(), **change)
    with pytest.raises(error, match=words):
        int8_lora_linear(**call)


# ------------------------------------------------------------------------------------------------------
# the modules
# ------------------------------------------------------------------------------------------------------
def test_int8_linear_computes_the_dequantized_layer():
    linear = nn.Linear(40, 24).double()
    base = Int8Linear.from_linear(linear)
    assert base.weight.dtype == torch.int8 and base.bias is linear.bias and base.source_dtype == torch.float64
    assert not base.weight.requires_grad and not base.weight_scale.requires_grad
    x = torch.randn(3, 5, 40, dtype=torch.float64)
    expected = x @ reference.dequantize_int8(base.weight, base.weight_scale).t() + linear.bias
    torch.testing.assert_close(base(x), expected)
    # Against the float layer: the quantization error only (half a step per weight).
    bound = (x.abs().sum(-1, keepdim=True) * base.weight_scale / 2).detach()
    assert ((base(x) - linear(x)).abs() <= bound + 1e-12).all()
    torch.testing.assert_close(base.to_linear()(x), base(x))


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_int8_linear_trains_through_without_keeping_a_float_weight(backend, device, dtype):
    # Layers quantize_base converted that no adapter wraps (QLoRA on q / v only): their backward needs dx, and F.linear
    # would save the dequantized weight for it; int8_linear saves the int8 one and dequantizes again.
    base = Int8Linear.from_linear(nn.Linear(24, 20, device=device, dtype=dtype), backend=backend)
    base.bias.requires_grad_(True)
    x = torch.randn(2, 5, 24, device=device, dtype=dtype, requires_grad=True)
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = base(x)
    assert not [t for t in saved if t.is_floating_point() and tuple(t.shape) == (20, 24)]
    grad = torch.randn_like(y)
    dx, d_bias = torch.autograd.grad(y, (x, base.bias), grad)

    def oracle(cast, weight_dtype):
        weight = reference.dequantize_int8(base.weight, base.weight_scale, weight_dtype)
        leaves = (cast(x.detach()).requires_grad_(True), cast(base.bias.detach()).requires_grad_(True))
        return torch.autograd.grad(leaves[0] @ weight.t() + leaves[1], leaves, cast(grad))

    for name, ours, same, ref in zip(("dx", "d_bias"), (dx, d_bias), oracle(lambda t: t, dtype),
                                     oracle(lambda t: t.double(), torch.float64)):
        assert_matches_oracle(ours, same, ref, name=f"{backend}/{dtype}/{name}")


def test_loading_a_float_weight_into_an_int8_layer_is_refused():
    linear = nn.Linear(8, 4)
    float_state = linear.state_dict()
    base = Int8Linear.from_linear(linear)
    with pytest.raises(TypeError, match="weight: expected an int8 weight"):
        base.load_state_dict(float_state)
    layer = Int8LoRALinear.from_int8_linear(Int8Linear.from_linear(nn.Linear(8, 4)), r=2)
    with pytest.raises(TypeError, match="weight: expected an int8 weight"):
        layer.load_state_dict(dict(layer.state_dict(), weight=torch.zeros(4, 8)))
    layer.load_state_dict(layer.state_dict())  # its own int8 state round-trips


def test_int8_linear_bad_input_is_a_named_error():
    from lowpeft.ops import int8_linear

    qweight, scale = quantize_int8(torch.randn(4, 8))
    with pytest.raises(ValueError, match="x: expected last dimension in_features=8"):
        int8_linear(torch.randn(2, 7), qweight, scale)
    with pytest.raises(TypeError, match="x: expected a floating-point tensor"):
        int8_linear(torch.ones(2, 8, dtype=torch.int64), qweight, scale)
    with pytest.raises(ValueError, match=r"bias: expected a tensor of shape \[4\]"):
        int8_linear(torch.randn(2, 8), qweight, scale, torch.zeros(3))
    with pytest.raises(TypeError, match="qweight: expected an int8"):
        int8_linear(torch.randn(2, 8), qweight.float(), scale)


def test_int8_linear_from_conv1d_quantizes_per_output_feature():
    transformers = pytest.importorskip("transformers")
    conv = transformers.pytorch_utils.Conv1D(12, 20)  # weight [in, out]
    base = Int8Linear.from_linear(conv)
    assert base.weight.shape == (12, 20)
    x = torch.randn(4, 20)
    torch.testing.assert_close(base(x), conv(x), atol=float(base.weight_scale.max()) * 20, rtol=0)


@pytest.mark.parametrize("cast", ["half", "bfloat16", "to_bfloat16", "type_float16"])
def test_casting_keeps_the_int8_weight_and_its_scales_bit_for_bit(cast):
    # A cast that rounded the scales through 16 bits moved every row (by up to 0.4 % in bf16) and set rows of
    # small weights to zero in float16; .type() turned the int8 weight into float16.
    linear = nn.Linear(64, 6)
    with torch.no_grad():
        linear.weight[0] *= 1e-6  # a row whose scale underflows float16
    base = Int8Linear.from_linear(linear)
    layer = Int8LoRALinear.from_int8_linear(base, r=2)
    weight, scale = layer.weight.clone(), layer.weight_scale.clone()
    {"half": lambda: layer.half(), "bfloat16": lambda: layer.bfloat16(), "to_bfloat16": lambda: layer.to(torch.bfloat16),
     "type_float16": lambda: layer.type(torch.float16)}[cast]()
    assert torch.equal(layer.weight, weight) and torch.equal(layer.weight_scale, scale)
    assert layer.bias.dtype != torch.float32 and layer.lora_A.dtype != torch.float32


def test_casting_keeps_the_scale_precise_and_moves_source_dtype():
    base = Int8Linear.from_linear(nn.Linear(8, 4).to(torch.bfloat16))
    layer = Int8LoRALinear.from_int8_linear(base, r=2)
    assert layer.source_dtype == torch.bfloat16 and layer.lora_A.dtype == torch.float32
    layer.half()
    assert layer.weight_scale.dtype == torch.float32 and layer.weight.dtype == torch.int8
    assert layer.source_dtype == torch.float16 and layer.lora_A.dtype == torch.float16
    assert layer.to_linear().weight.dtype == torch.float16
    layer.to("cpu")
    assert layer.source_dtype == torch.float16


def test_int8_lora_layer_matches_the_float_layer_on_the_dequantized_weight():
    linear = nn.Linear(16, 12)
    layer = Int8LoRALinear.from_int8_linear(Int8Linear.from_linear(linear), r=4, alpha=8, dropout=0.0)
    with torch.no_grad():
        layer.lora_B.normal_()
    float_layer = lowpeft.LoRALinear.from_linear(layer.to_linear(), r=4, alpha=8)
    with torch.no_grad():  # to_linear folded the adapter in: compare with the adapter zeroed there
        float_layer.weight.copy_(layer.base_weight())
        float_layer.lora_A.copy_(layer.lora_A)
        float_layer.lora_B.copy_(layer.lora_B)
    x = torch.randn(2, 7, 16)
    torch.testing.assert_close(layer(x), float_layer(x))
    torch.testing.assert_close(layer.to_linear()(x), layer(x), atol=1e-5, rtol=1e-5)


def test_int8_lora_layer_refuses_merge_and_direct_construction():
    layer = Int8LoRALinear.from_int8_linear(Int8Linear.from_linear(nn.Linear(8, 4)), r=2)
    with pytest.raises(ValueError, match="int8 step"):
        layer.merge()
    layer.unmerge()  # nothing to undo, as for an unmerged float layer
    with pytest.raises(TypeError, match="from_int8_linear"):
        Int8LoRALinear(8, 4)
    with pytest.raises(TypeError, match="base: expected a lowpeft Int8Linear"):
        Int8LoRALinear.from_int8_linear(nn.Linear(8, 4))
    with pytest.raises(TypeError, match="in_features: taken from the wrapped Int8Linear"):
        Int8LoRALinear.from_int8_linear(Int8Linear.from_linear(nn.Linear(8, 4)), in_features=8)


def test_int8_lora_layer_under_autocast_computes_in_the_autocast_dtype():
    layer = Int8LoRALinear.from_int8_linear(Int8Linear.from_linear(nn.Linear(16, 8)), r=4)
    x = torch.randn(3, 16, requires_grad=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.bfloat16
    y.float().sum().backward()
    assert x.grad.dtype == torch.float32 and layer.lora_A.grad.dtype == torch.float32


def test_int8_lora_layer_keeps_float64_under_autocast():
    # Autocast leaves float64 alone (nn.Linear, LoRALinear): so does the int8 layer.
    layer = Int8LoRALinear.from_int8_linear(Int8Linear.from_linear(nn.Linear(16, 8).double()), r=4)
    x = torch.randn(3, 16, dtype=torch.float64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        y = layer(x)
    assert y.dtype == torch.float64
    torch.testing.assert_close(y, layer(x), rtol=0, atol=0)


def test_module_bad_input_is_a_named_error():
    layer = Int8LoRALinear.from_int8_linear(Int8Linear.from_linear(nn.Linear(8, 4)), r=2)
    with pytest.raises(TypeError, match="x: expected a torch.Tensor"):
        layer([[1.0] * 8])
    with pytest.raises(TypeError, match="dtype: expected a floating-point torch.dtype"):
        layer.to_linear(torch.int8)
    with pytest.raises(TypeError, match="dtype: expected a floating-point torch.dtype"):
        Int8Linear.from_linear(nn.Linear(8, 4)).to_linear("float16")
    qweight, scale = quantize_int8(torch.randn(4, 8))
    with pytest.raises(TypeError, match="bias: expected None or a torch.Tensor"):
        Int8Linear(qweight, scale, bias=[0.0] * 4)
    with pytest.raises(TypeError, match="backend"):
        Int8Linear.from_linear(nn.Linear(8, 4), backend=3)


def test_int8_lora_layer_under_torch_compile_matches_eager():
    layer = Int8LoRALinear.from_int8_linear(Int8Linear.from_linear(nn.Linear(16, 8)), r=4, backend="torch")
    with torch.no_grad():
        layer.lora_B.normal_()
    x = torch.randn(2, 5, 16)
    compiled = torch.compile(layer, backend="aot_eager", fullgraph=True)
    y_eager, y_compiled = layer(x), compiled(x)
    torch.testing.assert_close(y_compiled, y_eager)
    eager_grads = torch.autograd.grad(y_eager.sum(), (layer.lora_A, layer.lora_B))
    compiled_grads = torch.autograd.grad(y_compiled.sum(), (layer.lora_A, layer.lora_B))
    for mine, theirs in zip(compiled_grads, eager_grads):
        torch.testing.assert_close(mine, theirs)


# ------------------------------------------------------------------------------------------------------
# the model level
# ------------------------------------------------------------------------------------------------------
def _train(model, ids, *, steps, lr):
    """`steps` AdamW steps on the trainable parameters with ids as inputs and labels (train mode); the losses."""
    model.train()
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    losses = []
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    return losses


def _tiny_llama(seed=0):
    from tests.tiny_models import tiny_llama

    return tiny_llama(seed)


def test_quantize_base_apply_train_save_load_and_export():
    model = _tiny_llama()
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        float_logits = model(ids).logits
    lowpeft.quantize_base(model)
    assert isinstance(model.model.layers[0].mlp.down_proj, Int8Linear)
    assert isinstance(model.lm_head, nn.Linear)  # "all-linear" leaves the output head alone
    with torch.no_grad():
        int8_logits = model(ids).logits
    assert (int8_logits - float_logits).abs().max() < 0.05 * float_logits.abs().max()
    lowpeft.apply(model, lowpeft.LoRAConfig(r=4, alpha=8))
    layer = model.model.layers[0].self_attn.q_proj
    assert isinstance(layer, Int8LoRALinear) and layer.lora_A.dtype == torch.float32
    trainable, total = lowpeft.trainable_parameters(model)
    assert trainable == sum(p.numel() for n, p in model.named_parameters() if "lora_" in n)
    losses = _train(model, ids, steps=12, lr=2e-2)
    assert losses[-1] < losses[0] - 0.1
    model.eval()
    with torch.no_grad():
        trained = model(ids).logits
    with lowpeft.disable_adapters(model), torch.no_grad():
        torch.testing.assert_close(model(ids).logits, int8_logits)
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match="int8 base"):
        lowpeft.merge(model)
    assert all(torch.equal(before[n], p) for n, p in model.named_parameters())

    with tempfile.TemporaryDirectory() as directory:
        lowpeft.save_adapter(model, directory)
        reloaded = lowpeft.quantize_base(_tiny_llama())
        lowpeft.apply(reloaded, lowpeft.LoRAConfig(r=4, alpha=8))
        lowpeft.load_adapter(reloaded, directory)
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(ids).logits, trained)

    lowpeft.merge_and_unload(model)
    exported = model.model.layers[0].self_attn.q_proj
    assert type(exported) is nn.Linear and exported.weight.dtype == torch.float32
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, trained, atol=1e-4, rtol=1e-4)


def test_qlora_style_adapters_on_some_of_the_quantized_layers_train():
    # quantize every linear, adapt q / v only (PEFT's QLoRA default): the other int8 layers pass gradients through.
    model = lowpeft.quantize_base(_tiny_llama())
    lowpeft.apply(model, lowpeft.LoRAConfig(r=4, alpha=8, target_modules=["q_proj", "v_proj"]))
    assert isinstance(model.model.layers[0].self_attn.k_proj, Int8Linear)
    assert isinstance(model.model.layers[0].self_attn.q_proj, Int8LoRALinear)
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(1))
    losses = _train(model, ids, steps=8, lr=2e-2)
    assert losses[-1] < losses[0] - 0.05
    assert model.model.layers[0].self_attn.q_proj.lora_A.grad is None  # zero_grad(set_to_none) after the last step


def test_gpt2_exports_back_to_conv1d_and_reloads_into_gpt2():
    pytest.importorskip("transformers")
    from tests.tiny_models import tiny_gpt2

    model = lowpeft.quantize_base(tiny_gpt2())
    lowpeft.apply(model, lowpeft.LoRAConfig(r=4, alpha=8, target_modules=["c_attn", "attn.c_proj"]))
    for name, param in model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(param, std=0.1)
    ids = torch.randint(0, 97, (1, 8), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        adapted = model(ids).logits
    lowpeft.merge_and_unload(model)
    assert type(model.transformer.h[0].attn.c_proj).__name__ == "Conv1D"
    assert isinstance(model.transformer.h[0].mlp.c_fc, Int8Linear) and model.transformer.h[0].mlp.c_fc.fan_in_fan_out
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, adapted, atol=1e-4, rtol=1e-4)
    plain = tiny_gpt2()
    exported = {k: v for k, v in model.state_dict().items() if "mlp.c_fc" not in k and "mlp.c_proj" not in k}
    plain.load_state_dict(exported, strict=False)  # the exported Conv1D weights fit GPT-2's own [in, out] layout
    torch.testing.assert_close(plain.transformer.h[0].attn.c_proj.weight,
                               model.transformer.h[0].attn.c_proj.weight, rtol=0, atol=0)


def test_selective_helpers_leave_int8_weights_frozen():
    model = lowpeft.quantize_base(_tiny_llama())
    lowpeft.freeze(model, trainable=["model.layers.1"])
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert "model.layers.1.input_layernorm.weight" in trainable
    assert not any(n.endswith("proj.weight") or n.endswith("weight_scale") for n in trainable)
    lowpeft.freeze(model)
    lowpeft.unfreeze_last_blocks(model, 1)
    assert "model.layers.1.post_attention_layernorm.weight" in {n for n, p in model.named_parameters()
                                                                 if p.requires_grad}
    lowpeft.unmerge(lowpeft.apply(model, lowpeft.LoRAConfig(r=2)))  # nothing merged: nothing to do


def test_freeze_patterns_that_match_only_the_int8_base_are_an_error():
    model = lowpeft.quantize_base(_tiny_llama())
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    with pytest.raises(ValueError, match=r"patterns \['\*.q_proj.\*'\] match only parameters that cannot train"):
        lowpeft.freeze(model, trainable=["*.q_proj.*", "model.norm"])
    assert {n: p.requires_grad for n, p in model.named_parameters()} == before  # nothing changed


def test_a_peft_file_with_a_float_base_weight_for_an_int8_layer_is_refused(tmp_path):
    peft = pytest.importorskip("peft")
    targets = ["q_proj", "lm_head"]
    peft_model = peft.get_peft_model(_tiny_llama(), peft.LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    peft_model.save_pretrained(tmp_path / "peft")  # holds lm_head.base_layer.weight (save_embedding_layers="auto")
    model = lowpeft.quantize_base(_tiny_llama(), target_modules=targets)
    head = model.lm_head.weight.clone()
    with pytest.raises(ValueError, match="holds a float base weight for 'lm_head', whose base is int8"):
        lowpeft.load_adapter(model, tmp_path / "peft")
    assert torch.equal(model.lm_head.weight, head) and lowpeft.model.adapter_names(model) == []


def test_quantize_base_bad_uses_are_named_errors():
    model = lowpeft.apply(_tiny_llama(), lowpeft.LoRAConfig(r=2))
    with pytest.raises(ValueError, match="quantize_base runs before lowpeft.apply"):
        lowpeft.quantize_base(model)
    with pytest.raises(ValueError, match="target_modules"):
        lowpeft.quantize_base(_tiny_llama(), target_modules=["no_such_layer"])
    peft = pytest.importorskip("peft")
    peft_model = peft.get_peft_model(_tiny_llama(), peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="got one with PEFT LoRA layers"):
        lowpeft.quantize_base(peft_model)
    with torch.device("meta"):
        on_meta = _tiny_llama()
    assert lowpeft.quantize_base(on_meta).model.layers[0].mlp.up_proj.weight.is_meta
    quantized = lowpeft.quantize_base(_tiny_llama(), target_modules=["q_proj"])
    assert isinstance(quantized.model.layers[1].self_attn.q_proj, Int8Linear)
    assert isinstance(quantized.model.layers[1].self_attn.k_proj, nn.Linear)
    lowpeft.quantize_base(quantized, target_modules=["q_proj"])  # already int8: kept
    with pytest.raises(TypeError, match="base: expected a lowpeft Int8Linear"):
        Int8AdapterLinear(nn.Linear(4, 4))


def test_bottleneck_adapters_on_an_int8_base_train_save_and_load(tmp_path):
    model = lowpeft.quantize_base(_tiny_llama())
    ids = torch.randint(0, 97, (2, 12), generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        int8_logits = model(ids).logits
    config = lowpeft.AdapterConfig(bottleneck=8, target_modules=["o_proj", "down_proj"])
    lowpeft.apply(model, config)
    layer = model.model.layers[0].mlp.down_proj
    assert isinstance(layer, Int8AdapterLinear) and layer.weight.dtype == torch.int8
    with torch.no_grad():  # identity init: the adapted model starts as the int8 one
        torch.testing.assert_close(model(ids).logits, int8_logits, rtol=0, atol=0)
    _train(model, ids, steps=4, lr=1e-2)
    assert not layer.weight_scale.requires_grad and layer.adapter.up_weight.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        trained = model(ids).logits
    lowpeft.save_adapter(model, tmp_path / "adapter")
    reloaded = lowpeft.apply(lowpeft.quantize_base(_tiny_llama()), config)
    lowpeft.load_adapter(reloaded, tmp_path / "adapter")
    with torch.no_grad():
        torch.testing.assert_close(reloaded.eval()(ids).logits, trained, rtol=0, atol=0)
    assert isinstance(layer.to_linear(), Int8Linear) and layer.to_linear().weight.data_ptr() == layer.weight.data_ptr()
    with lowpeft.disable_adapters(model), torch.no_grad():
        torch.testing.assert_close(model(ids).logits, int8_logits, rtol=0, atol=0)
