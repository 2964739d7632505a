# Several named adapters on one model: add, set the active one, a context that disables adapters, delete, save
# a named adapter; each adapter's output equals that adapter alone on a fresh model.
#
# Trade-off: the oracle for "adapter X active" is a fresh model with only X applied (same weights), so
# switching must reproduce single-adapter behaviour exactly.
import copy

import pytest
import torch

import lowpeft
from lowpeft import model as model_level

transformers = pytest.importorskip("transformers")

from tests.tiny_models import DEVICES, tiny_llama  # noqa: E402


CONFIGS = {
    "attn": lowpeft.LoRAConfig(r=2, alpha=4, target_modules=["q_proj", "v_proj"]),
    "mlp": lowpeft.LoRAConfig(r=3, alpha=3, target_modules=["up_proj", "q_proj"], use_rslora=True),
    "prompt": lowpeft.PromptTuningConfig(num_virtual_tokens=2),
}


def _randomise(model, name, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model_level.adapter_layers(model, name).values():
            layer.lora_A.copy_(torch.randn(layer.lora_A.shape, generator=generator))
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator))


@pytest.mark.parametrize("device", DEVICES)
def test_switch_disable_delete(device, tmp_path):
    model = tiny_llama().to(device)
    ids = torch.randint(0, 97, (2, 6), device=device)
    base_logits = model(ids).logits
    for seed, name in enumerate(("attn", "mlp")):
        model_level.add_adapter(model, name, CONFIGS[name])
        _randomise(model, name, seed)
    assert model_level.active_adapter(model) == "attn" and model_level.adapter_names(model) == ["attn", "mlp"]
    expected = {}
    for seed, name in enumerate(("attn", "mlp")):
        single = lowpeft.apply(tiny_llama().to(device), CONFIGS[name])
        _randomise(single, "default", seed)
        expected[name] = single(ids).logits
    for name in ("mlp", "attn", "mlp"):
        model_level.set_adapter(model, name)
        torch.testing.assert_close(model(ids).logits, expected[name], rtol=0, atol=0)
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        assert trainable == {n for n, _ in model.named_parameters() if ".lora_" in n}
    with model_level.disable_adapters(model):
        torch.testing.assert_close(model(ids).logits, base_logits, rtol=0, atol=0)
    torch.testing.assert_close(model(ids).logits, expected["mlp"], rtol=0, atol=0)
    lowpeft.save_adapter(model, tmp_path / "attn", adapter_name="attn")
    reloaded = lowpeft.load_adapter(tiny_llama().to(device), tmp_path / "attn")
    torch.testing.assert_close(reloaded(ids).logits, expected["attn"], rtol=1e-6, atol=1e-6)
    model_level.delete_adapter(model, "mlp")
    assert model_level.active_adapter(model) is None
    torch.testing.assert_close(model(ids).logits, base_logits, rtol=0, atol=0)
    model_level.set_adapter(model, "attn")
    torch.testing.assert_close(model(ids).logits, expected["attn"], rtol=0, atol=0)
    model_level.delete_adapter(model, "attn")
    assert model_level.adapter_names(model) == []
    assert not any(isinstance(m, lowpeft.LoRALinear) for m in model.modules())


def test_prompt_and_lora_adapters_share_a_model():
    model = tiny_llama()
    ids = torch.randint(0, 97, (1, 5))
    lowpeft.apply(model, CONFIGS["attn"], adapter_name="attn")
    lowpeft.apply(model, CONFIGS["prompt"], adapter_name="prompt")
    assert model(ids).logits.shape == (1, 7, 97)
    model_level.set_adapter(model, "attn")
    assert model(ids).logits.shape == (1, 5, 97)


def test_inactive_adapters_follow_the_model_to_another_dtype_device():
    model = tiny_llama()
    model_level.add_adapter(model, "a", CONFIGS["attn"])
    model_level.add_adapter(model, "b", CONFIGS["mlp"])
    model.double()
    model_level.set_adapter(model, "b")
    assert model(torch.randint(0, 97, (1, 3))).logits.dtype == torch.float64


def test_errors_name_the_adapter():
    model = tiny_llama()
    with pytest.raises(ValueError, match="model: set_adapter needs a model with lowpeft adapters"):
        model_level.set_adapter(model, "a")
    model_level.add_adapter(model, "a", CONFIGS["attn"])
    with pytest.raises(ValueError, match=r"adapter_name: expected one of \['a'\], got 'b'"):
        model_level.set_adapter(model, "b")
    with pytest.raises(ValueError, match="adapter_name"):
        model_level.add_adapter(model, "a", CONFIGS["mlp"])
    with pytest.raises(ValueError, match="adapter_name"):
        model_level.add_adapter(model, "x.y", CONFIGS["mlp"])
    model_level.add_adapter(model, "b", CONFIGS["mlp"])
    lowpeft.merge(model)
    with pytest.raises(ValueError, match="unmerge"):
        model_level.set_adapter(model, "b")
    with pytest.raises(ValueError, match="unmerge"):
        with model_level.disable_adapters(model):
            pass
    lowpeft.unmerge(model)
    model_level.set_adapter(model, "b")


def test_counts_with_several_adapters_match_peft():
    # PEFT keeps inactive adapters in its model (frozen): they count in "all params", not as trainable.
    peft = pytest.importorskip("peft")
    base = tiny_llama()
    model = lowpeft.apply(copy.deepcopy(base), lowpeft.LoRAConfig(r=4, target_modules="all-linear"), "a")
    model_level.add_adapter(model, "b", lowpeft.LoRAConfig(r=2, target_modules=["q_proj"]))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=4, target_modules="all-linear"),
                                 adapter_name="a")
    theirs.add_adapter("b", peft.LoraConfig(r=2, target_modules=["q_proj"]))
    for name in ("b", "a"):
        model_level.set_adapter(model, name)
        theirs.set_adapter(name)
        assert lowpeft.trainable_parameters(model) == theirs.get_nb_trainable_parameters(), name
    with model_level.disable_adapters(model):
        assert lowpeft.trainable_parameters(model)[1] == theirs.get_nb_trainable_parameters()[1]
