"""Data-parallel distillation: two gloo processes on CPU (torchrun) train the one-process run's batches, each
process its own half of every batch, with the one-process run's losses; `accelerate launch --cpu`, which
starts one process whatever `--num_processes` says, is refused rather than left to train the whole job alone."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RECORDER = Path(__file__).with_name("record_batches.py")
STEPS = 3


def settings(answers: Path, teacher: Path, out: Path, batch_size: int) -> str:
    return json.dumps(
        dict(
            data=str(answers),
            out=str(out),
            teacher=str(teacher),
            student_layers=[0],
            loss="forward_kl",
            targets="sparse",
            ce_weight=0.5,
            top_k=5,
            max_steps=STEPS,
            batch_size=batch_size,
            learning_rate=1e-3,
            logging_steps=1,
            heldout_fraction=0.2,
        )
    )


def batches(out: Path, rank: int) -> list[list[tuple[int, ...]]]:
    recorded = json.loads((out / f"batches-{rank}.json").read_text())[:STEPS]  # the loader may fetch one ahead
    return [sorted(tuple(ids) for ids in batch) for batch in recorded]


def logged_losses(out: Path) -> list[tuple[int, float, float]]:
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [(line["step"], line["loss"], line["forward_kl"]) for line in lines if "loss" in line]


def test_two_processes_each_train_half_of_every_batch_with_the_one_process_losses(answers, sharp_teacher, tmp_path):
    one, two = tmp_path / "one", tmp_path / "two"
    alone = [sys.executable, str(RECORDER), settings(answers, sharp_teacher, one, batch_size=8)]
    subprocess.run(alone, check=True, timeout=600, capture_output=True)
    parallel = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", str(RECORDER)]
    run = subprocess.run(
        [*parallel, settings(answers, sharp_teacher, two, batch_size=4)], timeout=600, capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr[-3000:]

    whole, first, second = batches(one, 0), batches(two, 0), batches(two, 1)
    assert len(whole) == len(first) == len(second) == STEPS
    for step in range(STEPS):
        assert not set(first[step]) & set(second[step])  # each process its own examples
        assert sorted(first[step] + second[step]) == whole[step]  # together, the one process's batch
    # The same sums in another order: equal to float32 rounding, 1e-4 relative after three optimizer steps.
    expected, got = logged_losses(one), logged_losses(two)
    assert [step for step, *_ in got] == [step for step, *_ in expected] == [1, 2, 3]
    for (_, loss, kl), (_, expected_loss, expected_kl) in zip(got, expected, strict=True):
        assert loss == pytest.approx(expected_loss, rel=1e-4) and kl == pytest.approx(expected_kl, rel=1e-4)
    summary, parallel_summary = (json.loads((out / "distill.json").read_text()) for out in (one, two))
    assert parallel_summary["tokens_seen"] == summary["tokens_seen"]


def test_accelerate_launch_cpu_with_several_processes_is_refused_and_names_torchrun(answers, sharp_teacher, tmp_path):
    command = [sys.executable, "-m", "accelerate.commands.launch", "--quiet", "--cpu", "--num_processes", "2"]
    command += ["-m", "alambic", "distill", "--data", str(answers), "--out", str(tmp_path / "student")]
    command += ["--teacher", str(sharp_teacher), "--student-layers", "1", "--max-steps", "1"]
    run = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert run.returncode != 0 and "Traceback" not in run.stderr
    assert any(line.startswith("error:") and "torchrun" in line for line in run.stderr.splitlines())
    assert not (tmp_path / "student" / "checkpoints").exists()
