# lowpeft.from_peft: a PeftModel's LoRA Linear layers run the fused op in place, with PEFT's parameter names and
# behaviour kept (logits and gradients as PEFT's, save_pretrained loadable by stock PEFT, set_adapter /
# disable_adapter / several adapters), unsupported cases as clear errors, DoRA left to PEFT with one warning,
# and PEFT's custom-module route (register_fused_layers).
#
# Trade-off: PEFT's own layers are the oracle here (they are what users compare against); dropout is 0 where
# outputs are compared, since PEFT's and lowpeft's masks come from different generators by design.
import copy
import warnings

import pytest
import torch

import lowpeft
from lowpeft import peft_interop
from tests.tolerance import assert_matches_oracle

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from tests.tiny_models import DEVICES  # noqa: E402  (after the importorskips: it needs transformers)
from tests.tiny_models import ROUND_TRIP_MODELS as MODELS  # noqa: E402
from tests.tiny_models import tiny_llama_with_attention_bias as tiny_llama  # noqa: E402


def _randomise_lora(model, seed=5):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)


def _peft_model(family, device, **config):
    config = {"r": 4, "lora_alpha": 8, "target_modules": "all-linear", **config}
    model = peft.get_peft_model(MODELS[family]().to(device), peft.LoraConfig(**config))
    _randomise_lora(model)
    return model.eval()


def _rel(ours, theirs):
    return ((ours - theirs).abs().max() / theirs.abs().max()).item()


def assert_same_logits(ours, theirs, theirs_model, ids):
    """Within 1e-5 relative of the other library's float32 logits, or, where that library's own float32 error is
    larger than that, within the suite's rule against the same model evaluated in float64."""
    if _rel(ours, theirs) <= 1e-5:
        return
    reference64 = copy.deepcopy(theirs_model).double()(ids).logits
    assert_matches_oracle(ours, theirs, reference64, name="logits")


def _fused_layers(model):
    return [m for m in model.modules() if type(m).__name__ == "FusedLoraLinear"]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("rslora", [False, True])
def test_from_peft_keeps_logits_gradients_and_names(family, device, rslora):
    model = _peft_model(family, device, use_rslora=rslora)
    names = [name for name, _ in model.named_parameters()]
    ids = torch.randint(0, 97, (2, 9), device=device)
    model.train()
    reference = copy.deepcopy(model)
    expected = model(ids, labels=ids)
    expected.loss.backward()
    expected_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad()
    assert lowpeft.from_peft(model) is model
    assert len(_fused_layers(model)) == (14 if family == "llama" else 8)
    assert [name for name, _ in model.named_parameters()] == names
    got = model(ids, labels=ids)
    got.loss.backward()
    assert_same_logits(got.logits, expected.logits, reference, ids)
    for name, grad in expected_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", sorted(MODELS))
def test_save_pretrained_of_a_fused_model_loads_in_stock_peft(family, tmp_path):
    model = lowpeft.from_peft(_peft_model(family, "cpu"))
    ids = torch.randint(0, 97, (2, 7))
    logits = model(ids).logits
    model.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(MODELS[family](), tmp_path).eval()
    assert not _fused_layers(theirs)
    assert_same_logits(logits, theirs(ids).logits, theirs, ids)


def test_set_adapter_disable_adapter_and_several_active_adapters():
    model = _peft_model("llama", "cpu")
    model.add_adapter("second", peft.LoraConfig(r=2, lora_alpha=3, target_modules=["q_proj", "o_proj"]))
    _randomise_lora(model, seed=9)
    ids = torch.randint(0, 97, (2, 6))
    outputs = {}
    for name in ("default", "second"):
        model.set_adapter(name)
        outputs[name] = model(ids).logits
    with model.disable_adapter():
        outputs["disabled"] = model(ids).logits
    model.base_model.set_adapter(["default", "second"])
    outputs["both"] = model(ids).logits
    model.set_adapter("default")
    lowpeft.from_peft(model, backend="torch")  # behaviour here; numbers against PEFT are checked above
    for name in ("default", "second"):
        model.set_adapter(name)
        assert _rel(model(ids).logits, outputs[name]) <= 1e-5
    with model.disable_adapter():
        assert _rel(model(ids).logits, outputs["disabled"]) <= 1e-5
    model.base_model.set_adapter(["default", "second"])
    assert _rel(model(ids).logits, outputs["both"]) <= 1e-5
    model.set_adapter("default")
    model.merge_adapter()
    assert _rel(model(ids).logits, outputs["default"]) <= 1e-5
    model.unmerge_adapter()
    assert _rel(model(ids).logits, outputs["default"]) <= 1e-5


def test_unsupported_cases_are_clear_errors():
    model = _peft_model("llama", "cpu", lora_dropout=0.1)
    model.add_adapter("second", peft.LoraConfig(r=2, target_modules=["q_proj"], lora_dropout=0.1))
    lowpeft.from_peft(model)
    model.base_model.set_adapter(["default", "second"])
    with pytest.raises(NotImplementedError, match="several active adapters"):
        model(torch.randint(0, 97, (1, 4)))
    model.set_adapter("default")
    with pytest.raises(NotImplementedError, match="adapter_names"):
        model(torch.randint(0, 97, (2, 4)), adapter_names=["default", "second"])
    with pytest.raises(ValueError, match="no PEFT LoRA Linear layer"):
        lowpeft.from_peft(tiny_llama())
    with pytest.raises(TypeError, match="peft_model"):
        lowpeft.from_peft("model")
    with pytest.raises(ValueError, match="backend"):
        lowpeft.from_peft(model, backend="fast")


def test_dora_layers_stay_peft_with_a_single_warning():
    peft_interop._WARNED.clear()
    model = _peft_model("llama", "cpu", target_modules=["q_proj"], use_dora=True)
    model.add_adapter("plain", peft.LoraConfig(r=2, target_modules=["v_proj"]))
    with pytest.warns(UserWarning, match="DoraLinearVariant"):
        lowpeft.from_peft(model)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lowpeft.from_peft(model)
    assert len(_fused_layers(model)) == 2
    assert all(type(m).__name__ == "Linear" for n, m in model.named_modules() if n.endswith("q_proj"))


def test_to_peft_restores_peft_layers_and_register_route_builds_fused_layers(tmp_path):
    model = lowpeft.from_peft(_peft_model("llama", "cpu"))
    peft_interop.to_peft(model)
    assert not _fused_layers(model)
    config = peft_interop.register_fused_layers(peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "down_proj"]))
    registered = peft.get_peft_model(tiny_llama(), config)
    assert len(_fused_layers(registered)) == 4
    _randomise_lora(registered)
    registered.eval()
    ids = torch.randint(0, 97, (2, 5))
    logits = registered(ids).logits
    registered.save_pretrained(tmp_path)
    theirs = peft.PeftModel.from_pretrained(tiny_llama(), tmp_path)
    assert_same_logits(logits, theirs(ids).logits, theirs, ids)
    with pytest.raises(ValueError, match="use_dora"):
        peft_interop.register_fused_layers(peft.LoraConfig(target_modules=["q_proj"], use_dora=True))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (bf16 base with PEFT's float32 adapters)")
def test_bf16_model_with_float32_adapters_under_from_peft():
    model = peft.get_peft_model(tiny_llama().to("cuda", torch.bfloat16),
                                peft.LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    _randomise_lora(model)
    model.eval()
    ids = torch.randint(0, 97, (2, 9), device="cuda")
    expected = model(ids).logits.float()
    lowpeft.from_peft(model)
    got = model(ids).logits.float()
    assert _rel(got, expected) <= 3e-2


def test_a_base_with_a_forward_of_its_own_runs_peft_layers_forward():
    # PEFT's custom-module route hands any nn.Linear subclass to the fused layer; the fused op reads the weight and
    # would skip a quantized base's forward, so such a base runs PEFT's forward, said once.
    class FakeQuantLinear(torch.nn.Linear):
        def forward(self, x):
            return torch.nn.functional.linear(x, torch.round(self.weight * 8) / 8, self.bias)

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = FakeQuantLinear(16, 8)

        def forward(self, x):
            return self.fc(x)

    torch.manual_seed(0)
    net, x = Net(), torch.randn(5, 16)
    config = peft.LoraConfig(r=4, target_modules=["fc"], init_lora_weights="gaussian")
    plain = peft.get_peft_model(copy.deepcopy(net), copy.deepcopy(config))
    fused = peft.get_peft_model(copy.deepcopy(net), peft_interop.register_fused_layers(copy.deepcopy(config)))
    fused.load_state_dict(plain.state_dict())
    peft_interop._WARNED.discard("base:Net.forward.<locals>.FakeQuantLinear")
    with pytest.warns(UserWarning, match="FakeQuantLinear base runs PEFT's own forward"):
        out = fused(x)
    torch.testing.assert_close(out, plain(x), rtol=0, atol=0)


def test_from_peft_fuses_falcon_linear_as_apply_adapts_it():
    # FalconLinear has a forward of its own that computes x Wᵀ + b exactly: lowpeft.apply adapts it, so from_peft
    # fuses it too (one rule for both routes), with no "runs PEFT's own forward" warning, and the same output.
    config = transformers.FalconConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, vocab_size=64,
                                       new_decoder_architecture=False)
    torch.manual_seed(0)
    base = transformers.FalconForCausalLM(config).eval()
    plain = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules="all-linear",
                                                      init_lora_weights="gaussian"))
    with torch.no_grad():
        for name, param in plain.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    ids = torch.randint(0, 64, (1, 5))
    expected = plain(ids).logits
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        lowpeft.from_peft(plain, backend="torch")
        got = plain(ids).logits
    fused = peft_interop._fused_class()
    layers = [m for m in plain.modules() if hasattr(m, "lora_A") and hasattr(m, "base_layer")]
    assert len(layers) == 8 and all(type(m) is fused for m in layers)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
