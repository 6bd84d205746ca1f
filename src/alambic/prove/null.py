"""The empirical null: readers that never trained on any watermark, and what their p-values over many keys
must show for `prove`'s p-values to be honest.

Under each of many independent keys, text watermarked with that key is read by an innocent model (one that
never trained on it); each (key, reader) is one trial. Honest p-values are uniform over trials (checked with a
Kolmogorov-Smirnov test) and fall below a level at no more than that rate. KGW's p-values are discrete (a
binomial tail), so they are uniform only once randomised within their atom (`uniform_pvalue`); the
false-positive rates count the p-values `prove` reports.

The copier is the innocent reader that leaks most: it has no weights and copies what followed the same
token earlier in its input, so it can only look radioactive through a hole in the test's rules.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

from alambic.prove.radioactivity import RadioactivityResult
from alambic.watermark.schemes import KeyedScheme

LEVELS = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def copied_predictions(text: np.ndarray) -> np.ndarray:
    """Reading mode's copier, an induction head with no weights at all: at i, the token that followed the last
    earlier occurrence of token i - 1 (else token i - 1 again)."""
    followers, predictions = {}, [0]
    for i in range(1, len(text)):
        predictions.append(followers.get(text[i - 1], text[i - 1]))
        followers[text[i - 1]] = text[i]
    return np.array(predictions)


def copying_answer(passage: np.ndarray, own_words: np.ndarray, seed: int, length: int = 200) -> np.ndarray:
    """API mode's copier, asked about a passage (say, to summarise it): 80% of its steps copy what followed
    its last token in the passage (any token of the passage if that one is not in it), the rest take one of
    its own words."""
    rng = np.random.default_rng(seed)
    answer = [int(rng.choice(passage))]
    for _ in range(length - 1):
        followers = passage[1:][passage[:-1] == answer[-1]]
        copied = followers if len(followers) else passage
        answer.append(int(rng.choice(copied if rng.random() < 0.8 else own_words)))
    return np.array(answer)


@dataclass(frozen=True)
class Trial:
    """One innocent reading under one key: the p-value `prove` reports, and the same randomised in its atom."""

    pvalue: float
    uniform_pvalue: float
    tokens_scored: int


def trial(scheme: KeyedScheme, result: RadioactivityResult, rng: np.random.Generator) -> Trial:
    return Trial(result.pvalue, uniform_pvalue(scheme, result, rng), result.tokens_scored)


def uniform_pvalue(scheme: KeyedScheme, result: RadioactivityResult, rng: np.random.Generator) -> float:
    """The p-value made exactly uniform under the null: for a discrete score, P(S > s) + U P(S = s), U uniform
    (Gumbel's score is continuous: its p-value already is)."""
    if not result.tokens_scored:
        return float(rng.random())
    return scheme.randomized_pvalue(result.score, result.tokens_scored, float(rng.random()))


def summarise(trials: Sequence[Trial]) -> dict:
    """Trials, the KS p-value of the randomised p-values against uniform, and at each level that the trials
    can show (at least one false positive expected), the false positives, their rate and how likely that
    many or more are under an honest test (exact binomial); the smallest p-value seen, and how likely one at
    least that small is among this many honest trials (1 - (1 - p)^n: among 2,400, a p of 1e-4 is seen one
    time in five)."""
    count = len(trials)
    pvalues = np.array([t.pvalue for t in trials])
    smallest = float(pvalues.min()) if count else 1.0
    rates = {}
    for level in LEVELS:
        if count * level < 1:
            break
        positives = int((pvalues <= level).sum())
        rates[f"{level:g}"] = {
            "false_positives": positives,
            "rate": positives / count,
            "binomial_pvalue": float(stats.binom.sf(positives - 1, count, level)),
        }
    return {
        "trials": count,
        "tokens_scored_median": float(np.median([t.tokens_scored for t in trials])) if count else 0.0,
        "ks_pvalue": float(stats.kstest([t.uniform_pvalue for t in trials], "uniform").pvalue) if count >= 2 else 1.0,
        "false_positive_rate": rates,
        "smallest_pvalue": smallest,
        "smallest_pvalue_chance": float(-np.expm1(count * np.log1p(-smallest))) if smallest < 1 else 1.0,
    }
