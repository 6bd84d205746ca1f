"""The feature pass: one row per account, every declared feature, values that say what each style does."""

from __future__ import annotations

import json

import pytest
import sqlglot
from sqlglot import exp

from alambic.monitor.features import ACCOUNT_FEATURES, FEATURES, account_features
from alambic.monitor.source import open_log
from alambic.simulate import Simulation, SimulationSettings, write_jsonl


@pytest.fixture(scope="module")
def features_by_style(tmp_path_factory):
    out = tmp_path_factory.mktemp("week") / "log.jsonl"
    settings = SimulationSettings(seed=12, days=5, scale=0.15, campaigns=("bulk", "chain-of-thought", "pivot"))
    write_jsonl(Simulation(settings), out)
    labels = json.loads((out.parent / "labels.json").read_text())
    features = account_features(open_log([out]))
    assert {f.account for f in features} == set(labels)
    by_style: dict[str, list[dict]] = {}
    for f in features:
        by_style.setdefault(labels[f.account]["style"], []).append(f.values)
    return by_style


def test_every_declared_feature_is_computed_for_every_account(features_by_style):
    for rows in features_by_style.values():
        for values in rows:
            assert list(values) == list(FEATURES)
            assert values["requests"] >= 1 and 0 <= values["single_turn_share"] <= 1


def test_features_describe_what_each_campaign_does(features_by_style):
    (bulk,) = features_by_style["bulk"]
    benign = sorted(
        v["requests_per_active_day"]
        for style, rows in features_by_style.items()
        for v in rows
        if style not in ("bulk", "chain-of-thought", "pivot")
    )
    assert bulk["requests_per_active_day"] > benign[int(0.95 * len(benign))] and bulk["long_answer_share"] == 1
    assert all(v["reasoning_cue_share"] == 1 for v in features_by_style["chain-of-thought"])
    assert all(v["reasoning_cue_share"] < 0.05 for v in features_by_style["person"])
    for pivot in features_by_style["pivot"]:
        assert pivot["newest_model_share"] == 1 and pivot["hours_to_newest_model"] < 6
    classify = features_by_style["integration-classify"]
    assert all(v["templated_share"] > 0.9 for v in classify if v["requests"] >= 20)


def test_the_rows_duckdb_keeps_for_the_pass_hold_no_request_text(tmp_path):
    """The CTEs DuckDB materialises live for the whole pass: their rows must be fixed-width (prompts, addresses
    and user agents digested), so that memory per row stays small; only the account and the model stay text."""
    out = tmp_path / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=3, days=1, scale=0.02, campaigns=("bulk",))), out)
    connection = open_log([out])
    query = sqlglot.parse_one(ACCOUNT_FEATURES, read="duckdb")
    ctes = {cte.alias for cte in query.args["with_"].expressions}
    plan = json.loads(connection.execute(f"EXPLAIN (FORMAT json) {ACCOUNT_FEATURES}").fetchall()[0][1])
    kept = {name for name in _materialised(plan) if name in ctes}
    assert kept
    for name in kept:
        probe = exp.select("*").from_(name)
        probe.set("with_", query.args["with_"].copy())
        columns = connection.execute(f"DESCRIBE {probe.sql('duckdb')}").fetchall()
        text = {column for column, kind, *_ in columns if kind == "VARCHAR" or "[]" in kind or "(" in kind}
        assert text <= {"account", "model"}, (name, text)


def _materialised(plan: list[dict]) -> list[str]:
    """The names of the CTEs in a DuckDB plan (EXPLAIN's JSON)."""
    names = []
    for node in plan:
        if node.get("name") == "CTE":
            names.append(node["extra_info"]["CTE Name"])
        names += _materialised(node.get("children", []))
    return names
