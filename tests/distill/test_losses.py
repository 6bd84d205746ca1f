"""The divergences: zero between equal distributions, the sparse form equal to the dense one when k covers
the vocabulary, and finite gradients when some of the teacher's alternatives map to no token."""

from __future__ import annotations

import pytest
import torch

from alambic.distill.losses import Loss, dense_divergence, sparse_divergence

DIVERGENCES = [Loss.FORWARD_KL, Loss.REVERSE_KL, Loss.JSD]


@pytest.fixture
def logits():
    generator = torch.Generator().manual_seed(0)
    return torch.randn(6, 40, generator=generator) * 3, torch.randn(6, 40, generator=generator)


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_sparse_over_the_whole_vocabulary_is_the_dense_divergence(loss, logits):
    teacher, student = logits
    values, ids = torch.log_softmax(teacher, -1).topk(40)
    assert torch.allclose(sparse_divergence(ids, values, student, loss), dense_divergence(teacher, student, loss))
    assert (dense_divergence(teacher, teacher, loss).abs() < 1e-5).all()
    assert (dense_divergence(teacher, student, loss) > 0).all()


@pytest.mark.parametrize("loss", DIVERGENCES)
def test_top_k_with_unmapped_alternatives_gives_finite_gradients_that_reduce_the_divergence(loss, logits):
    teacher, student = logits
    values, ids = torch.log_softmax(teacher, -1).topk(5)
    ids[:, 3:] = -1  # alternatives the student's tokenizer cannot name
    student = student.clone().requires_grad_(True)
    before = sparse_divergence(ids, values, student, loss).sum()
    before.backward()
    assert torch.isfinite(student.grad).all()
    with torch.no_grad():
        after = sparse_divergence(ids, values, student - 0.5 * student.grad, loss).sum()
    assert after < before


def test_a_divergence_needs_a_divergence_loss(logits):
    with pytest.raises(ValueError):
        dense_divergence(*logits, Loss.SFT)
