"""The contract between the sampling loop and a backend: rows join, step one token, and leave."""

from __future__ import annotations

from typing import Protocol

import torch
from transformers import PreTrainedTokenizerBase


class ModelBackend(Protocol):
    """Holds the KV state of a batch of rows. Row order is the batch's; every call returns (rows, V) logits.

    The tokenizer is the same Hugging Face tokenizer for every backend, so token ids, chat templates and
    logits processors (watermarks) mean the same thing whichever backend runs the model.
    """

    name: str
    tokenizer: PreTrainedTokenizerBase
    context_length: int
    eos_token_ids: frozenset[int]

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Append one row per prompt; the logits of each new row's next token, (len(prompts), V)."""
        ...

    def decode(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token to every row, in row order; the logits of each row's next token, (rows, V).

        The tensor may be the backend's own buffer: valid, and writable, until the next call."""
        ...

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (indices into the current order, ascending), freeing the others' state."""
        ...
