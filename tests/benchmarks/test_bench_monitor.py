"""The monitor's benchmark: each campaign's requests (all its accounts) before the replay first flagged it, the
worst per style; the feature pass measured in a process of its own; a smoke run writes every figure."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "monitor"))
from monitor_traffic import MINUTE, counting, traffic, write

import bench_monitor
import feature_pass
from alambic.simulate import Simulation, SimulationSettings, write_jsonl

# `steady` and `late` are one campaign (hydra), `quiet` another (mimic) that is never flagged, `closer` benign.
LABELS = {
    "steady": {"kind": "campaign", "style": "hydra", "campaign_id": "c1"},
    "late": {"kind": "campaign", "style": "hydra", "campaign_id": "c1"},
    "quiet": {"kind": "campaign", "style": "mimic", "campaign_id": "c2"},
    "closer": {"kind": "benign", "style": "integration", "campaign_id": None},
}


def test_a_replayed_week_counts_each_campaigns_requests_before_its_first_flag(tmp_path):
    [log] = write(tmp_path / "log.jsonl", traffic())
    replayed = bench_monitor.replay_week(log, counting, 10 * MINUTE, LABELS)
    assert replayed["campaigns"] == {
        # steady is flagged at the 00:20 step, its 3rd request; late has not started
        "c1": {"style": "hydra", "accounts": 2, "requests": 15, "requests_before_flag": 3},
        "c2": {"style": "mimic", "accounts": 1, "requests": 2, "requests_before_flag": None},
    }
    assert replayed["benign_flagged"] == 0 and replayed["rows"] == len(traffic()) and replayed["rows_per_s"] > 0


def test_the_style_table_reports_the_worst_campaign_and_a_never_flagged_one_as_null():
    accounts = {**LABELS, **{f"b{i}": {"kind": "benign", "style": "chat", "campaign_id": None} for i in range(5)}}
    scores = {a: 1.0 if label["kind"] == "campaign" else 0.1 for a, label in accounts.items()}
    run = {
        "labels": accounts,
        "monitor": scores,
        "actions": dict.fromkeys(accounts, "none"),
        "campaign_of": dict.fromkeys(accounts),
        "baselines": {"volume": scores, "rules": scores},
        "rules_fired": dict.fromkeys(accounts, False),
        "campaigns": {
            "c1": {"style": "hydra", "accounts": 2, "requests": 15, "requests_before_flag": 3},
            "c2": {"style": "mimic", "accounts": 1, "requests": 2, "requests_before_flag": None},
            "c3": {"style": "hydra", "accounts": 4, "requests": 5000, "requests_before_flag": 1200},
        },
        "rules_campaigns": {
            "c1": {"style": "hydra", "accounts": 2, "requests": 15, "requests_before_flag": None},
            "c2": {"style": "mimic", "accounts": 1, "requests": 2, "requests_before_flag": 2},
            "c3": {"style": "hydra", "accounts": 4, "requests": 5000, "requests_before_flag": 600},
        },
    }
    table = bench_monitor.style_table(run)
    hydra, mimic = table["hydra"], table["mimic"]
    assert (hydra["requests_before_flag"], hydra["campaigns"], hydra["flagged_before_target"]) == (1200, 2, 1)
    assert (mimic["requests_before_flag"], mimic["campaigns"], mimic["flagged_before_target"]) == (None, 1, 0)
    rules = hydra["baselines"]["rules"]
    assert (rules["requests_before_flag"], rules["flagged_before_target"]) == (None, 1)
    assert table["mimic"]["baselines"]["rules"]["requests_before_flag"] == 2
    assert "requests_before_flag" not in hydra["baselines"]["volume"]  # a score, with no flag to replay


def test_linking_is_also_measured_over_the_accounts_that_sent_the_campaign_s_prompts():
    """A hydra account that sent only cover traffic holds none of the campaign's evidence: the share of the others
    in the campaign's group is reported beside the share of all."""
    hydra = {"kind": "campaign", "style": "hydra", "campaign_id": "c1"}
    labels = {
        "a": {**hydra, "extraction_requests": 4},
        "b": {**hydra, "extraction_requests": 1},
        "cover": {**hydra, "extraction_requests": 0},
        "person": {"kind": "benign", "style": "person", "campaign_id": None, "extraction_requests": None},
    }
    found = bench_monitor.linking({"a": "g1", "b": "g1", "cover": None, "person": None}, labels)["c1"]
    assert found["largest_group_share"] == 2 / 3 and found["largest_group_share_sent_extraction"] == 1.0
    assert found["benign_in_group"] == 0


def test_linking_counts_the_campaigns_that_share_a_campaign_s_group():
    """Distinct campaigns merged into one group are one actor to the monitor: reported beside the shares."""
    labels = {
        "a": {"kind": "campaign", "style": "hydra", "campaign_id": "c1"},
        "b": {"kind": "campaign", "style": "hydra", "campaign_id": "c1"},
        "c": {"kind": "campaign", "style": "sharded", "campaign_id": "c2"},
        "d": {"kind": "campaign", "style": "sharded", "campaign_id": "c2"},
        "e": {"kind": "campaign", "style": "mimic", "campaign_id": "c3"},
        "f": {"kind": "campaign", "style": "mimic", "campaign_id": "c3"},
        "person": {"kind": "benign", "style": "person", "campaign_id": None},
    }
    groups = {"a": "g1", "b": "g1", "c": "g1", "d": "g1", "e": "g2", "f": "g2", "person": None}
    found = bench_monitor.linking(groups, labels)
    assert {c: f["campaigns_in_group"] for c, f in found.items()} == {"c1": 2, "c2": 2, "c3": 1}
    assert all(f["largest_group_share"] == 1.0 and f["benign_in_group"] == 0 for f in found.values())


def test_the_feature_pass_runs_in_a_child_that_reports_its_peak_rss_and_cpu_time(tmp_path):
    log = tmp_path / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=2, days=1, scale=0.02, campaigns=("bulk",))), log)
    figures = feature_pass.measure([log])
    labels = json.loads((tmp_path / "labels.json").read_text())
    assert figures["rows"] == len(log.read_text().splitlines()) and figures["accounts"] == len(labels)
    assert figures["threads"] == 1 and figures["peak_rss_mib"] > 0 and figures["rows_per_s"] > 0
    assert figures["cpu_seconds"] > 0 and figures["rows_per_cpu_s"] == figures["rows"] / figures["cpu_seconds"]


def test_a_smoke_run_writes_every_figure(tmp_path, monkeypatch):
    monkeypatch.setenv("ALAMBIC_CACHE_DIR", str(tmp_path / "cache"))  # the stand-in encoder's vectors stay here
    monkeypatch.setattr(bench_monitor, "REFERENCE_SEEDS", (1000,))
    monkeypatch.setitem(bench_monitor.SMOKE, "scale", 0.03)
    monkeypatch.setitem(bench_monitor.SMOKE, "replay_step_hours", 72.0)
    monkeypatch.setitem(bench_monitor.SMOKE, "million_scale", 0.02)
    monkeypatch.setattr(bench_monitor, "spark_speed", lambda log: {"rows": 1})  # Spark: tests/monitor
    vectorizer = HashingVectorizer(n_features=64, norm="l2", alternate_sign=False)
    monkeypatch.setattr(
        bench_monitor, "minilm_encoder", lambda: lambda texts: vectorizer.transform(texts).toarray().astype(np.float32)
    )
    bench_monitor.main(["--smoke", "--out", str(tmp_path)])
    written = json.loads((tmp_path / "monitor.json").read_text())
    assert written["settings"]["replay_step_hours"] == 72.0 and written["settings"]["content"]
    assert list((tmp_path / "cache" / "benchmarks").glob("monitor-embeddings-*/part-*.parquet"))  # content was scored
    for figures in written["styles"].values():
        assert {"auc", "tpr_at_0.1pct_fpr", "requests_before_flag", "benign_blocked", "baselines"} <= figures.keys()
    counts = [c["requests_before_flag"] for c in written["campaigns"].values()]
    assert counts and all(count is None or count > 0 for count in counts)
    assert written["replay"]["monitor"]["rows_per_s"] > 0 and written["replay"]["rules"]["rows_per_s"] > 0
    assert all("requests_before_flag" in f["baselines"]["rules"] for f in written["styles"].values())
    alone = written["linking_alone"]  # the multi-account styles that linked any accounts in their own weeks
    assert alone and "bulk" not in alone and all(0 <= f["worst_share"] <= 1 for f in alone.values())
    scaled = written["at_a_million_rows"]
    passes = scaled["feature_pass"]
    assert passes["full"]["rows"] > passes["quarter"]["rows"] > 0
    assert passes["quarter_sixteen_weeks"]["rows"] > passes["quarter_four_weeks"]["rows"] > passes["quarter"]["rows"]
    assert scaled["peak_rss_full_over_quarter"] > 0 and scaled["peak_rss_four_weeks_over_one"] > 0
    within = scaled["feature_pass_within_memory_limit"]
    assert within.keys() == passes.keys() and within["full"]["memory_limit"] == bench_monitor.FEATURE_PASS_MEMORY
    assert scaled["peak_rss_sixteen_weeks_over_one_within_memory_limit"] > 0
    replays = scaled["replay"]
    assert replays["quarter_four_weeks"]["rows"] == passes["quarter_four_weeks"]["rows"]
    assert replays["quarter_four_weeks"]["steps"] > replays["quarter"]["steps"] > 0
    assert replays["quarter"]["window_hours"] == 7 * 24 and scaled["replay_peak_rss_four_weeks_over_one"] > 0
    assert scaled["spark"]["rows"] == 1
    embeddings = scaled["embeddings"]
    assert 0 < embeddings["prompts_embedded"] < embeddings["prompts_asked"] and 0 < embeddings["cached_share"] < 1
