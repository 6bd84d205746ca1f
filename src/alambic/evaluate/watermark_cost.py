"""What a watermark costs the teacher's answers, so a provider can choose a scheme and a strength.

Each setting answers the same GSM8K questions with the same seeds, its watermark on ("none": off); reported
are the answers' perplexity as the unwatermarked model scores them, GSM8K exact match, and how strongly one
answer alone carries the mark (the median of its detection p-values). Gumbel sampling ignores the request's
temperature (it is an exact sample at temperature 1), so compare it with "none" at temperature 1.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial

from transformers import PreTrainedModel

from alambic.evaluate.answers import answer_questions, chat_prompt
from alambic.evaluate.fidelity import perplexity
from alambic.evaluate.gsm8k import Problem, question, score_answers
from alambic.generation import GenerationEngine, SamplingParams
from alambic.watermark.schemes import AaronsonScheme, KeyedScheme, KirchenbauerScheme

DEFAULT_DELTAS = (1.0, 2.0, 4.0)


@dataclass(frozen=True)
class WatermarkCost:
    setting: str
    temperature: float
    perplexity: float  # of the answers, by the unwatermarked scorer
    accuracy: float  # GSM8K exact match
    median_pvalue: float | None  # one answer's detection p-value; None without a watermark
    answer_tokens: int


def watermark_costs(
    engine: GenerationEngine,
    scorer: PreTrainedModel,
    settings: Mapping[str, KeyedScheme | None],
    *,
    problems: Sequence[Problem],
    temperature: float = 0.7,
    max_tokens: int = 256,
    seed: int = 0,
) -> list[WatermarkCost]:
    """One row per setting; `scorer` is the engine's model without watermark (same tokenizer)."""
    questions = [question(problem) for problem in problems]
    prompts = [chat_prompt(engine.backend.tokenizer, text) for text in questions]
    costs = []
    for name, scheme in settings.items():
        processors = (scheme.processor(),) if scheme else ()
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, seed=seed, logits_processors=processors)
        answers = answer_questions(engine, questions, params)
        examples = [
            {"input_ids": [*prompt, *answer.token_ids], "labels": [-100] * len(prompt) + answer.token_ids}
            for prompt, answer in zip(prompts, answers, strict=True)
        ]
        pvalues = [scheme.detect(answer.token_ids).pvalue for answer in answers] if scheme else None
        costs.append(
            WatermarkCost(
                setting=name,
                temperature=temperature,
                perplexity=perplexity(scorer, examples),
                accuracy=score_answers(problems, [answer.text for answer in answers]).accuracy,
                median_pvalue=statistics.median(pvalues) if pvalues else None,
                answer_tokens=sum(len(answer.token_ids) for answer in answers),
            )
        )
    return costs


def watermark_cost_table(
    engine: GenerationEngine,
    scorer: PreTrainedModel,
    problems: Sequence[Problem],
    key: str,
    *,
    deltas: Sequence[float] = DEFAULT_DELTAS,
    gamma: float = 0.25,
    context_width: int = 1,
    temperature: float = 0.7,
    max_tokens: int = 256,
) -> list[WatermarkCost]:
    """KGW at each strength against no watermark at `temperature`, then Gumbel against none at temperature 1."""
    kgw = {
        f"kgw delta={delta:g}": KirchenbauerScheme(key, gamma=gamma, delta=delta, context_width=context_width)
        for delta in deltas
    }
    gumbel = AaronsonScheme(key, context_width=context_width)
    costs = partial(watermark_costs, engine, scorer, problems=problems, max_tokens=max_tokens)
    return costs({"none": None, **kgw}, temperature=temperature) + costs(
        {"none": None, "gumbel": gumbel}, temperature=1.0
    )
