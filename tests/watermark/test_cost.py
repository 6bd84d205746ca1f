"""`alambic watermark cost`: a strong green-list bias shows as a detectable mark and a higher perplexity under
the unwatermarked model than the same sampling without it."""

from __future__ import annotations

import json

from typer.testing import CliRunner

from alambic.cli import app
from conftest import SHARED_DATA

SHARED_GSM8K = SHARED_DATA / "gsm8k" / "test.jsonl"


def test_watermark_cost_table(sharp_teacher, tmp_path, monkeypatch):
    monkeypatch.setenv("ALAMBIC_WATERMARK_KEY", "cost-test-key")
    command = ["watermark", "cost", "--gsm8k", str(SHARED_GSM8K), "--model", str(sharp_teacher), "--limit", "6"]
    options = ["--max-tokens", "24", "--delta", "8", "--temperature", "0", "--out", str(tmp_path / "c.json")]
    result = CliRunner().invoke(app, [*command, *options])
    assert result.exit_code == 0, result.output
    rows = {(row["setting"], row["temperature"]): row for row in json.loads((tmp_path / "c.json").read_text())}
    assert set(rows) == {("none", 0.0), ("kgw delta=8", 0.0), ("none", 1.0), ("gumbel", 1.0)}
    plain, marked = rows["none", 0.0], rows["kgw delta=8", 0.0]
    assert plain["median_pvalue"] is None and marked["median_pvalue"] < 1e-3
    assert marked["perplexity"] > 2 * plain["perplexity"]
    assert all(0 <= row["accuracy"] <= 1 and row["answer_tokens"] > 0 for row in rows.values())
    assert "kgw delta=8" in result.stdout


def test_watermark_cost_needs_the_key(monkeypatch):
    monkeypatch.delenv("ALAMBIC_WATERMARK_KEY", raising=False)
    result = CliRunner().invoke(app, ["watermark", "cost", "--gsm8k", str(SHARED_GSM8K), "--model", "tiny"])
    assert result.exit_code == 2 and "ALAMBIC_WATERMARK_KEY" in result.output
