# torch.compile(fullgraph=True) of a whole tiny Llama with lowpeft LoRA layers trains (loss falls, gradients
# as in eager), and changing token counts does not recompile every step (dynamic shapes after the first change).
#
# Trade-off: on the CPU the graph goes through aot_eager (the capture, the custom op's fake kernel and autograd
# are what is under test; inductor's C++ build would dominate the suite's time); on a GPU through inductor.
import pytest
import torch

import lowpeft

transformers = pytest.importorskip("transformers")

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
COMPILE_BACKEND = "inductor" if DEVICE == "cuda" else "aot_eager"


def _lora_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=4,
                                      num_key_value_heads=2, vocab_size=61, max_position_embeddings=128,
                                      initializer_range=0.3, use_cache=False)
    model = transformers.LlamaForCausalLM(config).to(DEVICE)
    return lowpeft.apply(model, lowpeft.LoRAConfig(r=4, alpha=8, target_modules="all-linear")).train()


def test_compiled_model_trains_without_recompiling_every_step():
    import torch._dynamo

    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = _lora_llama()
    compiled = torch.compile(model, fullgraph=True, backend=COMPILE_BACKEND)
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    generator = torch.Generator().manual_seed(0)
    lengths = [8, 12, 9, 16, 11, 13, 10, 15, 14, 8]
    losses = []
    for length in lengths:
        start = torch.randint(0, 50, (4, 1), generator=generator)
        ids = ((start + torch.arange(length) % 5) % 61).to(DEVICE)
        loss = compiled(input_ids=ids, labels=ids).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    frames = torch._dynamo.utils.counters["stats"]["unique_graphs"]
    assert frames <= 3, f"{frames} graphs compiled for {len(set(lengths))} token counts"
    assert losses[-1] < losses[0], losses


def test_compiled_gradients_equal_eager():
    import torch._dynamo

    torch._dynamo.reset()
    model = _lora_llama()
    ids = torch.randint(0, 61, (2, 10), device=DEVICE)
    model(input_ids=ids, labels=ids).loss.backward()
    eager = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    model.zero_grad(set_to_none=True)
    torch.compile(model, fullgraph=True, backend=COMPILE_BACKEND)(input_ids=ids, labels=ids).loss.backward()
    for name, grad in eager.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-4, atol=1e-6, msg=name)
