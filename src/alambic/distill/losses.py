"""Distillation losses: forward KL, reverse KL and generalised Jensen-Shannon between teacher and student
next-token distributions, over the full vocabulary (a local teacher's logits) or over the teacher's top-k
(what an API returns, and k numbers per token to store) with the rest of the mass in one tail bucket.

Each function returns one divergence per position, in nats; callers mask and average.
"""

from __future__ import annotations

import math

import torch

from alambic.distill.kinds import Loss

TAIL_FLOOR = 1e-6  # the least mass a tail bucket keeps, so its log stays finite when top-k holds nearly all
ABSENT = -60.0  # the log-probability given to an alternative that maps to no token: e^-60 is nothing, and
# staying finite keeps every gradient finite (an -inf here turns reverse KL's and JSD's gradients to NaN)


def divergence(teacher_logp: torch.Tensor, student_logp: torch.Tensor, loss: Loss, beta: float = 0.5) -> torch.Tensor:
    """Divergence between two categorical distributions given as log-probabilities over the last dimension."""
    if loss is Loss.FORWARD_KL:
        return _kl(teacher_logp, student_logp)
    if loss is Loss.REVERSE_KL:
        return _kl(student_logp, teacher_logp)
    if loss is Loss.JSD:
        if not 0.0 < beta < 1.0:
            raise ValueError(f"jsd needs 0 < beta < 1, got {beta}")
        mixture = torch.logsumexp(torch.stack([teacher_logp + math.log(beta), student_logp + math.log(1 - beta)]), 0)
        return beta * _kl(teacher_logp, mixture) + (1 - beta) * _kl(student_logp, mixture)
    raise ValueError(f"{loss} is not a divergence")


def dense_divergence(teacher_logits: torch.Tensor, student_logits: torch.Tensor, loss: Loss, beta: float = 0.5):
    """(..., V) logits of both models: the divergence over the whole vocabulary."""
    return divergence(
        torch.log_softmax(teacher_logits.float(), -1), torch.log_softmax(student_logits.float(), -1), loss, beta
    )


def sparse_divergence(
    teacher_ids: torch.Tensor,
    teacher_logprobs: torch.Tensor,
    student_logits: torch.Tensor,
    loss: Loss,
    beta: float = 0.5,
) -> torch.Tensor:
    """The divergence over k + 1 outcomes: the teacher's top-k tokens (`teacher_ids`, (..., k); -1 marks an
    alternative that maps to no token, whose mass joins the tail) and everything else as one bucket."""
    known = teacher_ids >= 0
    student_all = torch.log_softmax(student_logits.float(), -1)
    student_top = student_all.gather(-1, teacher_ids.clamp(min=0)).masked_fill(~known, ABSENT)
    teacher_top = teacher_logprobs.float().masked_fill(~known, ABSENT).clamp(min=ABSENT)
    return divergence(_with_tail(teacher_top), _with_tail(student_top), loss, beta)


def _with_tail(top_logp: torch.Tensor) -> torch.Tensor:
    """Append log(1 - sum of the top-k probabilities), floored at TAIL_FLOOR, and renormalise."""
    top_mass = torch.logsumexp(top_logp, -1, keepdim=True).clamp(max=0.0)
    tail = torch.log((-torch.expm1(top_mass)).clamp(min=TAIL_FLOOR))
    full = torch.cat([top_logp, tail], -1)
    return full - torch.logsumexp(full, -1, keepdim=True)


def _kl(logp: torch.Tensor, logq: torch.Tensor) -> torch.Tensor:
    """KL(p || q) over the last dimension; outcomes with p = 0 add nothing."""
    p = logp.exp()
    return torch.where(p > 0, p * (logp - logq), torch.zeros_like(p)).sum(-1)
