"""Distilling a tiny teacher's harvested answers into a one-layer student: every loss brings the student
closer to the teacher, and an interrupted run resumes where its checkpoint left it."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

from alambic.distill.data import ExampleBuilder, TeacherAnswers
from alambic.distill.losses import Loss
from alambic.distill.run import DistillConfig, distill
from alambic.errors import InvalidRequestError
from alambic.evaluate.fidelity import fidelity
from alambic.harvest.dataset import HarvestDataset, read_rows
from alambic.models import load_model
from alambic.models.student import student_from_teacher

HELDOUT = 0.2


def config(answers: Path, teacher: Path, out: Path, **overrides) -> DistillConfig:
    settings = dict(
        data=answers,
        out=out,
        teacher=str(teacher),
        student_layers=[0],
        top_k=5,
        max_steps=30,
        batch_size=8,
        learning_rate=1e-3,
        heldout_fraction=HELDOUT,
        logging_steps=5,
        save_steps=10,
    )
    return DistillConfig(**{**settings, **overrides})


@pytest.fixture(scope="module")
def heldout(answers, sharp_teacher):
    teacher = load_model(str(sharp_teacher))
    rows = TeacherAnswers.load(answers, HELDOUT).heldout
    builder = ExampleBuilder(teacher.tokenizer)
    return teacher, [builder.example(row, targets=False) for row in rows]


@pytest.fixture(scope="module")
def agreement_before(heldout):
    teacher, examples = heldout
    return fidelity(student_from_teacher(teacher, [0]).model, teacher.model, examples)


@pytest.mark.parametrize(
    ("loss", "targets", "options"),
    [
        (Loss.SFT, "auto", {}),
        (Loss.FORWARD_KL, "sparse", {}),
        (Loss.REVERSE_KL, "sparse", {}),
        (Loss.JSD, "sparse", {}),
        (Loss.FORWARD_KL, "dense", {}),
        (Loss.ON_POLICY, "auto", {"on_policy_tokens": 24}),
        (Loss.SFT, "auto", {"lora_rank": 8, "learning_rate": 5e-3}),  # adapters merged into the saved student
    ],
)
def test_distillation_brings_the_student_closer_to_the_teacher(
    loss, targets, options, answers, sharp_teacher, heldout, agreement_before, tmp_path
):
    result = distill(config(answers, sharp_teacher, tmp_path / "student", loss=loss, targets=targets, **options))
    teacher, examples = heldout
    after = fidelity(load_model(str(tmp_path / "student")).model, teacher.model, examples)
    assert result.steps == 30 and result.tokens_seen > 0 and result.cpu_seconds > 0
    if targets == "sparse":
        assert result.targets == "sparse" and result.examples_with_targets >= 0.9 * result.train_examples
    assert after.agreement > agreement_before.agreement + 0.01
    assert after.kl < agreement_before.kl


class Crash(TrainerCallback):
    """Kills the run after a given step, as a power cut would."""

    def __init__(self, after_step: int) -> None:
        self.after_step = after_step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.after_step:
            raise KeyboardInterrupt


def logged(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def test_an_interrupted_run_resumes_from_its_checkpoint_and_continues_the_same_loss(answers, sharp_teacher, tmp_path):
    settings = dict(loss=Loss.FORWARD_KL, max_steps=20)
    straight = distill(config(answers, sharp_teacher, tmp_path / "straight", **settings))
    with pytest.raises(KeyboardInterrupt):
        distill(config(answers, sharp_teacher, tmp_path / "resumed", **settings), callbacks=[Crash(after_step=13)])
    assert (tmp_path / "resumed" / "checkpoints" / "checkpoint-10").is_dir()
    resumed = distill(config(answers, sharp_teacher, tmp_path / "resumed", **settings))
    assert resumed.steps == straight.steps == 20
    steps = [line["step"] for line in logged(tmp_path / "resumed") if "loss" in line]
    assert steps == [5, 10, 15, 20]  # the step logged after the checkpoint, before the crash, is not repeated
    expected = {line["step"]: line["loss"] for line in logged(tmp_path / "straight") if "loss" in line}
    for line in logged(tmp_path / "resumed"):
        if "loss" in line:
            assert line["loss"] == pytest.approx(expected[line["step"]], rel=1e-3)
    assert resumed.tokens_seen == straight.tokens_seen


def test_a_loss_that_needs_targets_says_where_to_get_them(answers, tmp_path):
    with pytest.raises(InvalidRequestError, match="harvest"):
        distill(config(tmp_path / "nowhere", tmp_path, tmp_path / "out"))


class FirstGradient(TrainerCallback):
    """Keeps the gradient of the first optimizer step, as the optimizer is about to take it."""

    def __init__(self) -> None:
        self.gradient = None

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        if self.gradient is None:
            self.gradient = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None]).clone()


@pytest.mark.parametrize(("loss", "targets"), [(Loss.SFT, "auto"), (Loss.FORWARD_KL, "sparse"), (Loss.JSD, "dense")])
def test_gradient_accumulation_gives_the_gradient_and_loss_of_the_whole_batch(
    loss, targets, answers, sharp_teacher, tmp_path
):
    runs = {}
    for batch, accumulation in ((8, 1), (2, 4)):
        first = FirstGradient()
        out = tmp_path / f"{batch}x{accumulation}"
        settings = dict(loss=loss, targets=targets, ce_weight=0.3, max_steps=1, logging_steps=1)
        settings["extra"] = {"max_grad_norm": 0.0}  # clipping would hide a gradient's scale
        distill(
            config(answers, sharp_teacher, out, batch_size=batch, gradient_accumulation=accumulation, **settings),
            callbacks=[first],
        )
        runs[batch] = first.gradient, next(line for line in logged(out) if "loss" in line)
    (whole, whole_log), (accumulated, accumulated_log) = runs[8], runs[2]
    assert torch.allclose(accumulated, whole, rtol=1e-4, atol=1e-7)
    assert accumulated_log["loss"] == pytest.approx(whole_log["loss"], rel=1e-3)
    for metric in ("ce", str(loss)):
        if metric in whole_log:
            assert accumulated_log[metric] == pytest.approx(whole_log[metric], rel=1e-4)


@pytest.fixture(scope="module")
def answers_without_logprobs(answers, tmp_path_factory) -> Path:
    """The same answers harvested without logprobs."""
    directory = tmp_path_factory.mktemp("answers-without-logprobs")
    dataset = HarvestDataset(directory)
    for row in read_rows(answers):
        dataset.write(replace(row, logprobs=None))
    dataset.close()
    return directory


def alambic_distill(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "alambic", "distill", "--student-layers", "1", "--max-steps", "1", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


def test_sparse_targets_from_a_harvest_without_logprobs_are_refused_in_one_line(
    answers_without_logprobs, sharp_teacher, tmp_path
):
    with pytest.raises(InvalidRequestError, match="no logprobs"):
        distill(config(answers_without_logprobs, sharp_teacher, tmp_path, loss=Loss.FORWARD_KL, targets="sparse"))
    run = alambic_distill(
        *("--data", str(answers_without_logprobs), "--out", str(tmp_path / "cli"), "--teacher", str(sharp_teacher)),
        *("--loss", "reverse_kl", "--targets", "sparse"),
    )
    assert run.returncode == 2 and "Traceback" not in run.stderr
    assert next(line for line in run.stderr.splitlines() if "no logprobs" in line).startswith("error:")
    assert not (tmp_path / "cli" / "checkpoints").exists()


def test_auto_targets_take_the_harvests_top_k_when_it_has_fewer_and_say_so_first(answers, sharp_teacher, tmp_path):
    result = distill(config(answers, sharp_teacher, tmp_path / "student", loss=Loss.FORWARD_KL, top_k=20))
    assert (result.targets, result.top_k) == ("sparse", 5)
    assert result.examples_with_targets >= 0.9 * result.train_examples
    run = alambic_distill(
        *("--data", str(answers), "--out", str(tmp_path / "cli"), "--teacher", str(sharp_teacher)),
        *("--loss", "forward_kl", "--targets", "auto", "--top-k", "20"),
    )
    assert run.returncode == 0, run.stderr
    said = run.stderr.splitlines()
    chosen = next(i for i, line in enumerate(said) if line.startswith("targets: sparse"))
    assert "top-5" in said[chosen] and "20" in said[chosen]
    assert chosen < next(i for i, line in enumerate(said) if line.startswith("student in"))
