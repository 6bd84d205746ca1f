"""Radioactivity (Sander et al. 2024, *Watermarking Makes Language Models Radioactive*): was a suspect model
trained on text watermarked with our key?

Reading mode, for open weights: teacher-force the suspect on text and take its likeliest next token at every
position; score each (watermark context, predicted token) pair with the key, each distinct pair once. When the
text read is itself watermarked, a position is scored only where its watermark context is new in that text's
watermarked part: otherwise the suspect could copy, from its own input, the green token the key chose after
the same context earlier (an induction head would), and a model that never trained on the watermark would look
radioactive. So filtered, a model that never saw the watermark predicts independently of the key, its green
rate is gamma and the p-value is exact; a model trained on watermarked text leans towards the key's green
tokens.
API mode: sample the suspect's answers through its endpoint and detect the watermark in them.

Either way the same test runs under many other keys: their p-values are the empirical null, so the reported
p-value is checked in practice, not only in theory.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING

import numpy as np
import torch
from scipy import stats

from alambic.models.forward import logits_where, right_padded
from alambic.prove import MIN_CONTEXT_TEXTS
from alambic.watermark.keyed_hash import context_hashes, first_occurrences
from alambic.watermark.schemes import KeyedScheme

if TYPE_CHECKING:
    from transformers import PreTrainedModel

GROWTH_POINTS = 12


@dataclass(frozen=True)
class Scored:
    """What a test reads: in each text, position i >= starts[j] scores `tokens[j][i]` in the watermark context
    that ends at text position i - 1. Text detection scores the text's own tokens (`tokens` is `texts`);
    reading mode scores the suspect's prediction for position i."""

    texts: list[np.ndarray]
    tokens: list[np.ndarray]
    starts: list[int]
    fresh_contexts_only: bool = False  # score a context once per text, the first time it occurs from its start

    @classmethod
    def of_text(cls, texts: Sequence[Sequence[int]], starts: Sequence[int]) -> Scored:
        arrays = [np.asarray(text, dtype=np.int64) for text in texts]
        return cls(arrays, arrays, list(starts))


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

    @property
    def verdict(self) -> str:
        return "radioactive" if self.pvalue < self.false_positive_rate else "not detected"


@torch.inference_mode()
def suspect_predictions(
    model: PreTrainedModel, texts: Sequence[Sequence[int]], starts: Sequence[int], *, batch_size: int = 8
) -> Scored:
    """Teacher-force the suspect on each text; from the text's start on, the token it finds likeliest at each
    position. Texts are batched by length, the output head runs only where a prediction is scored, and the
    matrix products run in bfloat16 (1.5 times as fast on CPU; the test is exact whatever the predictions)."""
    arrays = [np.asarray(text, dtype=np.int64) for text in texts]
    predictions = [np.zeros(len(text), dtype=np.int64) for text in arrays]
    firsts = [max(start, 1) for start in starts]  # position 0 has nothing before it to predict from
    by_length = np.argsort([len(text) for text in arrays], kind="stable")
    for batch in np.array_split(by_length, max(1, -(-len(arrays) // batch_size))):
        input_ids, attention = right_padded([arrays[row] for row in batch])
        keep = torch.zeros_like(input_ids, dtype=torch.bool)  # [t]: the guess for t + 1
        for index, row in enumerate(batch):
            keep[index, firsts[row] - 1 : len(arrays[row]) - 1] = True
        with torch.autocast(model.device.type, dtype=torch.bfloat16):
            likeliest = logits_where(model, input_ids, attention, keep).argmax(-1).numpy()
        for row, guesses in zip(batch, np.split(likeliest, keep.sum(1).cumsum(0)[:-1].numpy()), strict=True):
            predictions[row][firsts[row] :] = guesses
    return Scored(arrays, predictions, list(starts), fresh_contexts_only=True)


def scored_pairs(
    scheme: KeyedScheme, scored: Scored, seed: np.uint64 | None = None, *, min_context_texts: int = 1
) -> tuple[np.ndarray, np.ndarray]:
    """The unique (context hash, scored token) pairs, in reading order, of the watermark contexts found in at
    least `min_context_texts` of the texts (from their starts)."""
    seed = scheme.seed if seed is None else seed
    width = scheme.context_width
    contexts, tokens = [], []
    for text, scored_tokens, start in zip(scored.texts, scored.tokens, scored.starts, strict=True):
        if len(text) <= width:
            continue
        first = max(start, width)
        hashes = context_hashes(text, width, seed)[first - width :]  # [j]: the context of position first + j
        predicted = scored_tokens[first:]
        if scored.fresh_contexts_only:
            fresh = np.sort(np.unique(hashes, return_index=True)[1])
            hashes, predicted = hashes[fresh], predicted[fresh]
        contexts.append(hashes)
        tokens.append(predicted)
    if not contexts:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    common = _common_contexts(contexts, min_context_texts) if min_context_texts > 1 else None
    contexts, tokens = np.concatenate(contexts), np.concatenate(tokens)
    if common is not None:
        kept = np.isin(contexts, common)
        contexts, tokens = contexts[kept], tokens[kept]
    first = first_occurrences(contexts, tokens)
    return contexts[first], tokens[first]


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
    contexts, tokens = pairs()
    detection = scheme.detect_pairs(contexts, tokens)
    null = [scheme.detect_pairs(*pairs(_other_seed(scheme, i))).pvalue for i in range(null_keys)]
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
