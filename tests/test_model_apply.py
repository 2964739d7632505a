# Model-level LoRA: configs, lowpeft.apply's module matching (PEFT's rule: names / suffixes, full-match regex,
# "all-linear" without the head), freezing, trainable counts identical to PEFT's, merge / unmerge /
# merge_and_unload, and the layers' numbers against the float64 oracle inside a model.
#
# Trade-off: tiny models built from configs (no downloads) keep the suite fast; PEFT itself is the oracle for
# matching and counting, lowpeft.reference in float64 for the numbers.

import copy

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import lowpeft
from lowpeft import model as model_level
from lowpeft import reference
from tests.tolerance import assert_matches_oracle

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from tests.tiny_models import DEVICES, tiny_gpt2, tiny_llama  # noqa: E402


MODELS = {"llama": tiny_llama, "gpt2": tiny_gpt2}
TARGETS = {
    "llama": [["q_proj", "v_proj"], "all-linear", r".*\.mlp\.(up|down)_proj", ["model.layers.1.self_attn.o_proj"]],
    "gpt2": [["c_attn"], "all-linear", r"transformer\.h\.0\.(attn|mlp)\.c_.*", ["mlp.c_proj"]],
}


def _peft_config(config: lowpeft.LoRAConfig):
    targets = config.target_modules if isinstance(config.target_modules, str) else list(config.target_modules)
    return peft.LoraConfig(r=config.r, lora_alpha=config.alpha, lora_dropout=config.dropout, target_modules=targets,
                           bias=config.bias, use_rslora=config.use_rslora)


@pytest.mark.parametrize("bad, error", [
    (dict(r=0), ValueError), (dict(r=2.0), TypeError), (dict(dropout=1.0), ValueError), (dict(dropout=-0.1), ValueError),
    (dict(bias="some"), ValueError), (dict(init="xavier"), ValueError), (dict(target_modules=[]), ValueError),
    (dict(target_modules=[""]), ValueError), (dict(target_modules=["q_proj", 3]), TypeError),
    (dict(target_modules=3), TypeError), (dict(alpha=float("nan")), ValueError), (dict(dropout="0.1"), TypeError), (dict(backend="gpu"), ValueError),
    (dict(adapter_dtype=3), TypeError), (dict(adapter_dtype="float8"), ValueError),
])
def test_lora_config_rejects_bad_values_naming_the_field(bad, error):
    with pytest.raises(error, match=next(iter(bad))):
        lowpeft.LoRAConfig(**bad)


def test_adapter_and_prompt_configs_reject_bad_values():
    with pytest.raises(ValueError, match="activation"):
        lowpeft.AdapterConfig(activation="tanh")
    with pytest.raises(ValueError, match="bottleneck"):
        lowpeft.AdapterConfig(bottleneck=0)
    with pytest.raises(ValueError, match="init_token_ids"):
        lowpeft.PromptTuningConfig(init="text")
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        lowpeft.PromptTuningConfig(num_virtual_tokens=0)


@pytest.mark.parametrize("family", sorted(MODELS))
@pytest.mark.parametrize("index", range(4))
@pytest.mark.parametrize("bias", ["none", "all", "lora_only"])
def test_matching_and_trainable_counts_equal_peft(family, index, bias, capsys):
    config = lowpeft.LoRAConfig(r=3, alpha=6, target_modules=TARGETS[family][index], bias=bias)
    ours = lowpeft.apply(MODELS[family](), config)
    theirs = peft.get_peft_model(MODELS[family](), _peft_config(config))
    their_paths = sorted(name.removeprefix("base_model.model.") for name, m in theirs.named_modules()
                         if type(m).__name__ == "Linear" and hasattr(m, "lora_A"))
    assert sorted(model_level.adapter_layers(ours)) == their_paths
    assert lowpeft.trainable_parameters(ours) == theirs.get_nb_trainable_parameters()
    lowpeft.print_trainable_parameters(ours)
    theirs.print_trainable_parameters()
    our_line, their_line = capsys.readouterr().out.strip().splitlines()
    assert our_line == their_line


@pytest.mark.parametrize("spelling", ["all-linear", "ALL-LINEAR", "All-Linear"])
def test_all_linear_skips_the_output_head_and_freezes_the_rest(spelling):
    # Any case, as PEFT reads it.
    config = lowpeft.LoRAConfig(r=2, target_modules=spelling)
    assert config.target_modules == "all-linear"
    model = lowpeft.apply(tiny_llama(), config)
    assert isinstance(model.lm_head, nn.Linear)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A" in n or ".lora_B" in n for n in trainable)
    assert isinstance(model.model.layers[0].mlp.down_proj, lowpeft.LoRALinear)


def test_nothing_matched_is_a_value_error_naming_config_and_modules():
    with pytest.raises(ValueError, match=r"target_modules: \('query',\).*model\.layers\.0\.self_attn\.q_proj"):
        lowpeft.apply(tiny_llama(), lowpeft.LoRAConfig(target_modules=["query"]))


def test_matching_an_unsupported_module_is_a_value_error():
    with pytest.raises(ValueError, match="LlamaAttention"):
        lowpeft.apply(tiny_llama(), lowpeft.LoRAConfig(target_modules=["self_attn"]))


def test_exclude_modules_drops_matches():
    config = lowpeft.LoRAConfig(target_modules="all-linear", exclude_modules=["down_proj"])
    model = lowpeft.apply(tiny_llama(), config)
    assert not any(p.endswith("down_proj") for p in model_level.adapter_layers(model))
    assert isinstance(model.model.layers[0].mlp.down_proj, nn.Linear)


def test_bad_arguments_are_named():
    with pytest.raises(TypeError, match="model"):
        lowpeft.apply("not a model", lowpeft.LoRAConfig())
    with pytest.raises(TypeError, match="config"):
        lowpeft.apply(tiny_llama(), {"r": 8})
    model = lowpeft.apply(tiny_llama(), lowpeft.LoRAConfig(target_modules=["q_proj"]))
    with pytest.raises(ValueError, match="adapter_name"):
        lowpeft.apply(model, lowpeft.LoRAConfig(target_modules=["q_proj"]))


def _randomise_adapters(model, seed=1):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for layer in model_level.adapter_layers(model).values():
            layer.lora_B.copy_(torch.randn(layer.lora_B.shape, generator=generator) * 0.5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", sorted(MODELS))
def test_fresh_adapter_keeps_logits_and_merge_unload_round_trip(family, device):
    base = MODELS[family]().to(device)
    ids = torch.randint(0, 97, (2, 9), device=device)
    base_logits = base(ids).logits
    base_logits64 = copy.deepcopy(base).double()(ids).logits
    originals = {name: m for name, m in base.named_modules() if name.endswith(("q_proj", "c_attn", "c_fc"))}
    model = lowpeft.apply(base, lowpeft.LoRAConfig(r=4, alpha=8, target_modules="all-linear"))
    assert_matches_oracle(model(ids).logits, base_logits, base_logits64, name="fresh adapter")
    _randomise_adapters(model)
    adapted = model(ids).logits
    adapted64 = copy.deepcopy(model).double()(ids).logits
    assert (adapted - base_logits).abs().max() > 1e-3
    lowpeft.merge(model)
    merged = model(ids).logits
    assert_matches_oracle(merged, adapted, adapted64, name="merged")
    lowpeft.unmerge(model)
    assert_matches_oracle(model(ids).logits, merged, adapted64, name="unmerged")
    lowpeft.merge_and_unload(model)
    assert not any(isinstance(m, lowpeft.LoRALinear) for m in model.modules())
    for name, module in originals.items():
        assert model.get_submodule(name) is module
    assert_matches_oracle(model(ids).logits, adapted, adapted64, name="merged and unloaded")
    assert lowpeft.trainable_parameters(model)[0] == 0


def test_merge_and_unload_of_hand_built_layers_gives_plain_modules():
    model = nn.Sequential(lowpeft.LoRALinear(7, 5, r=2), nn.ReLU(), lowpeft.LoRALinear(5, 3, r=3, bias=False))
    x = torch.randn(4, 7)
    _ = [nn.init.normal_(m.lora_B) for m in model if isinstance(m, lowpeft.LoRALinear)]
    expected = model(x)
    lowpeft.merge_and_unload(model)
    assert type(model[0]) is nn.Linear and type(model[2]) is nn.Linear and model[2].bias is None
    torch.testing.assert_close(model(x), expected, rtol=1e-5, atol=1e-6)


def test_new_layers_take_the_training_mode_of_the_modules_they_replace():
    model = lowpeft.apply(tiny_llama().eval(), lowpeft.LoRAConfig(r=2, dropout=0.5, target_modules="all-linear"))
    assert not any(layer.training for layer in model_level.adapter_layers(model).values())
    model.train()
    assert all(layer.training for layer in model_level.adapter_layers(model).values())


def test_gradients_reach_only_the_adapter():
    model = lowpeft.apply(tiny_gpt2(), lowpeft.LoRAConfig(r=2, target_modules="all-linear", dropout=0.1))
    model.train()
    ids = torch.randint(0, 97, (2, 6))
    model(ids, labels=ids).loss.backward()
    for name, param in model.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name
    assert all(isinstance(model_level.adapter_layers(model)[p].lora_A.grad, torch.Tensor)
               for p in model_level.adapter_layers(model))


# A stack of Linear layers of ragged sizes: the model's output against the float64 oracle layer by layer.
@settings(max_examples=12)
@given(
    sizes=st.lists(st.sampled_from([1, 7, 16, 33, 123]), min_size=2, max_size=4),
    rank=st.integers(1, 9),
    leading=st.sampled_from([(5,), (2, 3), (1,)]),
    non_contiguous=st.booleans(),
    rslora=st.booleans(),
    seed=st.integers(0, 2**16),
)
def test_applied_stack_matches_float64_oracle(sizes, rank, leading, non_contiguous, rslora, seed):
    torch.manual_seed(seed)
    layers = [nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:])]
    model = lowpeft.apply(nn.Sequential(*layers), lowpeft.LoRAConfig(r=rank, alpha=3, target_modules=r"\d+",
                                                                      use_rslora=rslora, backend="torch"))
    for layer in model:
        nn.init.normal_(layer.lora_B)
    x = torch.randn(*leading, sizes[0] * 2)[..., ::2] if non_contiguous else torch.randn(*leading, sizes[0])

    def oracle(dtype):
        h = x.to(dtype)
        for layer in model:
            h = reference.lora_linear(h, layer.weight.to(dtype), layer.bias.to(dtype), layer.lora_A.to(dtype),
                                      layer.lora_B.to(dtype), layer.scaling)
        return h

    assert_matches_oracle(model(x), oracle(torch.float32), oracle(torch.float64))


class _FakeQuantLinear(nn.Linear):
    """A Linear with a forward of its own (as a quantized or fake-quantized Linear has)."""

    def forward(self, x):
        return nn.functional.linear(x, torch.round(self.weight * 8) / 8, self.bias)


class _RenamedLinear(nn.Linear):
    """A subclass that keeps nn.Linear's forward (as MultiheadAttention's out_proj does)."""


def test_a_linear_with_a_forward_of_its_own_is_never_adapted():
    # lowpeft's layers read the weight: adapting this one would silently skip its forward.
    model = nn.Sequential(_FakeQuantLinear(8, 8), nn.ReLU(), _RenamedLinear(8, 8), nn.ReLU(), nn.Linear(8, 4))
    lowpeft.apply(model, lowpeft.LoRAConfig(r=2, target_modules="all-linear"))
    assert sorted(model_level.adapter_layers(model)) == ["2", "4"]
    with pytest.raises(ValueError, match="matched '0', a .*_FakeQuantLinear.*forward of its own"):
        lowpeft.apply(nn.Sequential(_FakeQuantLinear(8, 8)), lowpeft.LoRAConfig(r=2, target_modules=["0"]))


def test_merging_inside_disable_adapters_is_refused_and_leaves_the_model_as_it_was():
    # Inside the context the adapter's layers are swapped out, so nothing would be merged, where PEFT merges the
    # adapter: a clear error, and the adapter is back after the block.
    model = lowpeft.apply(nn.Sequential(nn.Linear(6, 6), nn.ReLU(), nn.Linear(6, 3)),
                          lowpeft.LoRAConfig(r=2, target_modules=["0"]))
    with model_level.disable_adapters(model):
        for action in (lowpeft.merge_and_unload, lowpeft.merge):
            with pytest.raises(ValueError, match="inside disable_adapters.*exit the context first"):
                action(model)
    assert isinstance(model[0], lowpeft.LoRALinear) and not model[0].merged
    assert model_level.adapter_names(model) == ["default"]


def test_falcon_linear_is_adapted_like_peft():
    # transformers' FalconLinear subclasses nn.Linear with a forward of its own that computes x Wᵀ + b exactly.
    config = transformers.FalconConfig(hidden_size=32, num_attention_heads=4, num_hidden_layers=2, vocab_size=64,
                                       new_decoder_architecture=False)
    base = transformers.FalconForCausalLM(config).eval()
    model = lowpeft.apply(copy.deepcopy(base), lowpeft.LoRAConfig(r=2, target_modules="all-linear"))
    theirs = peft.get_peft_model(copy.deepcopy(base), peft.LoraConfig(r=2, target_modules="all-linear"))
    wrapped = sorted(name.removeprefix("base_model.model.") for name, m in theirs.named_modules()
                     if hasattr(m, "lora_A") and hasattr(m, "base_layer"))
    assert sorted(model_level.adapter_layers(model)) == wrapped and len(wrapped) == 8
    ids = torch.randint(0, 64, (1, 5))
    torch.testing.assert_close(model(ids).logits, base(ids).logits, rtol=0, atol=0)


def test_adapter_dtype_keeps_the_factors_in_float32_on_a_bfloat16_model(tmp_path):
    # PEFT keeps LoRA factors in float32 on a 16-bit base: in bf16 most small AdamW updates round away.
    def factors_changed(adapter_dtype):
        torch.manual_seed(0)
        model = tiny_llama().to(torch.bfloat16)
        lowpeft.apply(model, lowpeft.LoRAConfig(r=4, target_modules=["q_proj"], init="gaussian",
                                                adapter_dtype=adapter_dtype))
        layer = model.model.layers[0].self_attn.q_proj
        with torch.no_grad():
            layer.lora_B.normal_()
        before = layer.lora_A.detach().clone()
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
        ids = torch.randint(0, 97, (2, 7))
        for _ in range(3):
            optimizer.zero_grad()
            model(input_ids=ids, labels=ids).loss.backward()
            optimizer.step()
        return layer.lora_A.dtype, (layer.lora_A != before).float().mean().item(), model

    dtype, changed, model = factors_changed("float32")
    assert dtype == torch.float32 and changed == 1.0
    dtype, changed_bf16, _ = factors_changed(None)
    assert dtype == torch.bfloat16 and changed_bf16 < 0.9
    lowpeft.save_adapter(model, tmp_path / "a")
    loaded = lowpeft.load_adapter(tiny_llama().to(torch.bfloat16), tmp_path / "a", adapter_dtype="float32")
    assert loaded.model.layers[0].self_attn.q_proj.lora_A.dtype == torch.float32
    lowpeft.load_adapter(loaded, tmp_path / "a", adapter_dtype="float32")  # the existing adapter, the same dtype
    lowpeft.load_adapter(loaded, tmp_path / "a", adapter_dtype=torch.float32)  # a torch.dtype names it too
    assert lowpeft.LoRAConfig(adapter_dtype=torch.float32).adapter_dtype == "float32"
    with pytest.raises(ValueError, match="adapter_dtype: 'bfloat16' applies when load_adapter adds the adapter"):
        lowpeft.load_adapter(loaded, tmp_path / "a", adapter_dtype="bfloat16")
