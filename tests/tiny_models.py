# Tiny transformers models built from configs (no downloads) and the device list the model-level tests share.
#
# Trade-off: one definition so every model-level test file exercises the same architectures; the sizes are
# the smallest that still have every layer kind PEFT targets (q/k/v/o, gate/up/down, GPT-2's Conv1D).
import pytest
import torch

transformers = pytest.importorskip("transformers")

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


def tiny_llama(seed=0, layers=2, attention_bias=False):
    """A LlamaForCausalLM (hidden 32, 4 heads, 2 KV heads, vocabulary 97) in eval mode, weights from `seed`."""
    torch.manual_seed(seed)
    config = transformers.LlamaConfig(hidden_size=32, intermediate_size=48, num_hidden_layers=layers,
                                      num_attention_heads=4, num_key_value_heads=2, vocab_size=97,
                                      max_position_embeddings=64, attention_bias=attention_bias)
    return transformers.LlamaForCausalLM(config).eval()


def tiny_gpt2(seed=0, layers=2):
    """A GPT2LMHeadModel (hidden 32, 2 heads, vocabulary 97; Conv1D layers) in eval mode, weights from `seed`;
    the model's own dropouts are off, so training-mode comparisons see only LoRA's dropout."""
    torch.manual_seed(seed)
    config = transformers.GPT2Config(n_embd=32, n_layer=layers, n_head=2, vocab_size=97, n_positions=64,
                                     bos_token_id=0, eos_token_id=0, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    return transformers.GPT2LMHeadModel(config).eval()


def tiny_llama_with_attention_bias(seed=0):
    """The tiny Llama with q/k/v/o biases, so bias="all" / "lora_only" have biases to train, save and load."""
    return tiny_llama(seed, attention_bias=True)


ROUND_TRIP_MODELS = {"llama": tiny_llama_with_attention_bias, "gpt2": tiny_gpt2}
