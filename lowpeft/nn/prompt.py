# Prompt tuning: PromptEmbedding (the trainable virtual-token embeddings) and prepend_prompt, which rewrites a
# causal-LM call's arguments exactly as PEFT's PeftModelForCausalLM does for PROMPT_TUNING: input_ids become
# inputs_embeds with the prompt in front, attention_mask gains a column of ones per virtual token and labels
# a column of -100 per virtual token (so the loss ignores the prompt), and logits cover prompt + input.
#
# Trade-off: lowpeft installs prepend_prompt as a forward pre-hook on the user's own model (lowpeft.apply) instead
# of wrapping it in a new class, so Trainer, torch.compile and the model's own methods see the model they know;
# the price is that generation with a KV cache (calls after the first) is refused rather than half supported.
from __future__ import annotations

from typing import Any, Optional

import torch
from torch import nn

__all__ = ["PromptEmbedding", "prepend_prompt"]

IGNORE_INDEX = -100


class PromptEmbedding(nn.Module):
    """`num_virtual_tokens` trainable embeddings of width `dim` (parameter `weight`, [num_virtual_tokens, dim]).

    init: "random" (any case; N(0, 1), as nn.Embedding and PEFT's RANDOM init) or a tensor [num_virtual_tokens, dim] of
    initial values (lowpeft.apply builds it from token embeddings for text / vocabulary-sample inits).
    forward(batch_size) returns the prompt expanded to [batch_size, num_virtual_tokens, dim] (no copy).
    """

    def __init__(self, num_virtual_tokens: int, dim: int, init: Any = "random", *, device=None, dtype=None):
        super().__init__()
        for name, value in (("num_virtual_tokens", num_virtual_tokens), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, int):
                raise TypeError(f"{name}: expected an int, got {type(value).__name__} {value!r}")
            if value <= 0:
                raise ValueError(f"{name}: expected a positive int, got {value}")
        self.num_virtual_tokens, self.dim = num_virtual_tokens, dim
        self.weight = nn.Parameter(torch.empty(num_virtual_tokens, dim, device=device, dtype=dtype))
        with torch.no_grad():
            if isinstance(init, torch.Tensor):
                if tuple(init.shape) != (num_virtual_tokens, dim):
                    raise ValueError(
                        f"init: expected a tensor of shape [{num_virtual_tokens}, {dim}], got {tuple(init.shape)}"
                    )
                self.weight.copy_(init)
            elif isinstance(init, str) and init.lower() == "random":  # any case, as PEFT's RANDOM
                nn.init.normal_(self.weight)
            else:
                raise ValueError(f"init: expected 'random' or a [{num_virtual_tokens}, {dim}] tensor, got {init!r}")

    def forward(self, batch_size: int) -> torch.Tensor:
        return self.weight.unsqueeze(0).expand(batch_size, -1, -1)

    def extra_repr(self) -> str:
        return f"num_virtual_tokens={self.num_virtual_tokens}, dim={self.dim}"


def _cache_length(past_key_values: Any) -> int:
    if past_key_values is None:
        return 0
    if hasattr(past_key_values, "get_seq_length"):
        return int(past_key_values.get_seq_length())
    return len(past_key_values)


def _default_positions(position_ids: torch.Tensor) -> bool:
    expected = torch.arange(position_ids.shape[-1], device=position_ids.device)
    return bool((position_ids == expected).all())


def prepend_prompt(prompt: PromptEmbedding, input_embeddings: nn.Module, args: tuple, kwargs: dict) -> dict:
    """The keyword arguments of a causal-LM forward call with the prompt prepended (PEFT's PROMPT_TUNING rule).

    `args` may hold input_ids as the only positional argument. position_ids equal to the default 0..L-1 are
    dropped (the model renumbers prompt + input, as PEFT does); custom position_ids and token_type_ids are
    refused (PEFT drops them with a warning; lowpeft would rather not compute something other than what was asked).
    """
    kwargs = dict(kwargs)
    if len(args) > 1:
        raise TypeError(
            f"prompt tuning: expected input_ids as the only positional argument (pass the rest by keyword), "
            f"got {len(args)} positional arguments"
        )
    if args:
        if "input_ids" in kwargs:
            raise TypeError("prompt tuning: input_ids given both positionally and by keyword")
        kwargs["input_ids"] = args[0]
    if _cache_length(kwargs.get("past_key_values")) > 0:
        raise NotImplementedError(
            "prompt tuning: calls with a non-empty past_key_values cache (generation steps after the first) are "
            "not supported by lowpeft's prompt tuning; generate with use_cache=False, or load the saved prompt "
            "into stock PEFT (PeftModel.from_pretrained) for cached generation"
        )
    position_ids = kwargs.pop("position_ids", None)
    if position_ids is not None and not _default_positions(position_ids):
        raise ValueError(
            "position_ids: prompt tuning renumbers positions to cover the virtual tokens (as PEFT does), so only "
            "the default 0..L-1 can be passed; got custom position ids (generate() makes them from a left-padded "
            "attention mask: generate one unpadded sequence at a time, or load the saved prompt into stock PEFT)"
        )
    if kwargs.get("token_type_ids") is not None:
        raise ValueError("token_type_ids: not supported with prompt tuning (PEFT drops them too); got a tensor")
    input_ids: Optional[torch.Tensor] = kwargs.pop("input_ids", None)
    inputs_embeds: Optional[torch.Tensor] = kwargs.get("inputs_embeds")
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("prompt tuning: expected exactly one of input_ids and inputs_embeds, got "
                         f"{'both' if input_ids is not None else 'neither'}")
    if inputs_embeds is None:
        inputs_embeds = input_embeddings(input_ids)
    batch_size = inputs_embeds.shape[0]
    virtual = prompt.num_virtual_tokens
    prompts = prompt(batch_size).to(dtype=inputs_embeds.dtype, device=inputs_embeds.device)
    kwargs["inputs_embeds"] = torch.cat((prompts, inputs_embeds), dim=1)
    attention_mask = kwargs.get("attention_mask")
    if attention_mask is not None:
        prefix = attention_mask.new_ones(batch_size, virtual)
        kwargs["attention_mask"] = torch.cat((prefix, attention_mask), dim=1)
    labels = kwargs.get("labels")
    if labels is not None:
        prefix = labels.new_full((batch_size, virtual), IGNORE_INDEX)
        kwargs["labels"] = torch.cat((prefix, labels), dim=1)
    return kwargs
