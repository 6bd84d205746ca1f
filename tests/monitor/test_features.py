"""The feature pass: one row per account, every declared feature, values that say what each style does."""

from __future__ import annotations

import json

import duckdb
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


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=3, days=1, scale=0.02, campaigns=("bulk",))), out)
    return out


def test_the_rows_duckdb_keeps_for_the_pass_hold_no_request_text(small_log):
    """The CTEs DuckDB materialises live for the whole pass: their rows must be fixed-width (prompts, addresses
    and user agents digested), so that memory per row stays small; only the account and the model stay text."""
    connection = open_log([small_log])
    query = sqlglot.parse_one(ACCOUNT_FEATURES, read="duckdb")
    ctes = {cte.alias for cte in query.args["with_"].expressions}
    kept = {node["extra_info"]["CTE Name"] for node in _plan_nodes(connection, "CTE")} & ctes
    assert kept
    for name in kept:
        probe = exp.select("*").from_(name)
        probe.set("with_", query.args["with_"].copy())
        columns = connection.execute(f"DESCRIBE {probe.sql('duckdb')}").fetchall()
        text = {column for column, kind, *_ in columns if kind == "VARCHAR" or "[]" in kind or "(" in kind}
        assert text <= {"account", "model"}, (name, text)


def test_the_window_over_each_account_s_times_holds_those_alone(small_log):
    """A window holds every column it is given until it has read all rows: given the account and time only."""
    (window,) = _plan_nodes(open_log([small_log]), "WINDOW")
    (given,) = window["children"]
    assert given["name"] == "PROJECTION" and given["extra_info"]["Projections"] == ["account", "ts"]


def _plan_nodes(connection: duckdb.DuckDBPyConnection, name: str) -> list[dict]:
    """The operators called `name` in DuckDB's plan of the feature pass (EXPLAIN's JSON)."""
    found, nodes = [], json.loads(connection.execute(f"EXPLAIN (FORMAT json) {ACCOUNT_FEATURES}").fetchall()[0][1])
    while nodes:
        node = nodes.pop()
        found += [node] if node.get("name") == name else []
        nodes += node.get("children", [])
    return found
