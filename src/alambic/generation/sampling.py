"""Choosing the next token of each row: logprobs of the served distribution, then temperature, top-k, top-p."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alambic.generation.params import SamplingParams


def served_logprobs(logits: torch.Tensor) -> torch.Tensor:
    """Log-probabilities the server reports: the model after its logits processors, before sampling warps."""
    return torch.log_softmax(logits.float(), dim=-1)  # (B, V)


def choose_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]
) -> list[int]:
    """One token per row of `logits` (B, V): argmax where temperature is 0, else a keyed random draw."""
    tokens = logits.argmax(dim=-1).tolist()
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if p.temperature <= 0:
            continue
        scores = logits[row].float() / p.temperature  # (V,)
        if 0 < p.top_k < scores.numel():
            kth_best = torch.topk(scores, p.top_k).values[-1]
            scores = scores.masked_fill(scores < kth_best, float("-inf"))
        if p.top_p < 1.0:
            sorted_scores, order = scores.sort(descending=True)
            sorted_probs = sorted_scores.softmax(dim=-1)
            mass_before = sorted_probs.cumsum(dim=-1) - sorted_probs
            # Keep the smallest prefix whose mass reaches top_p; the most likely token always stays.
            scores[order[mass_before >= p.top_p]] = float("-inf")
        tokens[row] = int(torch.multinomial(scores.softmax(dim=-1), 1, generator=generator))
    return tokens
