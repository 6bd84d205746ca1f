"""A local model's answers to single-turn questions, batched through the generation engine."""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedTokenizerBase

from alambic.generation import Completion, GenerationEngine, GenerationRequest, SamplingParams
from alambic.generation.backends import TransformersBackend
from alambic.models.loading import LoadedModel


def chat_prompt(tokenizer: PreTrainedTokenizerBase, question: str) -> list[int]:
    """The token ids of `question` as one user turn, ready for the assistant's answer."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], add_generation_prompt=True, tokenize=True, return_dict=False
    )


def answer_questions(engine: GenerationEngine, questions: Sequence[str], params: SamplingParams) -> list[Completion]:
    """One sampled answer per question, in order."""
    requests = [GenerationRequest(chat_prompt(engine.backend.tokenizer, question), params) for question in questions]
    return [samples[0] for samples in engine.generate(requests)]


def model_answers(model: LoadedModel, questions: Sequence[str], *, max_tokens: int = 256) -> list[str]:
    """Greedy answers of a loaded model."""
    engine = GenerationEngine(TransformersBackend(model), max_batch_size=16)
    greedy = SamplingParams(max_tokens=max_tokens, temperature=0.0)
    try:
        return [completion.text for completion in answer_questions(engine, questions, greedy)]
    finally:
        engine.close()
