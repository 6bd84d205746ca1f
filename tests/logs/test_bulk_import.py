"""The bulk import path (DuckDB vets v1 JSONL, one bulk write a batch): the same rows as the per-row path,
bad rows found in the middle of a batch, and a kill -9 in the middle of a batch leaving nothing half-written."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from unittest.mock import patch

import pytest
from sqlalchemy import func, select
from test_import_export import BAD_ROWS, count, v1, write_jsonl

from alambic.logs.exporter import v1_rows
from alambic.logs.importer import LogImporter
from alambic.logs.sources import read_rows
from alambic.logs.vetting import Vetter
from alambic.store import Store, bulk
from alambic.store.schema import Account, RequestLog

# Rows that exercise every conversion from v1 to the store's columns.
VARIED = [
    v1("chat"),
    v1("completion", endpoint="/v1/completions", messages=None, prompt="Once upon", params={"stop": "\n"}),
    v1("tokens-list", endpoint="/v1/completions", messages=None, prompt=[1, 2, 3], params={"stop": ["a", "b"]}),
    v1("epoch", time=1764500000, account=None, client_ip=None, user_agent=None, model=None, latency_ms=None),
    v1("offset", time="2026-11-30T23:59:59.5-08:00", params={"logprobs": 2, "top_logprobs": 5, "n": 3, "seed": 7}),
    v1("max-completion", params={"max_completion_tokens": 9, "max_tokens": 64, "stream": True, "top_p": 1}),
    v1("zero-completion", params={"max_completion_tokens": 0, "max_tokens": 64, "logprobs": False}),
    v1("empty-params", params={}, response=None, prompt_tokens=None, completion_tokens=None),
    v1("no-params", params=None, messages=[], response=""),
    v1("multimodal", messages=[{"role": "user", "content": [{"type": "text", "text": "hé ✓"}]}, {"role": "x"}]),
    v1("extras", tenant="eu-1", trace={"span": 3, "tags": ["a", None, 1.5e-7]}, unicode="naïve ✓"),
    v1("gateway", method="POST", finish_reasons=["stop", "length"], responses=["a", "b"], state="", error_type=None),
    v1("refused", status=401, error_type="authentication_error", error_message="bad key", response=None),
    v1("long", user_agent="u" * 500, model="m" * 300, client_ip="f" * 80, endpoint="/v1/" + "e" * 80),
    v1("whole-second", time="2026-11-30T12:00:00Z", latency_ms=0, temperature=0),
    v1("seven-digits", time="2026-11-30T12:00:00.1234567+00:00", admitted_at="2026-11-30T12:00:00,25Z"),
    v1("space-minus-zero", time="2026-11-30 12:00:00.5-00:00", completed_at="2026-11-30T12:00:01+0000"),
    v1("no-seconds", time="2026-11-30T12:00Z", admitted_at="2026-11-30T11:59:59.000001+00:00"),
    v1(
        "monitor-fields",
        prompt_hash="p-3f2a",
        conversation="c-91bd",
        admitted_at="2026-11-30T12:00:00.25+00:00",
        completed_at=1764504001,
        first_token_ms=41.5,
        gateway_instance="gw-1:4242",
        watermark_key_id="k-77",
        watermark_params={"scheme": "kgw", "gamma": 0.25, "delta": 2.0},
    ),
]


# Lines as other writers format them: the bulk path keeps a field's own JSON text, which must read back as the
# per-row path's re-encoded value (whitespace, escapes, an empty object with spaces, a key given twice).
WRITTEN = [
    '{"id":"dense","time":"2026-11-30T12:00:00.123456Z","account":"acme","endpoint":"/v1/chat/completions",'
    '"status":200,"messages":[{"role":"user","content":"caf\\u00e9 \\"q\\" \\n"}],"params":{ \t},"response":"a"}',
    '{ "id" : "spaced" , "time" : 1764500000 , "account" : null , "endpoint" : "/v1/completions" , "status" : 500 ,'
    ' "prompt" : "x" , "params" : { "stop" : [ "a" , "\\u2713" ] , "seed" : -3 } , "tenant" : { "k" : [ 1 , 2.50 ] } }',
    '{"id":"first","time":"2026-11-30T12:00:00Z","account":"acme","endpoint":"/v1/chat/completions","status":200,'
    '"messages":null,"messages":[{"role":"user"}],"id":"twice","extra_field":null}',
]


def per_row_import(store: Store, log: Path) -> None:
    """The per-row path (the JSON Schema on each row), which the bulk path must match row for row."""
    LogImporter(store).import_rows(read_rows(log))


def test_the_bulk_path_stores_what_the_per_row_path_stores(store, tmp_path):
    log = write_jsonl(tmp_path / "log.jsonl", [json.dumps(row) for row in VARIED] + WRITTEN)
    report = LogImporter(store).import_files([log])
    assert (report.imported, report.rejected, report.per_row) == (len(VARIED) + len(WRITTEN), [], 0)
    reference = Store(f"sqlite:///{tmp_path / 'reference.db'}")
    per_row_import(reference, log)
    assert list(v1_rows(store)) == list(v1_rows(reference))


def test_bad_rows_in_the_middle_of_a_bulk_batch_are_named_and_the_rest_imported_once(store, tmp_path):
    lines, expected = [], []
    for number, (bad, reason) in enumerate(BAD_ROWS.values()):
        lines += [json.dumps(v1(f"good-{number}-{i}")) for i in range(3)]
        lines.append(bad)
        expected.append((len(lines), reason))
    lines += ["", json.dumps(v1("good-0-1", response="same id, later line"))]
    expected.append((len(lines), "duplicate id 'good-0-1'"))
    log = write_jsonl(tmp_path / "log.jsonl", lines)
    report = LogImporter(store).import_files([log])
    good = 3 * len(BAD_ROWS)
    assert report.imported == good and count(store) == good
    assert [(r.line, reason in r.reason) for r, (_, reason) in zip(report.rejected, expected, strict=True)] == [
        (line, True) for line, _ in expected
    ], report.rejected
    again = LogImporter(store).import_files([log])
    assert (again.imported, again.already_present, count(store)) == (0, good, good)


def test_a_duplicate_id_across_bulk_batches_is_reported(sqlite_store, tmp_path):
    lines = [json.dumps(v1(f"r{i}")) for i in range(7)] + [json.dumps(v1("r1", response="another"))]
    report = LogImporter(sqlite_store, batch_rows=3).import_files([write_jsonl(tmp_path / "log.jsonl", lines)])
    assert report.imported == 7 and report.per_row == 0
    assert [(r.line, "duplicate id 'r1'" in r.reason) for r in report.rejected] == [(8, True)]


def test_rows_that_need_their_tokens_counted_take_the_per_row_path(sqlite_store, tmp_path):
    rows = [v1("counted", prompt_tokens=None, completion_tokens=None), v1("given")]
    log = write_jsonl(tmp_path / "log.jsonl", [json.dumps(r) for r in rows])
    report = LogImporter(sqlite_store, count_tokens=lambda texts: [len(t.split()) for t in texts]).import_files([log])
    assert (report.imported, report.per_row) == (2, 1)
    counted, given = list(v1_rows(sqlite_store))
    assert (counted["prompt_tokens"], counted["completion_tokens"], given["prompt_tokens"]) == (2, 2, 12)


KILLED_IMPORT = textwrap.dedent(
    """
    import os, signal, sys
    from pathlib import Path
    from alambic.logs import importer
    from alambic.store import Store, bulk

    writes = 0
    original = bulk.insert_requests

    def insert_then_die(*args):
        global writes
        original(*args)
        writes += 1
        if writes == 2:  # the second batch is written but not committed
            os.kill(os.getpid(), signal.SIGKILL)

    bulk.insert_requests = insert_then_die
    importer.LogImporter(Store(sys.argv[1]), batch_rows=4).import_files([Path(sys.argv[2])])
    """
)


def test_an_import_killed_in_the_middle_of_a_batch_leaves_whole_batches_and_resumes(store, tmp_path):
    log = write_jsonl(tmp_path / "log.jsonl", [json.dumps(v1(f"r{i}", account=f"a{i}")) for i in range(10)])
    url = store.engine.url.render_as_string(hide_password=False)
    command = [sys.executable, "-c", KILLED_IMPORT, url, str(log)]
    killed = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert killed.returncode == -9, killed.stderr
    with store.session() as session:
        assert session.scalar(select(func.count(RequestLog.id))) == 4  # the first batch, not a row of the second
        assert session.scalar(select(func.count(Account.id))) == 4
    report = LogImporter(store, batch_rows=4).import_files([log])
    assert (report.imported, report.already_present, count(store)) == (6, 4, 10)
    assert sorted(r["id"] for r in v1_rows(store)) == sorted(f"r{i}" for i in range(10))


@pytest.mark.parametrize("batch_rows", [1, 1000])
def test_a_file_of_only_bad_rows_imports_nothing(sqlite_store, tmp_path, batch_rows):
    log = write_jsonl(tmp_path / "log.jsonl", ["{", "[]", json.dumps(v1("x", status="200"))])
    report = LogImporter(sqlite_store, batch_rows=batch_rows).import_files([log])
    assert (report.imported, [r.line for r in report.rejected]) == (0, [1, 2, 3])


def test_an_imports_memory_does_not_grow_with_the_file(sqlite_store, tmp_path):
    """Memory is two batches whatever the file's length: nothing of a batch is kept once it is written."""

    def peak_bytes(rows: int) -> int:
        log = write_jsonl(tmp_path / f"{rows}.jsonl", [json.dumps(v1(f"{rows}-{i}")) for i in range(rows)])
        tracemalloc.start()
        try:
            assert LogImporter(sqlite_store, batch_rows=100).import_files([log]).imported == rows
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    peak_bytes(100)  # the first import pays for what is loaded once
    assert peak_bytes(2400) < 1.5 * peak_bytes(300)


def test_the_next_chunk_is_vetted_in_another_process_while_a_batch_is_written(sqlite_store, tmp_path, monkeypatch):
    """Vetting holds the GIL, so a worker process vets chunk k+1 while the store takes batch k: an import costs
    the slower of the two, not both."""
    log = write_jsonl(tmp_path / "log.jsonl", [json.dumps(v1(f"r{i}")) for i in range(9)])
    vet, write = Vetter.vet, LogImporter._write

    def vet_and_say(self, lines, texts):
        (tmp_path / f"vetted-{lines[0]}").write_text(str(os.getpid()))  # the forked worker runs this patch too
        return vet(self, lines, texts)

    def wait_then_write(self, connection, batch, read, path):
        following = tmp_path / f"vetted-{self.report.read + 1 + self.batch_rows}"
        overlapped.append(self.report.read == 6 or _appears(following))
        write(self, connection, batch, read, path)

    overlapped: list[bool] = []
    monkeypatch.setattr(Vetter, "vet", vet_and_say)
    monkeypatch.setattr(LogImporter, "_write", wait_then_write)
    report = LogImporter(sqlite_store, batch_rows=3).import_files([log])
    assert (report.imported, overlapped) == (9, [True, True, True])
    assert str(os.getpid()) not in {(tmp_path / f"vetted-{line}").read_text() for line in (1, 4, 7)}


def _appears(path: Path, timeout_s: float = 10) -> bool:
    deadline = time.monotonic() + timeout_s
    while not path.exists():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


@pytest.mark.parametrize("bad_line", [3, 4, 6, 7])  # the last and first lines of chunks of 3
def test_a_bad_row_at_a_chunk_boundary_is_named_by_its_line(sqlite_store, tmp_path, bad_line):
    lines = [json.dumps(v1(f"r{i}")) for i in range(1, 10)]
    lines[bad_line - 1] = json.dumps(v1(f"r{bad_line}", status="200"))
    log = write_jsonl(tmp_path / "log.jsonl", lines)
    report = LogImporter(sqlite_store, batch_rows=3).import_files([log])
    assert (report.imported, [r.line for r in report.rejected]) == (8, [bad_line])
    again = LogImporter(sqlite_store, batch_rows=3).import_files([log])
    assert (again.imported, again.already_present, count(sqlite_store)) == (0, 8, 8)


def test_an_import_syncs_as_the_store_does_and_leaves_checkpoints_as_they_were(sqlite_store, tmp_path):
    """The import defers checkpoints, for speed, but never syncing: a crash must not corrupt the store."""
    log = write_jsonl(tmp_path / "log.jsonl", [json.dumps(v1(f"r{i}")) for i in range(5)])
    seen = []
    original = bulk.insert_requests

    def insert(connection, batch):
        pragmas = ("synchronous", "wal_autocheckpoint", "page_size", "cache_size")
        synchronous, pages, page_size, cache = (connection.exec_driver_sql(f"PRAGMA {p}").scalar() for p in pragmas)
        seen.append((synchronous, pages * page_size, cache))  # the log's length between checkpoints, in bytes
        original(connection, batch)

    with patch.object(bulk, "insert_requests", insert):
        LogImporter(sqlite_store, batch_rows=2).import_files([log])
    assert set(seen) == {(1, bulk.IMPORT_CHECKPOINT_BYTES, -bulk.IMPORT_CACHE_KIB)}  # synchronous NORMAL throughout
    with sqlite_store.engine.connect() as connection:
        assert connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar() == 1000
        assert connection.exec_driver_sql("PRAGMA cache_size").scalar() == -2000  # SQLite's default
    assert count(sqlite_store) == 5


def test_only_json_objects_are_vetted_in_bulk(sqlite_store, tmp_path):
    lines = [" \t" + json.dumps(v1("spaced")), '"a string"', "5", json.dumps(v1("plain"))]
    report = LogImporter(sqlite_store).import_files([write_jsonl(tmp_path / "log.jsonl", lines)])
    assert (report.imported, report.per_row, [r.line for r in report.rejected]) == (2, 2, [2, 3])


def test_times_are_kept_whatever_the_databases_time_zone(store, tmp_path):
    """Times travel to the store as UTC text: PostgreSQL must read them as UTC, not in its session's time zone."""
    if store.engine.dialect.name == "postgresql":
        with store.engine.connect() as connection:
            connection.exec_driver_sql(f"ALTER DATABASE \"{store.engine.url.database}\" SET timezone TO 'Asia/Tokyo'")
            connection.commit()
        store.engine.dispose()  # new sessions take the database's time zone
    times = {"time": "2026-11-30T23:59:59.5-08:00", "admitted_at": 1764504001, "completed_at": "2026-12-01T08:00:02Z"}
    LogImporter(store).import_files([write_jsonl(tmp_path / "log.jsonl", [json.dumps(v1("t", **times))])])
    [row] = v1_rows(store)
    moments = [datetime.fromisoformat(row[name]) for name in times]
    assert moments == [datetime.fromisoformat(text) for text in ("2026-12-01T07:59:59.5Z", "2025-11-30T12:00:01Z")] + [
        datetime(2026, 12, 1, 8, 0, 2, tzinfo=UTC)
    ]
