"""Generation: one batched sampling loop with pluggable logits processors, shared by the server and offline code."""

from alambic.generation.engine import GenerationEngine, GenerationHandle
from alambic.generation.params import (
    Completion,
    FinishEvent,
    GenerationRequest,
    SamplingParams,
    TokenChoice,
    TokenEvent,
    TokenLogprob,
)

__all__ = [
    "Completion",
    "FinishEvent",
    "GenerationEngine",
    "GenerationHandle",
    "GenerationRequest",
    "SamplingParams",
    "TokenChoice",
    "TokenEvent",
    "TokenLogprob",
]
