"""The contract between the sampling loop and a backend: rows join, step one token, and leave."""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from transformers import PreTrainedTokenizerBase


class ModelBackend(Protocol):
    """Holds the KV state of a batch of rows. Row order is the batch's; every call returns (rows, V) float32 logits.

    The tokenizer is the same Hugging Face tokenizer for every backend, so token ids, chat templates and
    logits processors (watermarks) mean the same thing whichever backend runs the model.
    """

    name: str
    tokenizer: PreTrainedTokenizerBase
    context_length: int
    eos_token_ids: frozenset[int]
    # KV cells shared by all rows (a row fills one per prompt or generated token), or None when the cache
    # grows as needed; the engine admits a request only when its prompt + max_tokens fits in what is left.
    kv_capacity: int | None
    # After `prefill`: how many of each new row's first prompt tokens the backend held already and did not compute
    # (a prefix cache; OpenAI's `usage.prompt_tokens_details.cached_tokens`)
    cached_tokens: list[int]
    # Threads for torch's own ops in the engine's thread (sampling, logits processors): a backend that runs the model
    # on its own threads (llama.cpp) takes one, as torch's pool, spinning idle after each op, would slow them down
    torch_threads: int

    def prefill(self, prompts: list[list[int]]) -> torch.Tensor:
        """Append one row per prompt; the logits of each new row's next token, (len(prompts), V).

        When it raises, the rows already there are as they were, and none was added."""
        ...

    def decode(self, tokens: list[int]) -> torch.Tensor:
        """Feed one token to every row, in row order; the logits of each row's next token, (rows, V).

        The tensor may be the backend's own buffer: valid, and writable, until the next call."""
        ...

    def keep(self, rows: list[int]) -> None:
        """Keep only `rows` (indices into the current order, ascending), freeing the others' state."""
        ...


@runtime_checkable
class DraftingBackend(ModelBackend, Protocol):
    """A backend that can run a guessed continuation of its only row in one forward pass and take back what the
    sampler did not then choose (speculative decoding, `generation.speculation`)."""

    def decode_ahead(self, token: int, draft: list[int]) -> torch.Tensor:
        """Feed the only row `token`, then `draft`; the logits after each of them, (1 + len(draft), V).

        The tensor may be the backend's own buffer: valid until the next call."""
        ...

    def rewind(self, tokens: int) -> None:
        """Take the last `tokens` fed to the only row back out of its state."""
        ...
