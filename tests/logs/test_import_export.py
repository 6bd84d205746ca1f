"""Request log v1: bad rows named by line, imports exactly once, presets, and the gateway's rows round-trip."""

from __future__ import annotations

import csv
import gzip
import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sqlalchemy import func, select

from alambic.logs.exporter import ExportFilter, export_log, v1_rows
from alambic.logs.format import V1_FIELDS
from alambic.logs.importer import LogImporter
from alambic.logs.mapping import field_map
from alambic.logs.sources import read_rows
from alambic.store import Store
from alambic.store.schema import Account, RequestLog


def v1(request_id: str, **fields) -> dict:
    row = {
        "id": request_id,
        "time": "2026-11-30T12:00:00+01:00",
        "account": "acme",
        "client_ip": "203.0.113.7",
        "user_agent": "OpenAI/Python 2.3.0",
        "endpoint": "/v1/chat/completions",
        "model": "smollm2",
        "messages": [{"role": "user", "content": f"question {request_id}"}],
        "params": {"max_tokens": 64, "temperature": 0.7},
        "response": "an answer",
        "prompt_tokens": 12,
        "completion_tokens": 3,
        "status": 200,
        "latency_ms": 41.5,
    }
    row.update(fields)
    return row


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


def count(store: Store) -> int:
    with store.session() as session:
        return session.scalar(select(func.count(RequestLog.id)))


BAD_ROWS = {
    "malformed JSON": ('{"id": "x", "time": ', "malformed JSON"),
    "not an object": ("[1, 2, 3]", "must be a JSON object"),
    "missing id": (json.dumps({k: v for k, v in v1("x").items() if k != "id"}), "missing required field id"),
    "missing status": (json.dumps({k: v for k, v in v1("x").items() if k != "status"}), "status"),
    "status as text": (json.dumps(v1("x", status="200")), "status: must be integer"),
    "tokens negative": (json.dumps(v1("x", prompt_tokens=-1)), "prompt_tokens"),
    "n as text": (json.dumps(v1("x", params={"n": "2"})), "params.n"),
    "messages not a list": (json.dumps(v1("x", messages="hi")), "messages"),
    "message without role": (json.dumps(v1("x", messages=[{"content": "hi"}])), "role"),
    "time without offset": (json.dumps(v1("x", time="2026-11-30T12:00:00")), "no UTC offset"),
    "time not a time": (json.dumps(v1("x", time="yesterday")), "not ISO 8601"),
    "messages and prompt": (json.dumps(v1("x", prompt="also")), "not both"),
}


@pytest.mark.parametrize("kind", BAD_ROWS)
def test_a_bad_row_is_reported_by_line_and_the_good_rows_are_imported_once(kind, store, tmp_path):
    bad, reason = BAD_ROWS[kind]
    log = write_jsonl(tmp_path / "log.jsonl", [json.dumps(v1("a")), bad, json.dumps(v1("b"))])
    report = LogImporter(store).import_files([log])
    assert report.imported == 2 and count(store) == 2
    assert [(r.line, reason in r.reason) for r in report.rejected] == [(2, True)], report.rejected
    again = LogImporter(store).import_files([log])
    assert again.imported == 0 and again.already_present == 2 and count(store) == 2


def test_a_duplicate_id_inside_the_file_is_reported_even_across_batches(sqlite_store, tmp_path):
    lines = [json.dumps(v1(f"r{i}")) for i in range(7)] + [json.dumps(v1("r1", response="another"))]
    report = LogImporter(sqlite_store, batch_rows=3).import_files([write_jsonl(tmp_path / "log.jsonl", lines)])
    assert report.imported == 7
    assert [(r.line, "duplicate id 'r1'" in r.reason) for r in report.rejected] == [(8, True)]


def test_unknown_fields_are_kept_and_accounts_are_created(sqlite_store, tmp_path):
    log = write_jsonl(tmp_path / "log.jsonl", [json.dumps(v1("a", tenant="eu-1", trace={"span": 3}))])
    LogImporter(sqlite_store).import_files([log])
    (row,) = list(v1_rows(sqlite_store))
    assert row["tenant"] == "eu-1" and row["trace"] == {"span": 3}
    assert row["time"] == "2026-11-30T11:00:00.000000+00:00" and row["account"] == "acme"
    with sqlite_store.session() as session:
        assert session.scalar(select(Account.name)) == "acme"


def test_an_interrupted_import_resumes_without_loss_or_duplicates(sqlite_store, tmp_path):
    log = write_jsonl(tmp_path / "log.jsonl", [json.dumps(v1(f"r{i}")) for i in range(10)])
    rows = list(read_rows(log))
    LogImporter(sqlite_store, batch_rows=4).import_rows(rows[:6])  # killed after one whole batch and part of another
    assert count(sqlite_store) == 6
    report = LogImporter(sqlite_store, batch_rows=4).import_files([log])
    assert (report.imported, report.already_present, count(sqlite_store)) == (4, 6, 10)


def test_null_token_counts_are_counted_with_the_tokenizer(sqlite_store, tmp_path):
    log = write_jsonl(tmp_path / "log.jsonl", [json.dumps(v1("a", prompt_tokens=None, completion_tokens=None))])
    LogImporter(sqlite_store, count_tokens=lambda texts: [len(t.split()) for t in texts]).import_files([log])
    (row,) = list(v1_rows(sqlite_store))
    assert (row["prompt_tokens"], row["completion_tokens"]) == (2, 2)


def test_csv_gzip_and_parquet_hold_the_same_rows(sqlite_store, tmp_path):
    rows = [v1("a"), v1("b", endpoint="/v1/completions", messages=None, prompt="[not json] text", extra_field=1)]
    jsonl = tmp_path / "log.jsonl.gz"
    with gzip.open(jsonl, "wt") as handle:
        handle.writelines(json.dumps(row) + "\n" for row in rows)
    csv_path = tmp_path / "log.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, [*V1_FIELDS, "extra"])
        writer.writeheader()
        for row in rows:
            cells = {
                k: json.dumps(v) if k in ("messages", "prompt", "params") and v is not None else v
                for k, v in row.items()
            }
            extra = {k: cells.pop(k) for k in list(cells) if k not in V1_FIELDS}
            writer.writerow({**cells, "extra": json.dumps(extra) if extra else ""})
    export_target = tmp_path / "exported.parquet"
    LogImporter(sqlite_store).import_files([jsonl])
    export_log(sqlite_store, export_target)
    from_jsonl = list(v1_rows(sqlite_store))
    for source in (csv_path, export_target):
        other = Store(f"sqlite:///{tmp_path / (source.stem + '.db')}")
        report = LogImporter(other).import_files([source])
        assert (report.imported, report.rejected) == (2, [])
        assert list(v1_rows(other)) == from_jsonl
    assert from_jsonl[1]["prompt"] == "[not json] text" and from_jsonl[1]["extra_field"] == 1


def test_export_filters_by_time_and_account(sqlite_store, tmp_path):
    rows = [v1("a"), v1("b", account="other"), v1("c", time="2026-12-02T00:00:00Z")]
    LogImporter(sqlite_store).import_files([write_jsonl(tmp_path / "log.jsonl", [json.dumps(r) for r in rows])])
    from datetime import UTC, datetime

    assert [r["id"] for r in v1_rows(sqlite_store, ExportFilter(account="acme"))] == ["a", "c"]
    until = ExportFilter(until=datetime(2026, 12, 1, tzinfo=UTC))
    assert [r["id"] for r in v1_rows(sqlite_store, until)] == ["a", "b"]


def test_the_gateways_own_log_round_trips_through_export_and_import(gateway, tmp_path):
    client = gateway.client(gateway.key("alice"))
    client.chat.completions.create(
        model=gateway.model, messages=[{"role": "user", "content": "hi"}], max_tokens=5, n=2, seed=3
    )
    client.completions.create(model=gateway.model, prompt="Once upon", max_tokens=4, logprobs=2)
    with pytest.raises(Exception):  # noqa: B017 (any refusal; it is logged all the same)
        gateway.client("alb-not-a-key").chat.completions.create(model=gateway.model, messages=[])
    first = tmp_path / "first.jsonl"
    assert export_log(gateway.store, first) >= 3
    copy = Store(f"sqlite:///{tmp_path / 'copy.db'}")
    report = LogImporter(copy).import_files([first])
    assert report.rejected == []
    second = tmp_path / "second.jsonl"
    export_log(copy, second)
    assert second.read_text() == first.read_text()
    exported = [json.loads(line) for line in first.read_text().splitlines()]
    chat = next(r for r in exported if r["endpoint"] == "/v1/chat/completions" and r["status"] == 200)
    assert chat["account"] == "alice" and len(chat["responses"]) == 2 and chat["params"]["n"] == 2


def test_the_litellm_preset_imports_a_spend_log_export(sqlite_store, tmp_path):
    spend_log = {
        "request_id": "chatcmpl-7f3a",
        "call_type": "acompletion",
        "api_key": "88dc28d0f030c55ed4ab77ed8faf098196cb1c05df778539800c9f1243fe6b4b",
        "spend": 0.00012,
        "total_tokens": 30,
        "prompt_tokens": 21,
        "completion_tokens": 9,
        "startTime": "2026-11-30T10:00:00.250000",
        "endTime": "2026-11-30T10:00:01.000000",
        "model": "gpt-4o-mini",
        "api_base": "https://api.openai.com",
        "user": "",
        "metadata": {"user_api_key_alias": "prod-eu", "user_api_key_team_id": "t1"},
        "cache_hit": "False",
        "cache_key": "",
        "request_tags": [],
        "requester_ip_address": "198.51.100.4",
        "messages": json.dumps([{"role": "user", "content": "Summarise: ..."}]),
        "response": json.dumps({"choices": [{"message": {"role": "assistant", "content": "A summary."}}]}),
        "status": "success",
    }
    failed = {**spend_log, "request_id": "chatcmpl-7f3b", "status": "failure", "response": "{}"}
    log = write_jsonl(tmp_path / "spend.jsonl", [json.dumps(spend_log), json.dumps(failed)])
    report = LogImporter(sqlite_store, field_map("litellm", ["account=metadata.user_api_key_alias"])).import_files(
        [log]
    )
    assert (report.imported, report.rejected) == (2, [])
    ok, bad = list(v1_rows(sqlite_store))
    assert ok["account"] == "prod-eu" and ok["messages"][0]["content"] == "Summarise: ..."
    assert ok["response"] == "A summary." and ok["status"] == 200 and ok["latency_ms"] == pytest.approx(750)
    assert (ok["prompt_tokens"], ok["completion_tokens"], ok["client_ip"]) == (21, 9, "198.51.100.4")
    assert ok["time"] == "2026-11-30T10:00:00.250000+00:00" and bad["status"] == 500


def test_the_nginx_json_preset_imports_an_access_log(sqlite_store, tmp_path):
    body = {"model": "smollm2", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 32, "n": 2}
    entry = {
        "time_iso8601": "2026-11-30T10:00:00+00:00",
        "request_id": "5f1e9b2c",
        "remote_addr": "192.0.2.10",
        "remote_user": "",
        "request_method": "POST",
        "request_uri": "/v1/chat/completions?trace=1",
        "status": "200",
        "request_time": "0.412",
        "http_user_agent": "curl/8.5.0",
        "http_authorization": "Bearer sk-live-abc",
        "request_body": json.dumps(body),
    }
    log = write_jsonl(tmp_path / "access.jsonl", [json.dumps(entry)])
    report = LogImporter(sqlite_store, field_map("nginx-json", [])).import_files([log])
    assert report.rejected == []
    (row,) = list(v1_rows(sqlite_store))
    assert row["endpoint"] == "/v1/chat/completions" and row["params"] == {"max_tokens": 32, "n": 2}
    assert row["account"].startswith("key-") and "sk-live-abc" not in json.dumps(row)
    assert (row["status"], row["latency_ms"], row["client_ip"]) == (200, pytest.approx(412), "192.0.2.10")


def test_a_map_rule_must_name_a_v1_field():
    from alambic.errors import InvalidRequestError

    with pytest.raises(InvalidRequestError, match="not a v1 field"):
        field_map(None, ["acount=user.id"])


def test_parquet_with_native_nested_columns_is_read(sqlite_store, tmp_path):
    path = tmp_path / "native.parquet"
    pq.write_table(pa.Table.from_pylist([v1("a")]), path)
    report = LogImporter(sqlite_store).import_files([path])
    assert (report.imported, report.rejected) == (1, [])


def test_the_cli_names_each_bad_row_and_refuses_bad_options_in_one_line(tmp_path):
    import subprocess
    import sys

    log = write_jsonl(tmp_path / "log.jsonl", [json.dumps(v1("a")), "{oops", json.dumps(v1("b"))])
    db = f"sqlite:///{tmp_path / 'cli.db'}"

    def alambic(*args):
        command = [sys.executable, "-m", "alambic", "log", *args, "--db", db]
        return subprocess.run(command, capture_output=True, text=True, timeout=120)

    imported = alambic("import", str(log), "--no-count-tokens")
    assert imported.returncode == 0, imported.stderr
    assert f"rejected {log}:2: malformed JSON" in imported.stderr and "imported 2 rows" in imported.stderr
    unknown = alambic("import", str(log), "--preset", "splunk")
    assert unknown.returncode == 2 and "Unknown preset 'splunk'" in unknown.stderr
    assert "Traceback" not in unknown.stderr
    out = tmp_path / "out.jsonl"
    exported = alambic("export", "--out", str(out), "--since", "2026-11-30T00:00:00Z")
    assert exported.returncode == 0, exported.stderr
    assert [json.loads(line)["id"] for line in out.read_text().splitlines()] == ["a", "b"]
    assert alambic("export", "--out", str(out), "--since", "noon").returncode == 2


MONITOR_FIELDS = {
    "prompt_hash": "0123456789abcdef01234567",
    "conversation": "76543210fedcba9876543210",
    "admitted_at": "2026-11-30T11:00:00.010000+00:00",
    "completed_at": "2026-11-30T11:00:01.500000+00:00",
    "first_token_ms": 120.5,
    "gateway_instance": "eu-1",
    "watermark_key_id": "wk-0a1b2c3d4e5f",
    "watermark_params": {"scheme": "kgw", "gamma": 0.25, "delta": 2.0, "context_width": 1, "logprobs": "plain"},
}


@pytest.mark.parametrize("suffix", [".jsonl", ".parquet"])
def test_the_monitors_fields_round_trip_through_the_store(sqlite_store, tmp_path, suffix):
    source = write_jsonl(tmp_path / "log.jsonl", [json.dumps(v1("a", **MONITOR_FIELDS)), json.dumps(v1("b"))])
    assert LogImporter(sqlite_store).import_files([source]).rejected == []
    with sqlite_store.session() as session:
        row = session.scalar(select(RequestLog).where(RequestLog.request_id == "a"))
    assert (row.prompt_hash, row.gateway_instance, row.first_token_ms) == ("0123456789abcdef01234567", "eu-1", 120.5)
    assert row.extra is None  # named columns, not extra fields
    out = tmp_path / f"out{suffix}"
    export_log(sqlite_store, out)
    copy = Store(f"sqlite:///{tmp_path / 'copy.db'}")
    assert LogImporter(copy).import_files([out]).rejected == []
    exported = {r["id"]: r for r in v1_rows(copy)}
    assert {k: exported["a"][k] for k in MONITOR_FIELDS} == MONITOR_FIELDS
    assert not set(MONITOR_FIELDS) & set(exported["b"])  # absent stays absent


@pytest.mark.parametrize(
    ("fields", "message"),
    [({"first_token_ms": -1}, "first_token_ms"), ({"watermark_params": "kgw"}, "watermark_params")],
)
def test_bad_monitor_fields_are_rejected(sqlite_store, tmp_path, fields, message):
    source = write_jsonl(tmp_path / "log.jsonl", [json.dumps(v1("a", **fields))])
    [rejected] = LogImporter(sqlite_store).import_files([source]).rejected
    assert message in str(rejected)
