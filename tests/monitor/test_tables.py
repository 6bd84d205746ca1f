"""The tables every pass of the monitor reads: built whole from `requests`, or kept for a window that moves with a
replay's steps, they are the same; a follower that reads a row after its step was scored builds them again."""

from __future__ import annotations

from datetime import timedelta

import duckdb
import pytest
from monitor_traffic import MINUTE, counting, row, traffic, write

import alambic.monitor.tables as tables
from alambic.logs.importer import LogImporter
from alambic.monitor.follow import Follower
from alambic.monitor.replay import SteppedMonitor
from alambic.monitor.source import open_log
from alambic.monitor.tables import WindowTables, load_tables
from alambic.simulate import Simulation, SimulationSettings, write_jsonl

HOUR = 3_600_000_000  # microseconds


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("tables") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=5, days=2, scale=0.02, campaigns=("bulk", "hydra"))), out)
    return out


def _contents(connection: duckdb.DuckDBPyConnection) -> dict[str, list[tuple]]:
    columns = {"shaped": "* REPLACE (epoch_us(t) AS t)", "account_prompts": "* REPLACE (epoch_us(first_t) AS first_t)"}
    return {
        name: connection.execute(f"SELECT {columns.get(name, '*')} FROM main.{name} ORDER BY ALL").fetchall()
        for name in ("shaped", "account_prompts", "prompt_texts")
    }


def _requests(connection: duckdb.DuckDBPyConnection, since: int | None, until: int) -> None:
    lower = f" AND epoch_us(t) > {since}" if since is not None else ""
    connection.execute(f"CREATE OR REPLACE VIEW requests AS SELECT * FROM log WHERE epoch_us(t) <= {until}{lower}")


@pytest.mark.parametrize("window_hours", [None, 12])
def test_tables_kept_for_a_moving_window_are_those_a_whole_build_gives(simulated, window_hours):
    kept, window = open_log([simulated], name="log"), WindowTables("log")
    first, last = kept.execute("SELECT epoch_us(min(t)), epoch_us(max(t)) FROM log").fetchone()
    boundaries = list(range(first + 5 * HOUR, last + 5 * HOUR, 5 * HOUR))
    assert len(boundaries) >= 8
    for until in boundaries:
        since = until - window_hours * HOUR if window_hours else None
        _requests(kept, since, until)
        window.advance(kept, since, until)
        whole = open_log([simulated], name="log")
        _requests(whole, since, until)
        load_tables(whole)
        found, expected = _contents(kept), _contents(whole)
        assert found == expected and expected["shaped"]


def test_the_tables_are_built_once_for_each_definition_of_requests(tmp_path, monkeypatch):
    builds = []
    append = tables._append
    monkeypatch.setattr(tables, "_append", lambda *args, **kwargs: builds.append(1) or append(*args, **kwargs))
    connection = open_log(write(tmp_path / "log.jsonl", traffic()), name="log")
    _requests(connection, None, 10**18)
    load_tables(connection)
    load_tables(connection)  # one log scored twice, or calibrated and scored: read once
    assert len(builds) == 1
    _requests(connection, None, 0)  # another step: the tables are those of the rows it holds
    load_tables(connection)
    assert len(builds) == 2 and connection.execute("SELECT count(*) FROM shaped").fetchone() == (0,)


def test_prompts_of_one_template_that_duckdb_s_own_hash_confuses_stay_two_prompts(tmp_path):
    asked = ["A rectangle is 2 cm by 2 cm. What is its area?", "A rectangle is 9 cm by 5 cm. What is its area?"]
    collide = duckdb.connect().execute("SELECT hash(?) = hash(?)", asked).fetchone()[0]
    rows = [row(n, "pupil", n) | {"messages": [{"role": "user", "content": text}]} for n, text in enumerate(asked)]
    connection = open_log(write(tmp_path / "log.jsonl", rows))
    load_tables(connection)
    assert collide  # DuckDB's hash of text, on this version
    assert connection.execute("SELECT count(*) FROM account_prompts").fetchone() == (2,)
    assert sorted(p for (p,) in connection.execute("SELECT prompt FROM prompt_texts").fetchall()) == asked


def test_a_follower_shapes_a_row_that_arrives_after_its_step_was_scored(sqlite_store, tmp_path):
    rows = traffic()
    importer = LogImporter(sqlite_store)
    importer.import_files(write(tmp_path / "first.jsonl", rows[:-1]))
    follower = Follower(sqlite_store, tmp_path / "checkpoint", counting, 10 * MINUTE, lag=timedelta(0))
    follower.poll()
    late = row(99, "quiet", 30)  # logged at 00:30, read after the steps to 01:50 were scored
    importer.import_files(write(tmp_path / "second.jsonl", [late, rows[-1]]))
    follower.poll()
    shaped = follower.connection.execute("SELECT count(*), count(*) FILTER (account = 'quiet') FROM shaped").fetchone()
    assert shaped == (len(rows) + 1, 3)


def test_a_replay_keeps_the_tables_unless_its_scoring_reads_requests_alone(tmp_path):
    files = write(tmp_path / "log.jsonl", traffic())
    kept = SteppedMonitor(open_log(files, name="log"), counting, 10 * MINUTE)
    kept.advance()
    assert kept.connection.execute("SELECT count(*) FROM shaped").fetchall() == [(len(traffic()),)]
    alone = SteppedMonitor(open_log(files, name="log"), counting, 10 * MINUTE, tables=False)
    alone.advance()
    assert alone.connection.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'shaped'").fetchall() == [
        (0,)
    ]
