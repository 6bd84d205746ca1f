"""How DuckDB runs the feature pass: what it keeps for the whole pass is fixed-width and narrow, so that memory
per row of the log stays small (the pass's figures: benchmarks/feature_pass.py)."""

from __future__ import annotations

import json

import duckdb
import pytest
import sqlglot
from monitor_traffic import row, write
from sqlglot import exp

from alambic.monitor.features import ACCOUNT_FEATURES, account_features
from alambic.monitor.source import open_log
from alambic.simulate import Simulation, SimulationSettings, write_jsonl

BYTES = {
    "BOOLEAN": 1,
    "INTEGER": 4,
    "BIGINT": 8,
    "UBIGINT": 8,
    "DOUBLE": 8,
    "DECIMAL(18,6)": 8,
    "TIMESTAMP WITH TIME ZONE": 8,
}
VARCHAR_BYTES = 16  # DuckDB's string header, which holds up to 12 characters itself (account names, models)


@pytest.fixture(scope="module")
def small_log(tmp_path_factory):
    out = tmp_path_factory.mktemp("small") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=3, days=1, scale=0.02, campaigns=("bulk",))), out)
    return out


def test_the_rows_duckdb_keeps_for_the_pass_hold_no_request_text(small_log):
    """The CTEs DuckDB materialises live for the whole pass: their rows must be fixed-width and narrow (prompts,
    addresses and user agents digested to 64 bits), so memory per row stays small; the account and model stay text."""
    connection = open_log([small_log])
    ctes = {cte.alias for cte in sqlglot.parse_one(ACCOUNT_FEATURES, read="duckdb").args["with_"].expressions}
    kept = {node["extra_info"]["CTE Name"] for node in _plan_nodes(connection, "CTE")} & ctes
    assert kept
    for name in kept:
        wide = {column for column, kind in _columns(connection, name).items() if kind not in BYTES}
        assert wide <= {"account", "model"}, (name, wide)


def test_a_kept_row_holds_each_fact_once_and_flags_as_booleans(small_log):
    """The pass's peak memory grows by the width of `shaped`'s rows: the time kept once (not also as epoch
    seconds), and what a feature only tests (one user turn, a long answer, n > 1) as a boolean, not the number."""
    columns = _columns(open_log([small_log]), "shaped")
    assert sum(BYTES.get(kind, VARCHAR_BYTES) for kind in columns.values()) <= 104, columns


def test_the_window_over_each_account_s_times_holds_those_alone(small_log):
    """A window holds every column it is given until it has read all rows: given the account and time only."""
    (window,) = _plan_nodes(open_log([small_log]), "WINDOW")
    (given,) = window["children"]
    assert given["name"] == "PROJECTION" and given["extra_info"]["Projections"] == ["account", "ts"]


def test_no_join_reads_the_log_row_by_row(small_log):
    """A hash join holds one side and runs the other through it: both sides must be groups (accounts, prompts, an
    account's prompts), never the log's rows, so that prompts shared between accounts are counted per pair."""
    shaped = _shaped_index(small_log)
    joins = _plan_nodes(open_log([small_log]), "HASH_JOIN")
    assert joins
    for join in joins:
        assert not any(_reads_rows(side, shaped) for side in join["children"]), join["extra_info"]


def test_only_the_shaped_rows_are_kept_whole(small_log):
    """DuckDB keeps a CTE's rows until its last reader ends, and keeps the input of DISTINCT aggregates as a CTE of
    its own: every kept relation but `shaped` must hold groups, not a second copy of the rows."""
    shaped = _shaped_index(small_log)
    kept = [cte for cte in _plan_nodes(open_log([small_log]), "CTE") if cte["extra_info"]["Table Index"] != shaped]
    for cte in kept:
        assert not _reads_rows(cte["children"][0], shaped), cte["extra_info"]["CTE Name"]


def test_digests_leave_a_missing_address_or_user_agent_uncounted(tmp_path):
    """DuckDB's hash of NULL is a number: the pass digests only what is there, as COUNT(DISTINCT text) counted."""
    rows = [row(n, "a", n) for n in range(3)]
    rows[1] |= {"client_ip": "10.0.0.1", "user_agent": "curl/8"}
    (features,) = account_features(open_log(write(tmp_path / "log.jsonl", rows)))
    assert features.values["distinct_addresses"] == 1 and features.values["distinct_user_agents"] == 1


def _plan_nodes(connection: duckdb.DuckDBPyConnection, name: str) -> list[dict]:
    """The operators called `name` in DuckDB's plan of the feature pass (EXPLAIN's JSON)."""
    found, nodes = [], json.loads(connection.execute(f"EXPLAIN (FORMAT json) {ACCOUNT_FEATURES}").fetchall()[0][1])
    while nodes:
        node = nodes.pop()
        found += [node] if node.get("name") == name else []
        nodes += node.get("children", [])
    return found


def _columns(connection: duckdb.DuckDBPyConnection, cte: str) -> dict[str, str]:
    """The columns of one of the pass's CTEs and their DuckDB types."""
    query = sqlglot.parse_one(ACCOUNT_FEATURES, read="duckdb")
    probe = exp.select("*").from_(cte)
    probe.set("with_", query.args["with_"].copy())
    return {column: kind for column, kind, *_ in connection.execute(f"DESCRIBE {probe.sql('duckdb')}").fetchall()}


def _shaped_index(log) -> str:
    """The table index of the `shaped` CTE in DuckDB's plan, which its scans name."""
    (shaped,) = [c for c in _plan_nodes(open_log([log]), "CTE") if c["extra_info"]["CTE Name"] == "shaped"]
    return shaped["extra_info"]["Table Index"]


def _reads_rows(node: dict, shaped: str) -> bool:
    """Whether `node` gives out rows of `shaped` one by one: a scan of it reached without grouping on the way."""
    if node["name"] == "CTE_SCAN":
        return node["extra_info"]["CTE Index"] == shaped
    return node["name"] not in ("HASH_GROUP_BY", "UNGROUPED_AGGREGATE") and any(
        _reads_rows(child, shaped) for child in node.get("children", [])
    )
