"""Choosing the next token of each row: the logprobs served with it, then temperature, top-k, top-p."""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
import torch

from alambic.generation.params import LogitsProcessor, SamplingParams
from alambic.splitmix import GOLDEN, splitmix64

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
# A token races on its own draw when its weight is at least e^-RACED_ALONE_WITHIN of its row's best; the others
# race as one contender of their summed weight, and among themselves only when that contender wins
RACED_ALONE_WITHIN = 12.0
_UINT64 = (1 << 64) - 1
_REST_ID = 1 << 40  # the draw of the contender standing for a row's unlikely tokens: no token has this id


class RowDraws:
    """A sampled row's keyed random stream: the draw of token `i` at step `t` is SplitMix64's output for (seed, t,
    i). A row's draws depend on its seed and how many tokens it has drawn, never on its batch, and a token's draw
    is its own whether or not another token near it in probability is looked at."""

    def __init__(self, seed: int) -> None:
        self.key = int(_mix(np.array([seed & _UINT64], dtype=np.uint64))[0])
        self.step = 0


def choose_tokens(logits: torch.Tensor, params: Sequence[SamplingParams], draws: Sequence[RowDraws]) -> list[int]:
    """One token per row of `logits` (B, V): argmax where temperature is 0, else a keyed random draw.

    The sampled rows are scaled by their temperature; top-k and top-p, where a row asks for them, set the tokens they
    exclude to -inf, as tensor operations over the batch. Then a Gumbel-max race per row, argmax(score + G), with
    each token's G keyed by the row's seed, its step and the token (`RowDraws`): a small change in the logits
    (llama.cpp is not batch-invariant) changes the winner only between near-equal contenders, where an inverse CDF
    over the vocabulary would shift every token after the change. Only the tokens within `RACED_ALONE_WITHIN` of a
    row's best race on their own draws; the others race as one contender, the most a set of Gumbel-perturbed scores
    reaches being itself a Gumbel around the log of their summed weight, and if it wins, the winner among them is
    raced on their own draws (the argmax of a Gumbel race is independent of its maximum): the same distribution as
    racing them all."""
    tokens = [0] * len(params)
    rows = [row for row, p in enumerate(params) if p.temperature > 0]
    greedy = [row for row, p in enumerate(params) if p.temperature <= 0]
    if greedy:
        for row, token in zip(greedy, _rows(logits, greedy).float().numpy().argmax(axis=1).tolist(), strict=True):
            tokens[row] = token
    if not rows:
        return tokens
    chosen = _rows(logits, rows).float()
    sampled = [params[row] for row in rows]
    inverse_temperatures = np.array([1.0 / p.temperature for p in sampled], dtype=np.float32)
    if any(0 < p.top_k < chosen.shape[1] or p.top_p < 1.0 for p in sampled):
        # (logits - best) / temperature, their maximum 0 (exp cannot overflow), then the tokens excluded to -inf: the
        # race's scores are these as they are
        scores = (chosen - chosen.amax(dim=-1, keepdim=True)).mul_(torch.from_numpy(inverse_temperatures)[:, None])
        _top_k(scores, [p.top_k for p in sampled])
        _top_p(scores, [p.top_p for p in sampled])
        values, best, scale = scores.numpy(), np.zeros(len(rows), np.float32), np.ones(len(rows), np.float32)
    else:  # the race scales the few logits it looks at by itself: no pass over the vocabulary to scale them all
        values = chosen.numpy()
        best, scale = values.max(axis=1), inverse_temperatures
    for row, token in zip(rows, _race(values, best, scale, [draws[row] for row in rows]), strict=True):
        tokens[row] = token
    return tokens


def _race(values: np.ndarray, best: np.ndarray, scale: np.ndarray, draws: list[RowDraws]) -> list[int]:
    """The Gumbel-max race of each row of `values` (R, V) on its scores, (values - best) * scale (float32, the row's
    best 0, excluded tokens -inf); each row's draws step on. The tokens racing alone are found by comparing `values`
    with a bound a little wider than `RACED_ALONE_WITHIN` and then checking their scores; the others' summed weight
    is summed over the vocabulary only when it could win: each of them weighs less than e^-RACED_ALONE_WITHIN.
    numpy's comparison, nonzero and exp are several times torch's over a vocabulary on one thread."""
    rows, vocabulary = values.shape
    cuts = (best - RACED_ALONE_WITHIN * (1 + 1e-5) / scale.astype(np.float64)).astype(np.float32)
    candidates = np.flatnonzero(values >= cuts[:, None])  # by row then token: each row's best is there
    candidate_rows = candidates // vocabulary
    candidate_scores = (values.ravel()[candidates] - best[candidate_rows]) * scale[candidate_rows]
    alone = candidate_scores >= -RACED_ALONE_WITHIN
    alone_rows, alone_tokens = candidate_rows[alone], candidates[alone] % vocabulary
    alone_scores = candidate_scores[alone]
    alone_weights = np.bincount(alone_rows, np.exp(alone_scores).astype(np.float64), rows)
    step_keys = _mix(np.array([(row.key + row.step * int(GOLDEN)) & _UINT64 for row in draws], dtype=np.uint64))
    # one draw per token racing alone, then one per row for the contender standing for its others
    gumbels = _gumbels(
        np.concatenate((step_keys[alone_rows], step_keys)), np.concatenate((alone_tokens, np.full(rows, _REST_ID)))
    )
    raced, rest_gumbels = alone_scores + gumbels[: len(alone_rows)], gumbels[len(alone_rows) :]
    starts = np.searchsorted(alone_rows, np.arange(rows + 1))
    # the most the others can weigh (1% and 1e-4 of the row's weight above it cover the summed weight's rounding)
    others = vocabulary - np.diff(starts)
    rest_bounds = np.log(others * np.exp(-RACED_ALONE_WITHIN) * 1.01 + alone_weights * 1e-4) + rest_gumbels
    winners = []
    for row, (start, end) in enumerate(pairwise(starts)):
        winner = start + int(np.argmax(raced[start:end]))
        token = int(alone_tokens[winner])
        if rest_bounds[row] > raced[winner]:  # the others could win: their exact weight
            row_scores = (values[row] - best[row]) * scale[row]
            # what the row's float32 sum holds beyond the tokens racing alone (its rounding is ~1e-7 of the row's
            # weight, of the order of the probabilities it may move)
            rest = float(torch.from_numpy(np.exp(row_scores)).sum()) - alone_weights[row]
            with np.errstate(divide="ignore"):  # no others: log 0 = -inf never wins
                if np.log(max(rest, 0.0)) + rest_gumbels[row] > raced[winner]:
                    token = _race_the_rest(row_scores, int(step_keys[row]))
        winners.append(token)
        draws[row].step += 1
    return winners


def _race_the_rest(values: np.ndarray, step_key: int) -> int:
    """The winner among a row's tokens that did not race alone (V,), on their own draws."""
    rest = np.flatnonzero((values < -RACED_ALONE_WITHIN) & (values > -np.inf))
    return int(rest[np.argmax(values[rest] + _gumbels(np.full(len(rest), step_key, dtype=np.uint64), rest))])


def _gumbels(step_keys: np.ndarray, tokens: np.ndarray) -> np.ndarray:
    """Standard Gumbel draws (float64), one per (step key, token) pair: SplitMix64's output at the token's place in
    the stream of its step key, as a uniform in (0, 1), then -log(-log u)."""
    with np.errstate(over="ignore"):
        bits = _mix(step_keys + (tokens.astype(np.uint64) + np.uint64(1)) * GOLDEN)
    uniform = ((bits >> np.uint64(11)).astype(np.float64) + 0.5) * 2.0**-53
    return -np.log(-np.log(uniform))


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser alone (`splitmix64` adds the stream's increment first)."""
    with np.errstate(over="ignore"):
        return splitmix64(x - GOLDEN)


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
