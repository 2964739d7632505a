# Activation checkpointing (transformers' gradient checkpointing, use_reentrant True and False) gives the same
# gradients as running without it, LoRA dropout included: the op draws its dropout seed from torch's CPU
# generator, whose state checkpointing restores before recomputing the forward.
#
# Trade-off: a tiny Llama keeps this fast; with reentrant checkpointing the inputs must require grad (the
# frozen embedding would otherwise cut the graph), which enable_input_require_grads provides, as PEFT does.
import pytest
import torch

import lowpeft

transformers = pytest.importorskip("transformers")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def _lora_llama(device, dropout):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=97, max_position_embeddings=64)
    model = transformers.LlamaForCausalLM(config).to(device)
    lowpeft.apply(model, lowpeft.LoRAConfig(r=4, alpha=8, dropout=dropout, target_modules="all-linear"))
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.1)
    return model.train()


def _gradients(model, ids):
    torch.manual_seed(1234)
    model.zero_grad(set_to_none=True)
    model(ids, labels=ids).loss.backward()
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("use_reentrant", [True, False])
@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_checkpointing_keeps_gradients(device, use_reentrant, dropout):
    model = _lora_llama(device, dropout)
    ids = torch.randint(0, 97, (2, 12), device=device)
    plain = _gradients(model, ids)
    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": use_reentrant})
    if use_reentrant:
        model.enable_input_require_grads()
    checkpointed = _gradients(model, ids)
    assert plain.keys() == checkpointed.keys() and plain
    for name, grad in plain.items():
        torch.testing.assert_close(checkpointed[name], grad, rtol=1e-5, atol=1e-7, msg=name)
    if dropout:
        torch.manual_seed(99)
        model.zero_grad(set_to_none=True)
        model(ids, labels=ids).loss.backward()
        name = next(iter(plain))
        assert not torch.allclose(dict(model.named_parameters())[name].grad, plain[name])
