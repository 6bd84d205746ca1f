"""Choosing the next token of each row: the logprobs served with it, then temperature, top-k, top-p."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from alambic.generation.params import LogitsProcessor, SamplingParams

# What OpenAI reports for a token that cannot be sampled: JSON has no -inf (Python writes -Infinity, which
# no client parses), and a ban or a Gumbel watermark leaves most of the vocabulary at -inf.
LOGPROB_FLOOR = -9999.0


def shows_in_logprobs(processors: Sequence[LogitsProcessor]) -> bool:
    """Whether a row's logprobs are taken after its logits processors: unless one of them keeps out of them
    (`shows_in_logprobs = False`, a watermark serving plain logprobs)."""
    return all(getattr(processor, "shows_in_logprobs", True) for processor in processors)


def served_logprobs(
    logits: torch.Tensor, model_rows: Sequence[int] = (), model_logits: torch.Tensor | None = None
) -> torch.Tensor:
    """Log-probabilities the server reports (B, V), before temperature, top-k and top-p: of `logits`, those
    sampled from (after the min_tokens ban and the logits processors), except for `model_rows`, whose
    `model_logits` (R, V) are taken before the processors. Never below `LOGPROB_FLOOR`, never NaN."""
    logprobs = torch.log_softmax(logits.float(), dim=-1)
    if len(model_rows):
        logprobs[list(model_rows)] = torch.log_softmax(model_logits.float(), dim=-1)
    return logprobs.nan_to_num_(nan=LOGPROB_FLOOR).clamp_(min=LOGPROB_FLOOR)  # NaN: a row left with no token


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
