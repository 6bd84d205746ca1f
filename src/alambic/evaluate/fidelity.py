"""How closely models follow the teacher on the teacher's own held-out answers, teacher-forced: top-1
agreement (the model's likeliest next token is the teacher's), KL(teacher || model) per token, and the model's
perplexity of the teacher's answers. The teacher against itself gives agreement 1 and KL 0. The teacher's
logits are computed once per batch for all the models compared.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedModel

from alambic.distill.losses import Loss, dense_divergence
from alambic.models.forward import logits_where, right_padded


@dataclass(frozen=True)
class Fidelity:
    agreement: float
    kl: float
    perplexity: float
    tokens: int


@torch.inference_mode()
def fidelities(
    models: Mapping[str, PreTrainedModel],
    teacher: PreTrainedModel,
    examples: Sequence[dict],
    *,
    batch_size: int = 8,
) -> dict[str, Fidelity]:
    """`examples` have `input_ids` and `labels` (-100 outside the answer), as `ExampleBuilder` makes them."""
    sums = {name: [0.0, 0.0, 0.0] for name in models}  # agreement, KL, negative log-likelihood
    tokens = 0
    for start in range(0, len(examples), batch_size):
        input_ids, attention, answer, targets = _answers(examples[start : start + batch_size])
        teacher_logits = logits_where(teacher, input_ids, attention, answer)
        teacher_top = teacher_logits.argmax(-1)
        for name, model in models.items():
            logits = logits_where(model, input_ids, attention, answer)
            sums[name][0] += float((logits.argmax(-1) == teacher_top).sum())
            sums[name][1] += float(dense_divergence(teacher_logits, logits, Loss.FORWARD_KL).sum())
            sums[name][2] += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        tokens += int(answer.sum())
    if not tokens:
        raise ValueError("no answer tokens to score")
    return {
        name: Fidelity(agree / tokens, kl / tokens, math.exp(nll / tokens), tokens)
        for name, (agree, kl, nll) in sums.items()
    }


@torch.inference_mode()
def perplexity(model: PreTrainedModel, examples: Sequence[dict], *, batch_size: int = 8) -> float:
    """The model's perplexity of the label tokens (-100 elsewhere) of `examples`."""
    nll, tokens = 0.0, 0
    for start in range(0, len(examples), batch_size):
        input_ids, attention, answer, targets = _answers(examples[start : start + batch_size])
        logits = logits_where(model, input_ids, attention, answer)
        nll += float(torch.nn.functional.cross_entropy(logits, targets, reduction="sum"))
        tokens += len(targets)
    if not tokens:
        raise ValueError("no tokens to score")
    return math.exp(nll / tokens)


def fidelity(model: PreTrainedModel, teacher: PreTrainedModel, examples: Sequence[dict], **options) -> Fidelity:
    return fidelities({"model": model}, teacher, examples, **options)["model"]


def _answers(batch: Sequence[dict]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The batch padded, where each position's next token is an answer token, and those tokens in order."""
    input_ids, attention = right_padded([example["input_ids"] for example in batch])
    labels, _ = right_padded([example["labels"] for example in batch], fill=-100)
    labels = torch.cat([labels[:, 1:], torch.full((len(batch), 1), -100)], dim=1)  # [t]: the label of t + 1
    answer = labels != -100
    return input_ids, attention, answer, labels[answer]
