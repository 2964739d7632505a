# Tests of the modules lowpeft.nn.adapter.BottleneckAdapter and AdapterLinear: identity and BERT inits, outputs
# and gradients against the float64 oracle on every backend, the shared frozen Linear (no copy, original
# state-dict keys), wider adapter dtypes, merge refusing with a clear error, repr, bad hyper-parameters, and
# torch.compile tracing through the op.
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from lowpeft import reference
from lowpeft.nn.adapter import AdapterLinear, BottleneckAdapter
from tests.backends_under_test import DEVICE, backend_params
from tests.tolerance import assert_matches_oracle


def _randomize(adapter: BottleneckAdapter, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in adapter.parameters():
            param.copy_(torch.randn(param.shape, generator=gen, dtype=torch.float64) * 0.3)


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_fresh_adapter_is_the_identity(backend, device, dtype):
    adapter = BottleneckAdapter(123, bottleneck=7, backend=backend, device=device, dtype=dtype)
    h = torch.randn(2, 5, 123, device=device).to(dtype)
    assert torch.equal(adapter(h), h)


def test_bert_init_matches_adapterhub():
    torch.manual_seed(0)
    adapter = BottleneckAdapter(512, bottleneck=64, init="bert")
    for weight in (adapter.down_weight, adapter.up_weight):
        assert abs(weight.std().item() - 0.02) < 2e-3 and abs(weight.mean().item()) < 2e-3
    assert torch.all(adapter.down_bias == 0) and torch.all(adapter.up_bias == 0)


@pytest.mark.parametrize("backend,device,dtype", backend_params())
@pytest.mark.parametrize("activation", ["gelu", "relu"])
def test_adapter_matches_oracle(backend, device, dtype, activation):
    adapter = BottleneckAdapter(33, bottleneck=5, activation=activation, scale=0.5, backend=backend, device=device,
                                dtype=dtype)
    _randomize(adapter, seed=1)
    h = torch.randn(3, 7, 33, dtype=torch.float64).to(device=device, dtype=dtype).transpose(0, 1).requires_grad_(True)
    out = adapter(h)
    grad_out = torch.randn(out.shape, dtype=torch.float64).to(device=device, dtype=dtype)
    ours = torch.autograd.grad(out, [h, adapter.down_weight, adapter.down_bias, adapter.up_weight, adapter.up_bias],
                               grad_out)
    params = [adapter.down_weight, adapter.down_bias, adapter.up_weight, adapter.up_bias]

    def oracle(cast):
        args = [cast(t.detach()) for t in [h, *params]]
        return (reference.bottleneck_adapter(*args, activation, 0.5),
                *reference.bottleneck_adapter_backward(cast(grad_out), *args[:4], activation, 0.5))

    for name, mine, same, ref in zip(("out", "dh", "d_down_weight", "d_down_bias", "d_up_weight", "d_up_bias"),
                                     (out, *ours), oracle(lambda t: t), oracle(lambda t: t.double())):
        assert_matches_oracle(mine, same, ref, name=name)


@pytest.mark.parametrize("backend,device,dtype", backend_params())
def test_adapter_linear_shares_frozen_base_and_trains_adapter(backend, device, dtype):
    linear = nn.Linear(16, 24, device=device, dtype=dtype)
    layer = AdapterLinear.from_linear(linear, bottleneck=4, activation="silu", backend=backend)
    assert layer.weight is linear.weight and layer.bias is linear.bias
    assert not layer.weight.requires_grad and not layer.bias.requires_grad
    _randomize(layer.adapter, seed=2)
    x = torch.randn(5, 16, device=device, dtype=dtype)
    out = layer(x)
    h = F.linear(x, linear.weight, linear.bias)
    adapter_args = [h, layer.adapter.down_weight, layer.adapter.down_bias, layer.adapter.up_weight,
                    layer.adapter.up_bias]
    assert_matches_oracle(out, reference.bottleneck_adapter(*(t.detach() for t in adapter_args), "silu"),
                          reference.bottleneck_adapter(*(t.detach().double() for t in adapter_args), "silu"))
    out.square().sum().backward()
    assert layer.weight.grad is None and layer.bias.grad is None
    assert all(p.grad is not None for p in layer.adapter.parameters())


def test_adapter_linear_state_dict_keeps_the_linear_keys():
    model = nn.Sequential(nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    checkpoint = {k: v.clone() for k, v in model.state_dict().items()}
    model[0] = AdapterLinear(model[0], bottleneck=2)
    keys = set(model.state_dict())
    assert {"0.weight", "0.bias", "2.weight", "2.bias"} <= keys
    assert keys - set(checkpoint) == {"0.adapter.down_weight", "0.adapter.down_bias", "0.adapter.up_weight",
                                      "0.adapter.up_bias"}
    result = model.load_state_dict(checkpoint, strict=False)
    assert not result.unexpected_keys and set(result.missing_keys) == keys - set(checkpoint)


def test_adapter_linear_base_that_requires_grad_gets_gradients():
    linear = nn.Linear(6, 10)
    layer = AdapterLinear.from_linear(linear, bottleneck=3, freeze_base=False, backend="torch")
    _randomize(layer.adapter, seed=3)
    layer(torch.randn(4, 6)).sum().backward()
    assert linear.weight.grad is not None and linear.bias.grad is not None


def test_wider_adapter_dtype_computes_in_the_input_dtype():
    linear = nn.Linear(16, 16, dtype=torch.bfloat16)
    layer = AdapterLinear.from_linear(linear, bottleneck=4, adapter_dtype=torch.float32, backend="torch")
    _randomize(layer.adapter, seed=4)
    out = layer(torch.randn(3, 16, dtype=torch.bfloat16))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.dtype == torch.float32 and p.grad.dtype == torch.float32 for p in layer.adapter.parameters())


def test_no_bias_adapter_has_no_bias_parameters():
    adapter = BottleneckAdapter(8, bottleneck=2, bias=False, backend="torch")
    assert adapter.down_bias is None and adapter.up_bias is None
    assert [name for name, _ in adapter.named_parameters()] == ["down_weight", "up_weight"]
    _randomize(adapter, seed=5)
    h = torch.randn(3, 8)
    expected = reference.bottleneck_adapter(h, adapter.down_weight.detach(), None, adapter.up_weight.detach(), None)
    torch.testing.assert_close(adapter(h), expected)


def test_merge_is_a_clear_error():
    layer = AdapterLinear.from_linear(nn.Linear(4, 4), bottleneck=2)
    for module in (layer, layer.adapter):
        with pytest.raises(TypeError, match="cannot be merged.*non-linear"):
            module.merge()
        module.unmerge()
        assert module.merged is False


def test_repr_is_readable():
    layer = AdapterLinear.from_linear(nn.Linear(4, 6), bottleneck=2, activation="relu", scale=0.5)
    text = repr(layer)
    for words in ("in_features=4, out_features=6, bias=True", "(adapter): BottleneckAdapter(dim=6, bottleneck=2",
                  "activation='relu'", "scale=0.5", "init='identity'", "backend='auto'"):
        assert words in text, f"{words!r} not in {text}"


def test_to_linear_returns_the_shared_base():
    linear = nn.Linear(4, 6)
    plain = AdapterLinear.from_linear(linear, bottleneck=2).to_linear()
    assert isinstance(plain, nn.Linear) and plain.weight is linear.weight and plain.bias is linear.bias


@pytest.mark.parametrize(
    "kwargs,error,words",
    [
        (dict(dim=0), ValueError, ["dim", "positive", "0"]),
        (dict(dim=8.0), TypeError, ["dim", "int", "float"]),
        (dict(bottleneck=-1), ValueError, ["bottleneck", "positive", "-1"]),
        (dict(activation="tanh"), ValueError, ["activation", "'tanh'"]),
        (dict(scale=float("nan")), ValueError, ["scale", "finite"]),
        (dict(init="zeros"), ValueError, ["init", "'zeros'", "identity"]),
        (dict(bias="yes"), TypeError, ["bias", "bool"]),
        (dict(backend="fast"), ValueError, ["backend", "'fast'"]),
    ],
)
def test_bad_hyperparameters_are_named_errors(kwargs, error, words):
    with pytest.raises(error) as info:
        BottleneckAdapter(**{"dim": 8, **kwargs})
    for word in words:
        assert word in str(info.value), f"{word!r} not in {info.value}"


def test_adapter_linear_takes_only_linear():
    with pytest.raises(TypeError, match="linear: expected a torch.nn.Linear, got Conv1d"):
        AdapterLinear(nn.Conv1d(2, 2, 1))


def test_traces_under_torch_compile():
    adapter = BottleneckAdapter(16, bottleneck=4, backend="torch")
    _randomize(adapter, seed=6)
    h = torch.randn(3, 16, requires_grad=True)
    compiled = torch.compile(adapter, backend="aot_eager", fullgraph=True)
    out = compiled(h)
    out.sum().backward()
    expected = adapter(h.detach())
    torch.testing.assert_close(out, expected)
    assert h.grad is not None and adapter.down_weight.grad is not None


@pytest.mark.skipif(DEVICE != "cuda", reason="needs a CUDA GPU")
def test_adapter_linear_bf16_training_step_on_gpu():
    linear = nn.Linear(1024, 2048, device="cuda", dtype=torch.bfloat16)
    layer = AdapterLinear.from_linear(linear, bottleneck=64, adapter_dtype=torch.float32)
    _randomize(layer.adapter, seed=7)
    optimizer = torch.optim.AdamW(layer.adapter.parameters(), lr=1e-3)
    x = torch.randn(4, 128, 1024, device="cuda", dtype=torch.bfloat16)
    before = layer.adapter.up_weight.detach().clone()
    layer(x).float().square().mean().backward()
    optimizer.step()
    assert not torch.equal(before, layer.adapter.up_weight) and torch.isfinite(layer.adapter.up_weight).all()


@pytest.mark.parametrize("dynamic", [False, True], ids=["static", "dynamic"])
def test_auto_backend_traces_under_torch_compile(dynamic):
    # backend="auto" resolves per call (by device, dtype and bottleneck width, lowpeft.ops.bottleneck_adapter.
    # adapter_auto_order): under fullgraph compilation that choice must be a trace-time constant, not a graph break.
    adapter = BottleneckAdapter(16, bottleneck=4).to(DEVICE)
    _randomize(adapter, seed=8)
    h = torch.randn(2, 5, 16, device=DEVICE, requires_grad=True)
    compiled = torch.compile(adapter, backend="aot_eager", fullgraph=True, dynamic=dynamic)
    out = compiled(h)
    out.sum().backward()
    torch.testing.assert_close(out, adapter(h.detach()))
    assert h.grad is not None and adapter.up_weight.grad is not None
