# Selective fine-tuning: lowpeft.freeze(model, trainable=[patterns]) and unfreeze_last_blocks(model, n, head),
# with the trainable report; patterns that match nothing and impossible block counts are named errors.
#
# Trade-off: counts are checked against sums computed directly from the modules involved.
import pytest
import torch
from torch import nn

import lowpeft

transformers = pytest.importorskip("transformers")

from tests.tiny_models import tiny_gpt2 as _tiny_gpt2  # noqa: E402
from tests.tiny_models import tiny_llama as _tiny_llama  # noqa: E402


def tiny_llama(seed=0):
    """Three blocks, so "the last N blocks" has a first block to leave frozen; in training mode."""
    return _tiny_llama(seed, layers=3).train()


def tiny_gpt2(seed=0):
    return _tiny_gpt2(seed, layers=3).train()


def _count(*modules):
    seen = {}
    for module in modules:
        seen.update({id(p): p.numel() for p in module.parameters()})
    return sum(seen.values())


def test_freeze_with_globs_module_paths_and_names(capsys):
    model = lowpeft.freeze(tiny_llama(), trainable=["lm_head", "model.layers.2.*", "model.norm.weight"])
    expected = _count(model.lm_head, model.model.layers[2], model.model.norm)
    assert lowpeft.trainable_parameters(model) == (expected, _count(model))
    lowpeft.print_trainable_parameters(model)
    assert capsys.readouterr().out.startswith(f"trainable params: {expected:,d} || all params: ")
    lowpeft.freeze(model)
    assert lowpeft.trainable_parameters(model)[0] == 0


@pytest.mark.parametrize("pattern", ["lm_head", "lm_head.weight", "lm_head.*"])
def test_freeze_by_a_tied_parameters_second_name(pattern):
    # GPT-2's lm_head.weight is its token embedding: named either way, the one parameter trains.
    model = lowpeft.freeze(_tiny_gpt2(), trainable=[pattern])
    assert model.lm_head.weight is model.transformer.wte.weight and model.lm_head.weight.requires_grad
    assert lowpeft.trainable_parameters(model)[0] == model.lm_head.weight.numel()
    lowpeft.freeze(model, trainable=["transformer.ln_f"])
    assert not model.lm_head.weight.requires_grad


def test_freeze_errors_name_the_argument():
    with pytest.raises(ValueError, match=r"trainable: patterns \['decoder\.\*'\] match no parameter"):
        lowpeft.freeze(tiny_llama(), trainable=["decoder.*"])
    with pytest.raises(TypeError, match="trainable"):
        lowpeft.freeze(tiny_llama(), trainable="lm_head")


@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_unfreeze_last_blocks_and_head(family):
    model = lowpeft.freeze(tiny_llama() if family == "llama" else tiny_gpt2())
    blocks = model.model.layers if family == "llama" else model.transformer.h
    lowpeft.unfreeze_last_blocks(model, 2)
    expected = _count(blocks[1], blocks[2], model.get_output_embeddings())
    assert lowpeft.trainable_parameters(model)[0] == expected
    assert not any(p.requires_grad for p in blocks[0].parameters())
    ids = torch.randint(0, 97, (2, 5))
    model(ids, labels=ids).loss.backward()
    assert all(p.grad is not None for p in blocks[2].parameters())
    assert all(p.grad is None for p in blocks[0].parameters())


def test_unfreeze_last_blocks_bad_input():
    with pytest.raises(ValueError, match="n: expected at most the model's 3"):
        lowpeft.unfreeze_last_blocks(tiny_llama(), 4)
    with pytest.raises(ValueError, match="n: expected a non-negative int"):
        lowpeft.unfreeze_last_blocks(tiny_llama(), -1)
    with pytest.raises(ValueError, match="transformer blocks"):
        lowpeft.unfreeze_last_blocks(torch.nn.Linear(2, 2), 1)
    stack = torch.nn.Sequential(torch.nn.ModuleList([torch.nn.Linear(2, 2) for _ in range(2)]))
    with pytest.raises(ValueError, match="head"):
        lowpeft.unfreeze_last_blocks(stack, 1)
    lowpeft.unfreeze_last_blocks(stack, 1, head=False)


def test_selective_and_lora_together():
    model = lowpeft.apply(tiny_llama(), lowpeft.LoRAConfig(r=2, target_modules=["q_proj"]))
    lora = lowpeft.trainable_parameters(model)[0]
    lowpeft.unfreeze_last_blocks(model, 0, head=True)
    assert lowpeft.trainable_parameters(model)[0] == lora + model.lm_head.weight.numel()


def test_freeze_keeps_complex_parameters_trainable():
    model = nn.Module()
    model.phase = nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    model.linear = nn.Linear(2, 2)
    lowpeft.freeze(model, trainable=["*"])
    assert model.phase.requires_grad and model.linear.weight.requires_grad
