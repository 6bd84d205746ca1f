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


TOP_P_CANDIDATES = 256  # top-p looks for its cut among a row's best tokens first, and sorts the row only if not there


def choose_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]
) -> list[int]:
    """One token per row of `logits` (B, V): argmax where temperature is 0, else a keyed random draw.

    The sampled rows are drawn together, as tensor operations over the batch: temperature, top-k and top-p
    as per-row thresholds, then an exponential race (as `torch.multinomial` draws one sample): the token with
    the largest weight / E, E ~ Exp(1) drawn per token from the row's own generator. So a row's draws depend
    on its seed and its logits only, never on which rows share its batch; and a small change in the logits
    (llama.cpp is not batch-invariant) changes the winner only between near-equal contenders, where an
    inverse CDF over the vocabulary would shift every token after the change."""
    rows = [row for row, p in enumerate(params) if p.temperature > 0]
    greedy = [row for row, p in enumerate(params) if p.temperature <= 0]
    # argmax (with indices) is 15x slower than amax over a vocabulary: taken only for the greedy rows
    tokens = torch.zeros(len(params), dtype=torch.long)
    if greedy:
        tokens[greedy] = _rows(logits, greedy).argmax(dim=-1)
    if rows:
        chosen = _rows(logits, rows)
        sampled = [params[row] for row in rows]
        # (logits - best) / temperature in one pass: the scaled scores, their maximum 0 (exp cannot overflow)
        inverse_temperatures = torch.tensor([[1.0 / p.temperature] for p in sampled])
        scores = torch.addcmul(
            -chosen.amax(dim=-1, keepdim=True).float() * inverse_temperatures, chosen.float(), inverse_temperatures
        )
        _top_k(scores, [p.top_k for p in sampled])
        _top_p(scores, [p.top_p for p in sampled])
        draws = torch.empty_like(scores)
        for draw, row in zip(draws, rows, strict=True):
            draw.uniform_(generator=generators[row])
        # -log(u) ~ Exp(1); a draw u = 0 gives +inf, which no token wins with
        tokens[rows] = scores.exp_().div_(draws.log_().neg_()).argmax(dim=-1)
    return tokens.tolist()


def _rows(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
    """`logits[rows]`, without a copy when that is every row."""
    return logits if len(rows) == len(logits) else logits[rows]


def _top_k(scores: torch.Tensor, top_k: list[int]) -> None:
    """Scores below each row's k-th best set to -inf, in place (k 0, or k at least V, is off)."""
    vocabulary = scores.shape[1]
    on = [0 < k < vocabulary for k in top_k]
    if not any(on):
        return
    values = torch.topk(scores, max(k for k, used in zip(top_k, on, strict=True) if used)).values
    kth = values.gather(1, torch.tensor([[k - 1 if used else 0] for k, used in zip(top_k, on, strict=True)]))
    kth[~torch.tensor(on)] = float("-inf")
    scores.masked_fill_(scores < kth, float("-inf"))


def _top_p(scores: torch.Tensor, top_p: list[float]) -> None:
    """Each row keeps the smallest set of its best tokens whose mass reaches its top_p (1 is off), in place;
    the most likely token always stays. The cut is looked for among the best `TOP_P_CANDIDATES` tokens, and
    only a row whose cut lies beyond them is sorted whole."""
    rows = [row for row, p in enumerate(top_p) if p < 1.0]
    if not rows:
        return
    thresholds = torch.tensor([[top_p[row]] for row in rows])
    probs = scores[rows].softmax(dim=-1)
    best_probs, best_ids = probs.topk(min(TOP_P_CANDIDATES, probs.shape[1]))
    if not bool((best_probs.sum(dim=-1, keepdim=True) >= thresholds).all()):
        best_probs, best_ids = probs.sort(dim=-1, descending=True)
    mass_before = best_probs.cumsum(dim=-1) - best_probs
    keep = torch.zeros_like(probs, dtype=torch.bool).scatter_(1, best_ids, mass_before < thresholds)
    scores[rows] = scores[rows].masked_fill_(~keep, float("-inf"))
