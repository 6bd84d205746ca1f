"""Watermark schemes: each one class with its generation side (a logits processor for the shared sampling
loop) and its detection side (score, tokens scored, exact p-value), sharing `keyed_hash`.

Detection scores only the unique (context, token) pairs, as Fernandez et al. 2023 (*Three Bricks*) and
Sander et al. 2024 (*Watermarking Makes Language Models Radioactive*) do: a repeated passage cannot inflate
significance, and under the null hypothesis the scored draws are independent, so the p-values are exact.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from scipy import stats

from alambic.watermark.keyed_hash import (
    complements32,
    context_hash,
    context_hashes,
    draws32,
    first_occurrences,
    gumbel_noises32,
    key_id,
    key_seed,
    pair_draws32,
    threshold32,
    vocabulary_keys32,
)


@dataclass(frozen=True)
class Detection:
    score: float
    tokens_scored: int  # unique (context, token) pairs
    pvalue: float


def unique_pairs(token_ids: list[int] | np.ndarray, width: int, seed: np.uint64) -> tuple[np.ndarray, np.ndarray]:
    """(context hash, next token) for every position past the first `width`, each distinct pair once."""
    tokens = np.asarray(token_ids, dtype=np.int64)
    if len(tokens) <= width:
        return np.empty(0, np.uint64), np.empty(0, np.int64)
    contexts, tokens = context_hashes(tokens, width, seed), tokens[width:]
    first = first_occurrences(contexts, tokens)
    return contexts[first], tokens[first]


LogprobMode = Literal["plain", "marked"]
LOGPROB_MODES: tuple[LogprobMode, ...] = ("plain", "marked")


class KeyedScheme:
    """What both schemes share: the key, the context width, detection over unique pairs, and what the logprobs
    served with marked text are: `plain`, the model's own, before its logits processors (nothing of the key
    shows in them); `marked`, those of the watermarked distribution sampled from (a KGW green list shows)."""

    name: ClassVar[str]

    def __init__(self, key: str | bytes, context_width: int = 1, *, logprobs: LogprobMode = "plain") -> None:
        if context_width < 1:
            raise ValueError("context_width must be at least 1")
        if logprobs not in LOGPROB_MODES:
            raise ValueError(f"logprobs must be one of {LOGPROB_MODES}")
        self.seed = key_seed(key)
        self.key_id = key_id(key)
        self.context_width = context_width
        self.logprobs = logprobs

    def parameters(self) -> dict[str, Any]:
        """What the request log records of this scheme besides `key_id`: everything but the key."""
        return {"scheme": self.name, "context_width": self.context_width, "logprobs": self.logprobs}

    def detect(self, token_ids: list[int] | np.ndarray) -> Detection:
        return self.detect_pairs(*unique_pairs(token_ids, self.context_width, self.seed))

    def detect_pairs(self, contexts: np.ndarray, tokens: np.ndarray) -> Detection:
        count = len(tokens)
        score = float(self.pair_scores(contexts, tokens).sum()) if count else 0.0
        return Detection(score, count, self.pvalue(score, count) if count else 1.0)

    def randomized_pvalue(self, score: float, count: int, uniform: float) -> float:
        """The p-value made exactly uniform under the null by `uniform` (a U(0, 1) draw) where the score is
        discrete; a continuous score's p-value already is."""
        return self.pvalue(score, count)

    def _context_hash(self, input_ids: torch.Tensor) -> np.uint64:
        """The context hash of the last `context_width` tokens of a (1, T) prompt+generation."""
        return context_hash(input_ids[0, -self.context_width :].tolist(), self.seed)


class KirchenbauerScheme(KeyedScheme):
    """Green list / red list (Kirchenbauer et al. 2023, *A Watermark for Large Language Models*).

    Each context splits the vocabulary: a token is green when its keyed uniform draw is below `gamma`.
    Generation adds `delta` to green logits. Detection counts green tokens among n unique pairs;
    under H0 the count is Binomial(n, gamma), so p = P(X >= s) exactly (the paper's z-score is its normal
    approximation, z = (s - gamma n) / sqrt(n gamma (1 - gamma))).
    """

    name = "kgw"

    def __init__(
        self,
        key: str | bytes,
        *,
        gamma: float = 0.25,
        delta: float = 2.0,
        context_width: int = 1,
        logprobs: LogprobMode = "plain",
    ) -> None:
        super().__init__(key, context_width, logprobs=logprobs)
        if not 0 < gamma < 1:
            raise ValueError("gamma must be in (0, 1)")
        self.gamma, self.delta = gamma, delta
        self.green_below = threshold32(gamma)

    def parameters(self) -> dict[str, Any]:
        return {**super().parameters(), "gamma": self.gamma, "delta": self.delta}

    def green_mask(self, context_hash: np.ndarray, vocab_size: int) -> np.ndarray:
        return draws32(context_hash, vocabulary_keys32(vocab_size)) < self.green_below

    def processor(self) -> KirchenbauerProcessor:
        return KirchenbauerProcessor(self)

    def pair_scores(self, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return (pair_draws32(contexts, tokens) < self.green_below).astype(np.float64)  # 1 if green

    def pvalue(self, score: float, count: int) -> float:
        return float(stats.binom.sf(round(score) - 1, count, self.gamma))

    def randomized_pvalue(self, score: float, count: int, uniform: float) -> float:
        """P(X > s) + U P(X = s) for X ~ Binomial(n, gamma): at most the exact p-value, uniform under the null."""
        green = round(score)
        return float(stats.binom.sf(green, count, self.gamma) + uniform * stats.binom.pmf(green, count, self.gamma))


class WatermarkProcessor:
    """A scheme's generation side, as the sampling loop sees it: whether the row's logprobs show the mark."""

    def __init__(self, scheme: KeyedScheme) -> None:
        self.scheme = scheme
        self.shows_in_logprobs = scheme.logprobs == "marked"


GREEN_BIASES_BYTES = 32 * 2**20
"""What a KGW processor keeps of recent contexts' green lists: 170 at SmolLM2's 49,152 tokens. A one-token
context recurs (the last 170 cover ~73% of the steps over GSM8K answers and ShareGPT prompts), and
adding a kept bias costs ~13 us against ~80 us to draw the green list again (a cold cache, 49k tokens)."""


class KirchenbauerProcessor(WatermarkProcessor):
    """One instance serves every sequence: it keeps the logit biases (delta on green tokens) of the contexts
    it saw last, within `GREEN_BIASES_BYTES`."""

    scheme: KirchenbauerScheme

    def __init__(self, scheme: KirchenbauerScheme) -> None:
        super().__init__(scheme)
        self.biases: OrderedDict[tuple[int, int], np.ndarray] = OrderedDict()  # least recently used first
        self.lock = threading.Lock()  # one instance may serve several engines' threads

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        # numpy, in place on the same memory: single-threaded, so it wakes no torch worker threads; a dense
        # add of the bias is 12x faster than a masked add of delta
        row = scores[0].numpy()
        np.add(row, self.bias(self.scheme._context_hash(input_ids), len(row)), out=row)
        return scores

    def bias(self, context_hash: np.uint64, vocab_size: int) -> np.ndarray:
        """delta on the context's green tokens, 0 elsewhere: (V,) float32, read-only."""
        key = (int(context_hash), vocab_size)
        with self.lock:
            if (bias := self.biases.get(key)) is not None:
                self.biases.move_to_end(key)
                return bias
        bias = self.scheme.green_mask(context_hash, vocab_size) * np.float32(self.scheme.delta)
        bias.flags.writeable = False
        with self.lock:
            self.biases[key] = bias
            while len(self.biases) > max(GREEN_BIASES_BYTES // bias.nbytes, 1):
                self.biases.popitem(last=False)
        return bias


class AaronsonScheme(KeyedScheme):
    """Gumbel-max sampling with keyed randomness (Aaronson 2022; Fernandez et al. 2023).

    Each context gives every token a keyed uniform r_v; generation picks argmax_v r_v^(1/p_v), which is an
    exact sample from p (distortion-free) but a deterministic function of key and context. Detection sums
    -log(1 - r_token) over n unique pairs: under H0 each term is Exp(1), the sum Gamma(n, 1), so
    p = P(Gamma(n, 1) >= score) exactly.
    """

    name = "gumbel"

    def processor(self) -> AaronsonProcessor:
        return AaronsonProcessor(self)

    def pair_scores(self, contexts: np.ndarray, tokens: np.ndarray) -> np.ndarray:
        return -np.log(complements32(pair_draws32(contexts, tokens)))  # -log(1 - r)

    def pvalue(self, score: float, count: int) -> float:
        return float(stats.gamma.sf(score, count))


class AaronsonProcessor(WatermarkProcessor):
    """Leaves one finite logit: the keyed Gumbel-max choice under the model's distribution (temperature 1).

    argmax_v r_v^(1/p_v) = argmax_v (logit_v - log(-log r_v)): the Gumbel-max trick, with no softmax, in float32
    (about 0.1 ms for 49k tokens against 0.5 ms for the softmax form in float64).

    A context already seen in the sequence is left to ordinary sampling: the keyed choice is a function of
    the context, so it would repeat the earlier choice, and with a one-token context the text falls into
    loops (measured: perplexity 1.8 against 9.4 unwatermarked, as the teacher scores GSM8K answers). The
    contexts seen are kept as the sequence grows, so a step costs the same at any length: one instance serves
    one sequence (`for_sequence` gives the sampling loop a fresh one for each), and an input that does not
    extend the last one it saw starts it over."""

    def __init__(self, scheme: AaronsonScheme) -> None:
        super().__init__(scheme)
        self.seen: set[tuple[int, ...]] = set()  # every context window that ends before the last token
        self.tail: list[int] = []  # the last `context_width` tokens of the input seen last
        self.length = 0  # that input's length

    def for_sequence(self) -> AaronsonProcessor:
        return AaronsonProcessor(self.scheme)

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        if self._context_seen_before(input_ids[0]):
            return scores
        draws = draws32(self.scheme._context_hash(input_ids), vocabulary_keys32(scores.shape[-1]))
        choice = int(np.argmax(scores[0].numpy() + gumbel_noises32(draws)))  # p = 0 tokens keep -inf
        scores[0] = float("-inf")
        scores[0, choice] = 0.0
        return scores

    def _context_seen_before(self, ids: torch.Tensor) -> bool:
        """Whether the last `context_width` tokens of `ids` (T,) appeared earlier, reading only the new tokens."""
        width, length = self.scheme.context_width, len(ids)
        extends = width <= self.length < length and ids[self.length - width : self.length].tolist() == self.tail
        start = max(self.length - width, 0) if extends else 0  # earliest token of a window not yet added
        if not extends:
            self.seen.clear()
        new = ids[start:].tolist()
        for offset in range(len(new) - width):  # windows ending before the last token
            self.seen.add(tuple(new[offset : offset + width]))
        self.tail, self.length = new[len(new) - width :], length
        return length > width and tuple(self.tail) in self.seen


SCHEMES: dict[str, type[KeyedScheme]] = {
    KirchenbauerScheme.name: KirchenbauerScheme,
    AaronsonScheme.name: AaronsonScheme,
}
