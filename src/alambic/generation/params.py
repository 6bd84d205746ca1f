"""The records that cross the generation boundary: what to sample, and what came out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

import torch

FinishReason = Literal["stop", "length", "cancelled"]


class LogitsProcessor(Protocol):
    """transformers' `LogitsProcessor` signature: (input_ids (1, T), scores (1, V)) -> scores (1, V).

    Optional: `for_sequence()`, a fresh instance for one sequence (a processor with per-sequence state; others
    serve every sequence), and `shows_in_logprobs = False`, to serve the row's logprobs from before the
    processors (a watermark that keeps its mark out of them)."""

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor: ...


def sequence_processors(processors: Sequence[LogitsProcessor]) -> tuple[LogitsProcessor, ...]:
    """The processors one sequence runs: each one's `for_sequence()` where it has state, else itself."""
    return tuple(p.for_sequence() if hasattr(p, "for_sequence") else p for p in processors)


@dataclass(frozen=True)
class SamplingParams:
    """How to sample one sequence. temperature 0 is greedy; top_k 0 and top_p 1 are off."""

    max_tokens: int = 16
    min_tokens: int = 0  # end-of-sequence is not sampled before this many tokens (as vLLM's min_tokens)
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    logprobs: bool = False
    top_logprobs: int = 0
    # Applied in order to the model's logits before sampling (watermarks, antidistillation, bans).
    logits_processors: tuple[LogitsProcessor, ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    """A tokenised prompt and `n` independent samples of its continuation."""

    prompt_ids: Sequence[int]
    params: SamplingParams = field(default_factory=SamplingParams)
    n: int = 1


@dataclass(frozen=True)
class TokenChoice:
    """A token, its text, its raw bytes (exact where the text is a fragment of a character) and log-probability."""

    token_id: int
    token: str
    bytes: bytes
    logprob: float


@dataclass(frozen=True)
class TokenLogprob(TokenChoice):
    """One generated token under the served distribution, with the top alternatives, most likely first."""

    top: tuple[TokenChoice, ...] = ()


@dataclass
class Completion:
    """One finished sample. `token_ids` excludes the end-of-sequence token, so it is what usage counts."""

    index: int
    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    logprobs: list[TokenLogprob] | None = None
    cached_tokens: int = 0  # of the prompt, tokens the backend held from an earlier request and did not compute


@dataclass(frozen=True)
class TokenEvent:
    """One generated token of sample `index` and the text it released (empty while a stop string may match)."""

    index: int
    text: str
    logprob: TokenLogprob | None


@dataclass(frozen=True)
class FinishEvent:
    """Sample `index` is over; `text` is what was still held back (a stop string's prefix that never matched)."""

    index: int
    completion: Completion
    text: str = ""


GenerationEvent = TokenEvent | FinishEvent
