# Tests of the drop-in module lowpeft.LoRALinear: nn.Linear compatibility (constructor, state dict,
# outputs), from_linear / from_conv1d sharing the base, PEFT's initialisations, rsLoRA, merge / unmerge,
# dropout under activation checkpointing, torch.compile without graph breaks or per-shape recompiles,
# and named errors for bad hyperparameters; the layer is checked against the float64 oracle on every
# backend available here.
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lowpeft
from lowpeft import reference
from tests.backends_under_test import backend_params, examples_for
from tests.tolerance import assert_matches_oracle


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_layer_matches_oracle(backend, device, dtype):
    @settings(max_examples=examples_for(backend, device, base=10))
    @given(
        shape=st.sampled_from([(0, 8), (1, 1), (2, 7), (3, 5)]),
        features=st.sampled_from([(16, 16), (7, 33), (64, 5)]),
        rank=st.sampled_from([1, 5, 16]),
        rslora=st.booleans(),
        bias=st.booleans(),
    )
    def run(shape, features, rank, rslora, bias):
        torch.manual_seed(sum(shape) + rank)
        layer = lowpeft.LoRALinear(*features, r=rank, alpha=16, bias=bias, use_rslora=rslora, backend=backend,
                                   device=device, dtype=dtype)
        nn.init.normal_(layer.lora_B, std=0.1)
        x = torch.randn(*shape, features[0], device=device, dtype=dtype, requires_grad=True)
        y = layer(x)
        y.backward(torch.ones_like(y))
        args64 = [None if t is None else t.detach().double() for t in (x, layer.weight, layer.bias, layer.lora_A, layer.lora_B)]
        args_same = [None if t is None else t.detach() for t in (x, layer.weight, layer.bias, layer.lora_A, layer.lora_B)]
        expected_scaling = 16 / (math.sqrt(rank) if rslora else rank)
        assert layer.scaling == pytest.approx(expected_scaling)
        assert_matches_oracle(y, reference.lora_linear(*args_same, expected_scaling),
                              reference.lora_linear(*args64, expected_scaling), name="y")
        grads64 = reference.lora_linear_backward(torch.ones_like(y).double(), *[args64[i] for i in (0, 1, 3, 4)], expected_scaling)
        grads_same = reference.lora_linear_backward(torch.ones_like(y), *[args_same[i] for i in (0, 1, 3, 4)], expected_scaling)
        for name, ours, i in (("dx", x.grad, 0), ("dA", layer.lora_A.grad, 1), ("dB", layer.lora_B.grad, 2)):
            assert_matches_oracle(ours, grads_same[i], grads64[i], name=name)

    run()


def test_constructor_is_nn_linear_compatible_and_starts_as_the_identity_adapter():
    torch.manual_seed(0)
    layer = lowpeft.LoRALinear(10, 6, bias=False)
    assert layer.bias is None and layer.weight.shape == (6, 10) and not layer.weight.requires_grad
    x = torch.randn(4, 10)
    torch.testing.assert_close(layer(x), nn.functional.linear(x, layer.weight))
    assert set(layer.state_dict()) == {"weight", "lora_A", "lora_B"}


def test_from_linear_shares_the_weight_and_loads_the_original_checkpoint():
    linear = nn.Linear(12, 8)
    layer = lowpeft.LoRALinear.from_linear(linear, r=4, alpha=8)
    assert layer.weight is linear.weight and layer.bias is linear.bias
    assert layer.weight.data_ptr() == linear.weight.data_ptr()
    assert not linear.weight.requires_grad
    checkpoint = nn.Linear(12, 8).state_dict()
    missing, unexpected = layer.load_state_dict(checkpoint, strict=False)
    assert sorted(missing) == ["lora_A", "lora_B"] and unexpected == []
    torch.testing.assert_close(layer.weight, checkpoint["weight"])


def test_from_conv1d_keeps_the_conv1d_layout():
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    conv = Conv1D(8, 12)  # nf=8 outputs, nx=12 inputs; weight [12, 8]
    layer = lowpeft.LoRALinear.from_conv1d(conv, r=4)
    nn.init.normal_(layer.lora_B)
    assert layer.weight is conv.weight and layer.fan_in_fan_out
    x = torch.randn(3, 12)
    expected = conv(x) + layer.scaling * (x @ layer.lora_A.t()) @ layer.lora_B.t()
    torch.testing.assert_close(layer(x), expected)
    back = layer.to_conv1d()
    torch.testing.assert_close(back(x), layer(x))


def test_initialisations_follow_peft():
    torch.manual_seed(0)
    default = lowpeft.LoRALinear(256, 64, r=32)
    bound = 1 / math.sqrt(256)  # kaiming_uniform(a=sqrt(5)) on [r, in]
    assert default.lora_A.abs().max() <= bound and default.lora_A.abs().max() > 0.9 * bound
    assert torch.all(default.lora_B == 0)
    gaussian = lowpeft.LoRALinear(256, 64, r=32, init="gaussian")
    assert gaussian.lora_A.std().item() == pytest.approx(1 / 32, rel=0.1)
    assert torch.all(gaussian.lora_B == 0)


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-6), (torch.float64, 1e-12), (torch.bfloat16, 2e-2)])
def test_merge_then_unmerge(dtype, tol):
    torch.manual_seed(1)
    layer = lowpeft.LoRALinear(32, 16, r=4, dtype=dtype).eval()
    nn.init.normal_(layer.lora_B)
    original = layer.weight.detach().clone()
    x = torch.randn(5, 32, dtype=dtype)
    before = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), before, rtol=tol * 10, atol=tol * 10)
    layer.unmerge()
    assert not layer.merged
    torch.testing.assert_close(layer.weight, original, rtol=tol, atol=tol * original.abs().max().item())
    torch.testing.assert_close(layer.to_linear()(x), before, rtol=tol * 10, atol=tol * 10)


def test_unmerge_restores_the_base_weight_after_the_factors_change_or_the_layer_is_copied():
    # unmerge() subtracts the B, A that merge() added: an in-place change meanwhile (an optimizer step on a merged
    # layer), a deepcopy or a pickle round trip must still give W back.
    import copy
    import pickle

    torch.manual_seed(2)
    layer = lowpeft.LoRALinear(12, 10, r=3)
    nn.init.normal_(layer.lora_B)
    original = layer.weight.detach().clone()
    layer.merge()
    copies = [copy.deepcopy(layer), pickle.loads(pickle.dumps(layer))]
    with torch.no_grad():
        layer.lora_A.add_(1.0)
        layer.lora_B.mul_(3.0)
    for each in [layer, *copies]:
        each.unmerge()
        torch.testing.assert_close(each.weight, original, rtol=0, atol=1e-6)
    x = torch.randn(4, 12)
    torch.testing.assert_close(layer(x), reference.lora_linear(x, layer.weight, layer.bias, layer.lora_A, layer.lora_B,
                                                               layer.scaling))


def test_state_dicts_of_merged_layers_load_into_merged_layers():
    # A state dict carries no merged flag (as PEFT's): a merged layer's state (W + s·B·A and those B, A) loaded into
    # a merged layer stays consistent, and unmerge() then restores the saved layer's base weight; factors loaded
    # without a weight are a change while merged, and unmerge() still subtracts what merge() added.
    torch.manual_seed(4)
    source, target = lowpeft.LoRALinear(6, 4, r=2), lowpeft.LoRALinear(6, 4, r=2)
    for layer in (source, target):
        nn.init.normal_(layer.lora_B)
    source_base, target_base = source.weight.detach().clone(), target.weight.detach().clone()
    source.merge()
    target.merge()
    target.load_state_dict(source.state_dict())
    x = torch.randn(3, 6)
    torch.testing.assert_close(target(x), source(x), rtol=0, atol=0)
    target.unmerge()
    torch.testing.assert_close(target.weight, source_base, rtol=0, atol=1e-6)

    target.load_state_dict({"weight": target_base}, strict=False)  # back to its own base
    target.merge()
    other = lowpeft.LoRALinear(6, 4, r=2).state_dict()
    target.load_state_dict({"lora_A": other["lora_A"], "lora_B": other["lora_B"]}, strict=False)
    target.unmerge()
    torch.testing.assert_close(target.weight, target_base, rtol=0, atol=1e-6)


def test_a_merged_model_loads_its_own_state_dict_and_unrelated_keys():
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3))
    lowpeft.apply(model, lowpeft.LoRAConfig(r=2, target_modules=["0"]))
    nn.init.normal_(model[0].lora_B)
    base = model[0].weight.detach().clone()
    lowpeft.merge(model)
    model.load_state_dict(model.state_dict())
    model.load_state_dict({"2.weight": torch.zeros(3, 6)}, strict=False)
    assert torch.all(model[2].weight == 0)
    lowpeft.unmerge(model)
    torch.testing.assert_close(model[0].weight, base, rtol=0, atol=1e-6)


@pytest.mark.parametrize("layer_kind", ["lora", "adapter"])
def test_float64_stays_float64_under_autocast(layer_kind):
    # torch's autocast never casts float64 (a float64 nn.Linear stays float64): neither do lowpeft's ops.
    torch.manual_seed(3)
    if layer_kind == "lora":
        layer = lowpeft.LoRALinear(8, 6, r=2, dtype=torch.float64)
        nn.init.normal_(layer.lora_B)
    else:
        layer = lowpeft.BottleneckAdapter(8, bottleneck=3, dtype=torch.float64)
        nn.init.normal_(layer.up_weight)
    x = torch.randn(4, 8, dtype=torch.float64)
    expected = layer(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
        assert torch.nn.functional.linear(x, torch.randn(6, 8, dtype=torch.float64)).dtype == torch.float64
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, expected, rtol=0, atol=0)


def test_adapter_in_float32_on_a_bfloat16_base():
    layer = lowpeft.LoRALinear.from_linear(nn.Linear(16, 8, dtype=torch.bfloat16), r=4, adapter_dtype=torch.float32)
    assert layer.lora_A.dtype == torch.float32 and layer.weight.dtype == torch.bfloat16
    y = layer(torch.randn(3, 16, dtype=torch.bfloat16))
    y.float().sum().backward()
    assert y.dtype == torch.bfloat16 and layer.lora_A.grad.dtype == torch.float32


def test_repr_names_the_adapter():
    text = repr(lowpeft.LoRALinear(4, 3, r=2, alpha=4, dropout=0.1, backend="torch"))
    for word in ("r=2", "alpha=4", "dropout=0.1", "backend='torch'"):
        assert word in text


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(r=0), ValueError, ["r", "positive", "0"]),
        (dict(r=2.5), TypeError, ["r", "int", "2.5"]),
        (dict(dropout=1.0), ValueError, ["dropout", "[0, 1)"]),
        (dict(init="xavier"), ValueError, ["init", "'xavier'"]),
        (dict(backend="gpu"), ValueError, ["backend", "'gpu'"]),
        (dict(alpha=float("inf")), ValueError, ["alpha", "finite"]),
        (dict(alpha="8"), TypeError, ["alpha", "str"]),
        (dict(dropout="0.1"), TypeError, ["dropout", "str"]),
    ],
)
def test_bad_hyperparameters_are_named_errors(kwargs, error, words):
    with pytest.raises(error) as info:
        lowpeft.LoRALinear(8, 4, **kwargs)
    for word in words:
        assert word in str(info.value)


@pytest.mark.parametrize("name,value", [("bias", False), ("in_features", 3), ("out_features", 5),
                                        ("dtype", torch.float16), ("device", "cpu")])
def test_from_linear_names_an_argument_it_takes_from_the_layer(name, value):
    with pytest.raises(TypeError, match=f"^{name}: taken from the wrapped linear"):
        lowpeft.LoRALinear.from_linear(nn.Linear(4, 4), r=2, **{name: value})
    pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    with pytest.raises(TypeError, match=f"^{name}: taken from the wrapped conv1d"):
        lowpeft.LoRALinear.from_conv1d(Conv1D(4, 4), r=2, **{name: value})


def test_from_linear_rejects_other_modules():
    with pytest.raises(TypeError, match="linear: expected a torch.nn.Linear, got Conv2d"):
        lowpeft.LoRALinear.from_linear(nn.Conv2d(1, 1, 1))


@pytest.mark.parametrize("use_reentrant", [True, False])
def test_activation_checkpointing_replays_the_dropout_mask(use_reentrant):
    from torch.utils.checkpoint import checkpoint

    torch.manual_seed(0)
    layer = lowpeft.LoRALinear(16, 16, r=4, dropout=0.5)
    nn.init.normal_(layer.lora_B)
    x = torch.randn(6, 16, requires_grad=True)

    torch.manual_seed(7)
    layer(x).square().sum().backward()
    plain = [x.grad.clone(), layer.lora_A.grad.clone(), layer.lora_B.grad.clone()]
    x.grad = layer.lora_A.grad = layer.lora_B.grad = None

    torch.manual_seed(7)
    checkpoint(lambda t: layer(t).square(), x, use_reentrant=use_reentrant).sum().backward()
    for a, b in zip(plain, [x.grad, layer.lora_A.grad, layer.lora_B.grad]):
        torch.testing.assert_close(a, b)


def test_torch_compile_fullgraph_without_recompiling_per_token_count():
    import torch._dynamo
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    model = nn.Sequential(lowpeft.LoRALinear(16, 32, r=4, dropout=0.1, backend="torch"), nn.GELU(),
                          lowpeft.LoRALinear(32, 8, r=4, backend="torch"))
    compiled = torch.compile(model, fullgraph=True)
    for tokens in (4, 5, 9, 17, 33, 64):
        x = torch.randn(tokens, 16, requires_grad=True)
        compiled(x).sum().backward()
    assert counters["stats"]["unique_graphs"] <= 2  # one static, then one dynamic graph for every later size


def test_meta_tensors_give_meta_outputs_like_nn_linear():
    # Shape inference on the meta device (model sizing, deferred init): nn.Linear returns a meta tensor, so the
    # lowpeft layers must too (torch.is_autocast_enabled raises for "meta"; autocast does not apply there).
    x = torch.empty(3, 16, device="meta")
    assert torch.nn.Linear(16, 8, device="meta")(x).shape == (3, 8)
    assert lowpeft.LoRALinear(16, 8, r=2, device="meta")(x).shape == (3, 8)
    assert lowpeft.BottleneckAdapter(16, bottleneck=4).to("meta")(x).shape == (3, 16)
    linear = torch.nn.Linear(16, 8, device="meta")
    assert lowpeft.AdapterLinear.from_linear(linear, bottleneck=4)(x).shape == (3, 8)


def test_layers_on_the_meta_device_compile_with_fullgraph():
    # Under torch.compile the autocast check recognises meta tensors by name (torch.is_autocast_enabled raises for
    # them, and torch 2.11's dynamo cannot trace torch.amp.is_autocast_available).
    with torch.device("meta"):
        layer = lowpeft.LoRALinear(16, 8, r=4, backend="torch")
        x = torch.randn(2, 16)
    y = torch.compile(layer, backend="aot_eager", fullgraph=True)(x)
    assert y.is_meta and y.shape == (2, 8)
