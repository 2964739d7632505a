# lowpeft.data: the small text the demo and the model benchmark train on, and a byte-level tokenizer, so that
# neither downloads anything.
#
# The text (river.txt, about 5 KB of prose written for lowpeft and dedicated to the public domain, CC0) ships
# inside the package. Trade-off: a byte-level tokenizer (vocabulary 256, one token per UTF-8 byte) needs no
# vocabulary file and round-trips any text exactly, at the price of longer sequences than a learned vocabulary;
# for a demo and a benchmark that only need real, learnable data of a known size this is the right side.
from __future__ import annotations

from importlib import resources

import torch

__all__ = ["TEXT_NAME", "ByteTokenizer", "load_text", "sample_windows"]

TEXT_NAME = "river.txt"


def load_text() -> str:
    """The text shipped with lowpeft (lowpeft/data/river.txt)."""
    return resources.files(__name__).joinpath(TEXT_NAME).read_text(encoding="utf-8")


class ByteTokenizer:
    """One token per UTF-8 byte: ids 0..255, no special tokens."""

    vocab_size = 256

    def encode(self, text: str) -> torch.Tensor:
        """The UTF-8 bytes of `text` as an int64 tensor [len(bytes)]."""
        if not isinstance(text, str):
            raise TypeError(f"text: expected a str, got {type(text).__name__}")
        return torch.tensor(list(text.encode("utf-8")), dtype=torch.int64)

    def decode(self, ids) -> str:
        """The text of a sequence of byte ids; a byte sequence cut inside a character decodes to U+FFFD."""
        values = ids.tolist() if isinstance(ids, torch.Tensor) else list(ids)
        for value in values:
            if not isinstance(value, int) or not 0 <= value < self.vocab_size:
                raise ValueError(f"ids: expected integers in [0, {self.vocab_size}), got {value!r}")
        return bytes(values).decode("utf-8", errors="replace")


def sample_windows(token_ids: torch.Tensor, batch_size: int, seq_len: int, generator: torch.Generator) -> torch.Tensor:
    """A batch [batch_size, seq_len] of windows of `token_ids` starting at offsets drawn from `generator`.

    A text shorter than seq_len + 1 is repeated end to end first, so any window length works (a benchmark at
    sequence 2048 trains on the 5 KB text as well as the demo does).
    """
    if not isinstance(token_ids, torch.Tensor) or token_ids.dim() != 1 or token_ids.numel() == 0:
        raise ValueError(f"token_ids: expected a non-empty 1-D tensor, got {token_ids!r:.80}")
    for name, value in (("batch_size", batch_size), ("seq_len", seq_len)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}: expected a positive int, got {value!r}")
    repeats = -(-(seq_len + 1) // token_ids.numel())
    source = token_ids.repeat(repeats) if repeats > 1 else token_ids
    starts = torch.randint(0, source.numel() - seq_len + 1, (batch_size,), generator=generator)
    return torch.stack([source[start : start + seq_len] for start in starts.tolist()])
