"""Teacher-forced forward passes over batches of token sequences, reading the logits only where they are used."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformers import PreTrainedModel


def right_padded(rows: Sequence[Sequence[int]], fill: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """The rows as one [batch, longest] tensor padded on the right with `fill`, and its attention mask."""
    length = max(len(row) for row in rows)
    values = torch.full((len(rows), length), fill, dtype=torch.long)
    mask = torch.zeros(len(rows), length, dtype=torch.long)
    for index, row in enumerate(rows):
        values[index, : len(row)] = torch.as_tensor(row, dtype=torch.long)
        mask[index, : len(row)] = 1
    return values, mask


def logits_where(
    model: PreTrainedModel, input_ids: torch.Tensor, attention_mask: torch.Tensor, keep: torch.Tensor
) -> torch.Tensor:
    """Float32 next-token logits [kept, vocab] at the positions where `keep` ([batch, length], bool) is true,
    in row-major order. The body runs on every position, the output head only on those kept: over a
    49k-token vocabulary the head costs as much as a small model's layers, and a full [batch, length, vocab]
    output is most of the memory. For models whose head is a plain projection (Llama's)."""
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
    return model.get_output_embeddings()(hidden[keep]).float()
