# Prompt tuning: PromptEmbedding, lowpeft.apply(model, PromptTuningConfig) prepending virtual tokens with
# attention_mask / labels extended as PEFT does, inits (random, text token ids, vocabulary sample), and the
# PEFT-format round trip (prompt_embeddings key) both ways with logits equal to PEFT's.
#
# Trade-off: PEFT's PeftModelForCausalLM is the oracle for the rewritten call, on a tiny Llama from a config.
import pytest
import torch

import lowpeft
from lowpeft import model as model_level

transformers = pytest.importorskip("transformers")
peft = pytest.importorskip("peft")

from tests.tiny_models import DEVICES, tiny_llama  # noqa: E402


def test_prompt_embedding_shapes_and_bad_input():
    prompt = lowpeft.PromptEmbedding(5, 8)
    assert prompt(3).shape == (3, 5, 8) and prompt.weight.requires_grad
    init = torch.randn(5, 8)
    torch.testing.assert_close(lowpeft.PromptEmbedding(5, 8, init=init).weight.detach(), init)
    with pytest.raises(ValueError, match="num_virtual_tokens"):
        lowpeft.PromptEmbedding(0, 8)
    with pytest.raises(ValueError, match=r"init: expected a tensor of shape \[5, 8\]"):
        lowpeft.PromptEmbedding(5, 8, init=torch.randn(4, 8))
    with pytest.raises(ValueError, match="init"):
        lowpeft.PromptEmbedding(5, 8, init="zeros")


@pytest.mark.parametrize("device", DEVICES)
def test_logits_loss_and_counts_match_peft_both_ways(device, tmp_path, capsys):
    ids = torch.randint(1, 97, (3, 7), device=device)
    mask = torch.ones_like(ids)
    mask[0, :2] = 0
    labels = ids.clone()
    model = lowpeft.apply(tiny_llama().to(device), lowpeft.PromptTuningConfig(num_virtual_tokens=4))
    out = model(input_ids=ids, attention_mask=mask, labels=labels)
    assert out.logits.shape == (3, 11, 97)
    lowpeft.save_adapter(model, tmp_path / "ours")
    theirs = peft.PeftModel.from_pretrained(tiny_llama().to(device), tmp_path / "ours").eval()
    expected = theirs(input_ids=ids, attention_mask=mask, labels=labels)
    torch.testing.assert_close(out.logits, expected.logits, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out.loss, expected.loss, rtol=1e-5, atol=1e-6)
    lowpeft.print_trainable_parameters(model)
    theirs.print_trainable_parameters()
    ours_line, theirs_line = capsys.readouterr().out.strip().splitlines()
    assert ours_line == theirs_line
    peft_model = peft.get_peft_model(tiny_llama(1).to(device), peft.PromptTuningConfig(task_type="CAUSAL_LM",
                                                                                       num_virtual_tokens=6))
    peft_model.eval()
    peft_model.save_pretrained(tmp_path / "peft")
    loaded = lowpeft.load_adapter(tiny_llama(1).to(device), tmp_path / "peft")
    torch.testing.assert_close(loaded(ids, attention_mask=mask).logits, peft_model(input_ids=ids, attention_mask=mask).logits,
                               rtol=1e-5, atol=1e-6)


def test_training_moves_only_the_prompt():
    model = lowpeft.apply(tiny_llama(), lowpeft.PromptTuningConfig(num_virtual_tokens=3))
    model.train()
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    assert trainable == ["lowpeft_prompt.weight"]
    frozen = {name: p.detach().clone() for name, p in model.named_parameters() if not p.requires_grad}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1.0)
    ids = torch.randint(0, 97, (2, 6))
    before = model_level.adapter_prompt(model).weight.detach().clone()
    model(input_ids=ids, labels=ids).loss.backward()
    optimizer.step()
    assert not torch.equal(model_level.adapter_prompt(model).weight, before)
    assert all(torch.equal(p, frozen[name]) for name, p in model.named_parameters() if name in frozen)


def test_text_and_vocabulary_inits_and_refusals():
    model = tiny_llama()
    embeddings = model.get_input_embeddings().weight.detach().clone()
    lowpeft.apply(model, lowpeft.PromptTuningConfig(num_virtual_tokens=5, init="text", init_token_ids=[3, 8]))
    torch.testing.assert_close(model_level.adapter_prompt(model).weight.detach(), embeddings[[3, 8, 3, 8, 3]])
    # PEFT's spellings (PromptTuningInit.TEXT, SAMPLE_VOCAB, RANDOM) work too.
    assert lowpeft.PromptTuningConfig(init="TEXT", init_token_ids=[3]).init == "text"
    assert lowpeft.PromptTuningConfig(init="RANDOM").init == "random"
    assert lowpeft.PromptEmbedding(3, 4, init="RANDOM").weight.shape == (3, 4)
    sampled = lowpeft.apply(tiny_llama(), lowpeft.PromptTuningConfig(num_virtual_tokens=4, init="SAMPLE_VOCAB"))
    rows = model_level.adapter_prompt(sampled).weight.detach()
    assert all((embeddings == row).all(dim=1).any() for row in rows)
    with pytest.raises(ValueError, match="init_token_ids"):
        lowpeft.apply(tiny_llama(), lowpeft.PromptTuningConfig(num_virtual_tokens=2, init="text", init_token_ids=[500]))
    ids = torch.randint(0, 97, (1, 4))
    with pytest.raises(ValueError, match="position_ids"):
        model(input_ids=ids, position_ids=torch.arange(1, 5)[None])
    with pytest.raises(ValueError, match="exactly one of input_ids and inputs_embeds"):
        model(attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="get_input_embeddings"):
        lowpeft.apply(torch.nn.Sequential(torch.nn.Linear(2, 2)), lowpeft.PromptTuningConfig())


def test_uncached_generation_and_removal():
    model = lowpeft.apply(tiny_llama(), lowpeft.PromptTuningConfig(num_virtual_tokens=3))
    ids = torch.randint(1, 97, (1, 4))
    generated = model.generate(ids, max_new_tokens=3, do_sample=False, use_cache=False, pad_token_id=0)
    assert generated.shape == (1, 7)
    model_level.delete_adapter(model, "default")
    assert model(ids).logits.shape == (1, 4, 97)
    assert "lowpeft_prompt" not in dict(model.named_children())
