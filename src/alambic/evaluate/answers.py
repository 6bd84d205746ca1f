"""A local model's greedy answers to single-turn questions, batched through the generation engine."""

from __future__ import annotations

from collections.abc import Sequence

from alambic.generation import GenerationEngine, GenerationRequest, SamplingParams
from alambic.generation.backends import TransformersBackend
from alambic.models.loading import LoadedModel


def answer_questions(engine: GenerationEngine, questions: Sequence[str], *, max_tokens: int = 256) -> list[str]:
    tokenizer = engine.backend.tokenizer
    params = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    requests = [
        GenerationRequest(
            tokenizer.apply_chat_template(
                [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
            ),
            params,
        )
        for question in questions
    ]
    return [samples[0].text for samples in engine.generate(requests)]


def model_answers(model: LoadedModel, questions: Sequence[str], *, max_tokens: int = 256) -> list[str]:
    engine = GenerationEngine(TransformersBackend(model), max_batch_size=16)
    try:
        return answer_questions(engine, questions, max_tokens=max_tokens)
    finally:
        engine.close()
