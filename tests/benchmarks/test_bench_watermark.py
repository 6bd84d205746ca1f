"""The radioactivity benchmark's power test: development and held-out students watermark other prompts, the
held-out tests will not run before their reading is fixed, a suspect is asked through the gateway, and the
diluted harvest is half people's data."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_watermark as bench
from alambic.harvest.dataset import AnswerRow, HarvestDataset, read_rows
from alambic.watermark import KirchenbauerScheme


def _harvest(directory: Path, answer: str) -> Path:
    dataset = HarvestDataset(directory)
    for i in range(200):
        dataset.write(AnswerRow(f"p{i}", 0, 0, [], f"{answer} {i}", "stop", 1, 1, 0.1, 1, 0, "h", "m", 0.0))
    dataset.close()
    return directory


def test_another_salt_watermarks_other_prompts_at_the_same_fraction(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "WORK", tmp_path)
    plain, marked = _harvest(tmp_path / "plain", "plain"), _harvest(tmp_path / "marked", "marked")
    chosen = {}
    for salt in ("development", "held-out"):
        data, used = bench.mixture(plain, marked, 0.1, salt)
        rows = {row.prompt_id: row.answer for row in read_rows(data)}
        assert len(rows) == 200 and len(used) == 20
        assert {p for p, answer in rows.items() if answer.startswith("marked")} == set(used)
        chosen[salt] = set(used)
    assert len(chosen["development"] & chosen["held-out"]) < 10  # ~2 by chance, 20 if the salt were ignored


@pytest.mark.parametrize("section", ["power", "robustness"])
def test_the_held_out_tests_will_not_run_before_their_reading_is_fixed(monkeypatch, section):
    monkeypatch.setattr(bench, "PREREGISTERED", None)
    with pytest.raises(SystemExit, match="power-development"):
        bench.SECTIONS[section]()


def test_the_diluted_harvest_is_half_other_data_written_by_people(tmp_path, monkeypatch):
    monkeypatch.setattr(bench, "WORK", tmp_path)
    rows = read_rows(bench.diluted(_harvest(tmp_path / "marked", "marked")))
    ours = [row for row in rows if row.answer.startswith("marked")]
    others = [row for row in rows if row.prompt_id.startswith("other-")]
    assert len(ours) == len(others) == 200 and len(rows) == 400
    assert all("####" in row.answer and row.messages[0]["role"] == "user" for row in others)  # GSM8K solutions


def test_a_suspect_served_through_the_gateway_is_read_by_the_answers_it_gave(sharp_teacher, tmp_path, monkeypatch):
    suspect = tmp_path / "suspect"
    shutil.copytree(sharp_teacher, suspect)
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Tell me about topic {i}."}) + "\n" for i in range(20)))
    monkeypatch.setattr(bench, "fresh_prompts_file", lambda: prompts)
    found = bench.api_answers_needed(suspect, KirchenbauerScheme("key"))
    assert list(found["by_answers"]) == [16, 20]  # doubling from 16, then every answer
    first, every = found["by_answers"][16], found["by_answers"][20]
    assert 0 < first["pvalue"] <= 1 and 0 < every["pvalue"] <= 1
    assert every["tokens_scored"] >= first["tokens_scored"]  # a tiny model's sampled answers may score none
    assert found["answers_for_1e-6"] is None  # a model that never saw the key
    assert len(list((suspect / "api-answers").glob("*.jsonl"))) >= 1
