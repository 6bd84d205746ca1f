"""Radioactivity (Sander et al. 2024, *Watermarking Makes Language Models Radioactive*): was a suspect model
trained on text watermarked with our key?

Reading mode, for open weights: teacher-force the suspect on text and take its likeliest next token at every
position; score each (watermark context, predicted token) pair with the key, each distinct pair once.
API mode: sample the suspect's answers through its endpoint and detect the watermark in them.

The rule that keeps the p-value exact: a position is scored only if its watermark context occurs nowhere in
what the suspect had read before it, the whole input and not only the scored answer: in reading mode every
earlier token of the teacher-forced sequence (system prompt, every earlier turn, watermarked or not, and the
answer so far), in API mode the prompt sent to the suspect (its answer is its own text, not ours: a pair
repeated there is scored once, as in detection). Otherwise the suspect could copy, from its input,
the token the key chose after the same context there (an induction head would), and a model that never
trained on the watermark would look radioactive (Sander et al.'s code drops such contexts too, `wm_inputs`).
So filtered, a model that never saw the watermark predicts independently of the key at every scored
context, its green rate is gamma and the p-value is exact; a model trained on watermarked text leans towards
the key's green tokens.

Either way the same test runs under many other keys: their p-values are the empirical null, so the reported
p-value is checked in practice, not only in theory.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import stats

from alambic.models.cpu import bf16_autocast_pays
from alambic.models.forward import logits_where, right_padded
from alambic.prove import MIN_CONTEXT_TEXTS
from alambic.watermark.keyed_hash import context_hashes, first_occurrences
from alambic.watermark.schemes import KeyedScheme

if TYPE_CHECKING:
    from transformers import PreTrainedModel

GROWTH_POINTS = 12


@dataclass(frozen=True)
class ReadingCost:
    """What reading the suspect took: tokens it read (reading mode: teacher-forced; API mode: its answers)."""

    tokens_read: int
    cpu_seconds: float  # this process's CPU time, every thread counted
    wall_seconds: float


@dataclass(frozen=True)
class Scored:
    """What a test reads: in each text, position i >= starts[j] scores `tokens[j][i]` in the watermark context
    that ends at text position i - 1. Text detection scores the text's own tokens (`tokens` is `texts`);
    reading mode scores the suspect's prediction for position i."""

    texts: list[np.ndarray]
    tokens: list[np.ndarray]
    starts: list[int]
    # reading mode: a context is scored only where it first occurs in the whole text (before the start too)
    fresh_contexts_only: bool = False
    prompts: list[list[np.ndarray]] | None = None  # API mode: per text, what the suspect was sent (its messages)
    cost: ReadingCost | None = None

    @classmethod
    def of_text(
        cls,
        texts: Sequence[Sequence[int]],
        starts: Sequence[int],
        prompts: Sequence[Sequence[Sequence[int]]] | None = None,
        cost: ReadingCost | None = None,
    ) -> Scored:
        arrays = [np.asarray(text, dtype=np.int64) for text in texts]
        if prompts is not None:
            prompts = [[np.asarray(part, dtype=np.int64) for part in prompt] for prompt in prompts]
        return cls(arrays, arrays, list(starts), prompts=prompts, cost=cost)


@dataclass(frozen=True)
class ScoredPairs:
    """The unique (context hash, scored token) pairs a test scores, in reading order, and how many positions
    each rule left out: `context_seen_in_input` (the suspect could have copied the key's choice),
    `rare_context` (in fewer texts than asked), `repeated_pair` (scored already)."""

    contexts: np.ndarray
    tokens: np.ndarray
    positions: int  # positions past each start and the first context: len(tokens) + the excluded
    excluded: dict[str, int]


@dataclass(frozen=True)
class RadioactivityResult:
    scheme: str
    mode: str  # reading or api
    min_context_texts: int  # contexts scored: those found in at least this many of the texts read
    score: float
    tokens_scored: int
    pvalue: float
    growth: list[tuple[int, float]]  # (unique pairs scored so far, p-value then)
    null_pvalues: list[float]  # the same test under other keys
    empirical_pvalue: float  # (1 + #null p-values at or below ours) / (1 + #null keys)
    null_ks_pvalue: float  # are the null p-values uniform? (Kolmogorov-Smirnov)
    false_positive_rate: float
    positions: int = 0  # positions the text offered; tokens_scored + the excluded add up to it
    excluded: dict[str, int] = field(default_factory=dict)  # positions left out, by the rule that left them out
    cost: ReadingCost | None = None

    @property
    def verdict(self) -> str:
        return "radioactive" if self.pvalue < self.false_positive_rate else "not detected"


@torch.inference_mode()
def suspect_predictions(
    model: PreTrainedModel, texts: Sequence[Sequence[int]], starts: Sequence[int], *, batch_size: int = 8
) -> Scored:
    """Teacher-force the suspect on each text; from the text's start on, the token it finds likeliest at each
    position. Texts are batched by length, the output head runs only where a prediction is scored, and the
    matrix products run in bfloat16 where that is faster (1.5 times on a CPU with bf16 instructions, 7 times
    slower on one without; the test is exact whatever the predictions)."""
    began, began_cpu = time.perf_counter(), time.process_time()
    bf16 = bf16_autocast_pays(model.device.type)
    arrays = [np.asarray(text, dtype=np.int64) for text in texts]
    predictions = [np.zeros(len(text), dtype=np.int64) for text in arrays]
    firsts = [max(start, 1) for start in starts]  # position 0 has nothing before it to predict from
    by_length = np.argsort([len(text) for text in arrays], kind="stable")
    for batch in np.array_split(by_length, max(1, -(-len(arrays) // batch_size))):
        input_ids, attention = right_padded([arrays[row] for row in batch])
        keep = torch.zeros_like(input_ids, dtype=torch.bool)  # [t]: the guess for t + 1
        for index, row in enumerate(batch):
            keep[index, firsts[row] - 1 : len(arrays[row]) - 1] = True
        with torch.autocast(model.device.type, dtype=torch.bfloat16, enabled=bf16):
            likeliest = logits_where(model, input_ids, attention, keep).argmax(-1).numpy()
        for row, guesses in zip(batch, np.split(likeliest, keep.sum(1).cumsum(0)[:-1].numpy()), strict=True):
            predictions[row][firsts[row] :] = guesses
    cost = ReadingCost(sum(len(text) for text in arrays), time.process_time() - began_cpu, time.perf_counter() - began)
    return Scored(arrays, predictions, list(starts), fresh_contexts_only=True, cost=cost)


def scored_pairs(
    scheme: KeyedScheme, scored: Scored, seed: np.uint64 | None = None, *, min_context_texts: int = 1
) -> ScoredPairs:
    """The unique (context hash, scored token) pairs, in reading order, of the watermark contexts the suspect
    had not read before (the module's rule) found in at least `min_context_texts` of the texts."""
    seed = scheme.seed if seed is None else seed
    width = scheme.context_width
    contexts, tokens, positions, seen_in_input = [], [], 0, 0
    for index, (text, scored_tokens, start) in enumerate(zip(scored.texts, scored.tokens, scored.starts, strict=True)):
        first = max(start, width)
        if len(text) <= first:
            continue
        every_context = context_hashes(text, width, seed)  # [j]: the context of position width + j
        hashes, predicted = every_context[first - width :], scored_tokens[first:]
        new = np.ones(len(hashes), dtype=bool)
        if scored.fresh_contexts_only:  # first occurrences over the whole text, what precedes the start included
            first_seen = np.zeros(len(every_context), dtype=bool)
            first_seen[np.unique(every_context, return_index=True)[1]] = True
            new &= first_seen[first - width :]
        if scored.prompts is not None:
            new &= ~np.isin(hashes, _prompt_contexts(scored.prompts[index], width, seed))
        positions += len(hashes)
        contexts.append(hashes[new])
        tokens.append(predicted[new])
        seen_in_input += int((~new).sum())
    excluded = {"context_seen_in_input": seen_in_input, "rare_context": 0, "repeated_pair": 0}
    if not contexts:
        return ScoredPairs(np.empty(0, np.uint64), np.empty(0, np.int64), positions, excluded)
    common = _common_contexts(contexts, min_context_texts) if min_context_texts > 1 else None
    contexts, tokens = np.concatenate(contexts), np.concatenate(tokens)
    if common is not None:
        kept = np.isin(contexts, common)
        contexts, tokens = contexts[kept], tokens[kept]
        excluded["rare_context"] = int((~kept).sum())
    first = first_occurrences(contexts, tokens)
    excluded["repeated_pair"] = len(contexts) - len(first)
    return ScoredPairs(contexts[first], tokens[first], positions, excluded)


def _prompt_contexts(prompt: list[np.ndarray], width: int, seed: np.uint64) -> np.ndarray:
    """The hash of every run of `width` tokens in the prompt's parts; a token appended to each part makes its
    last run a context too."""
    runs = [context_hashes(np.append(part, 0), width, seed) for part in prompt]
    return np.concatenate([*runs, np.empty(0, np.uint64)])


def _common_contexts(contexts: list[np.ndarray], min_texts: int) -> np.ndarray:
    """The context hashes found in at least `min_texts` of the texts. The count is of texts, not occurrences:
    whether a context occurs in a text at all is settled before its first occurrence, so before the key's
    list for that context ever acted in that text, and choosing contexts by it cannot favour their green
    tokens (how often a context recurs can: its green tokens may lead back to it)."""
    unique, texts = np.unique(np.concatenate([np.unique(hashes) for hashes in contexts]), return_counts=True)
    return unique[texts >= min_texts]


def radioactivity(
    scheme: KeyedScheme,
    scored: Scored,
    *,
    mode: str,
    null_keys: int = 100,
    false_positive_rate: float = 1e-6,
    min_context_texts: int = MIN_CONTEXT_TEXTS,
) -> RadioactivityResult:
    """The test, scoring only watermark contexts found in at least `min_context_texts` of the texts: a model
    learns the key's bias after a context from the watermarked text that follows it, so contexts common in
    the watermarked data carry most of the trace and rare ones dilute it (Sander et al.'s filter)."""
    pairs = partial(scored_pairs, scheme, scored, min_context_texts=min_context_texts)
    ours = pairs()
    contexts, tokens = ours.contexts, ours.tokens
    detection = scheme.detect_pairs(contexts, tokens)
    null = []
    for index in range(null_keys):
        other = pairs(_other_seed(scheme, index))
        null.append(scheme.detect_pairs(other.contexts, other.tokens).pvalue)
    return RadioactivityResult(
        scheme=scheme.name,
        mode=mode,
        min_context_texts=min_context_texts,
        score=detection.score,
        tokens_scored=detection.tokens_scored,
        pvalue=detection.pvalue,
        growth=_growth(scheme, contexts, tokens),
        null_pvalues=null,
        empirical_pvalue=(1 + sum(p <= detection.pvalue for p in null)) / (1 + len(null)),
        null_ks_pvalue=float(stats.kstest(null, "uniform").pvalue) if len(null) >= 2 else 1.0,
        false_positive_rate=false_positive_rate,
        positions=ours.positions,
        excluded=ours.excluded,
        cost=scored.cost,
    )


def _growth(scheme: KeyedScheme, contexts: np.ndarray, tokens: np.ndarray) -> list[tuple[int, float]]:
    """The p-value after the first n pairs, for n on a log scale up to all of them."""
    if not len(tokens):
        return []
    scores = np.cumsum(scheme.pair_scores(contexts, tokens))
    points = np.unique(np.geomspace(min(10, len(tokens)), len(tokens), GROWTH_POINTS).astype(int))
    return [(int(n), scheme.pvalue(float(scores[n - 1]), int(n))) for n in points]


def _other_seed(scheme: KeyedScheme, index: int) -> np.uint64:
    """A key for the null that is not ours, derived from ours so the test is reproducible."""
    digest = hashlib.sha256(f"null-key:{int(scheme.seed)}:{index}".encode()).digest()
    return np.uint64(int.from_bytes(digest[:8], "little"))
