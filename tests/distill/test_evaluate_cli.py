"""`alambic distill` from a TOML file with a flag overriding it, then `alambic evaluate` comparing the teacher,
the student and the undistilled student; and the one-line errors of both."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from alambic.cli import app
from conftest import SHARED_DATA

SHARED_GSM8K = SHARED_DATA / "gsm8k" / "test.jsonl"


@pytest.fixture(scope="module")
def distilled(answers, sharp_teacher, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cli-distill")
    (root / "run.toml").write_text(
        f'data = "{answers}"\nout = "{root / "student"}"\nteacher = "{sharp_teacher}"\n'
        'student_layers = [0]\nloss = "reverse_kl"\ntop_k = 5\nmax_steps = 30\nlearning_rate = 1e-3\n'
        "heldout_fraction = 0.2\nsave_steps = 15\n"
    )
    result = CliRunner().invoke(app, ["distill", "--config", str(root / "run.toml"), "--loss", "forward_kl"])
    assert result.exit_code == 0, result.output
    return root / "student"


def test_distill_reads_the_config_and_a_given_flag_overrides_it(distilled):
    summary = json.loads((distilled / "distill.json").read_text())
    assert summary["config"]["loss"] == "forward_kl" and summary["config"]["max_steps"] == 30
    assert summary["steps"] == 30 and summary["targets"] == "sparse"
    assert (distilled / "model.safetensors").is_file() and (distilled / "tokenizer.json").is_file()
    assert list((distilled / "tensorboard").glob("events.out.tfevents.*"))
    logged = [json.loads(line) for line in (distilled / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in logged if "loss" in line] == [10, 20, 30]
    assert all(line["tokens_per_s"] > 0 for line in logged if "loss" in line)


def test_evaluate_compares_teacher_student_and_undistilled(distilled, answers, sharp_teacher, tmp_path):
    command = ["evaluate", "--student", str(distilled), "--data", str(answers), "--teacher", str(sharp_teacher)]
    result = CliRunner().invoke(app, [*command, "--out", str(tmp_path), "--gsm8k", str(SHARED_GSM8K)])
    assert result.exit_code == 0, result.output
    rows = {entry["role"]: entry["row"] for entry in json.loads((tmp_path / "report.json").read_text())}
    assert rows["teacher"]["agreement"] == 1.0 and rows["teacher"]["kl"] == pytest.approx(0.0, abs=1e-5)
    assert rows["student"]["agreement"] > rows["undistilled"]["agreement"]
    assert rows["student"]["kl"] < rows["undistilled"]["kl"]
    assert rows["student"]["params_M"] < rows["teacher"]["params_M"]
    assert rows["student"]["train_cpu_s"] > 0 and 0 <= rows["student"]["gsm8k"] <= 1
    assert "| undistilled |" in result.stdout and (tmp_path / "loss.png").is_file()


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (["distill", "--out", "x"], "give --data and --out"),
        (["distill", "--data", "/nowhere", "--out", "x", "--teacher", "tiny"], "no harvest directory"),
        (["evaluate", "--student", "/nowhere", "--data", "/nowhere", "--out", "x", "--teacher", "tiny"], "nowhere"),
        (
            [
                "judge",
                "--student",
                "tiny",
                "--questions",
                "q",
                "--endpoint",
                "e",
                "--model",
                "m",
                "--api-key",
                "k",
                "--out",
                "o",
                "--mode",
                "vote",
            ],
            "mode is rubric",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(arguments, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(app, arguments)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("epochs = [[[", "is not TOML"),
        ('epochs = "x"', "epochs = 'x'"),
        ("ce_weight = 5", "ce_weight = 5"),
        ('loss = "nope"', "loss = 'nope'"),
        ('student_layers = [0, "a"]', "student_layers"),
        ("warmup_ratio = true", "warmup_ratio = True"),
        ('extra = "x"', "extra = 'x'"),
    ],
)
def test_a_config_file_s_settings_are_checked_as_the_flags_are(toml, message, tmp_path):
    (tmp_path / "run.toml").write_text(f'data = "{tmp_path}"\nout = "{tmp_path / "student"}"\n{toml}\n')
    result = CliRunner().invoke(app, ["distill", "--config", str(tmp_path / "run.toml")])
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_a_config_file_that_is_not_there_is_one_line_and_exit_code_2(tmp_path):
    result = CliRunner().invoke(app, ["distill", "--config", str(tmp_path / "nothere.toml")])
    assert result.exit_code == 2 and "No such file" in result.output
