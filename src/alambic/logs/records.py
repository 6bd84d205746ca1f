"""v1 rows to the store's request-log columns and back: the one place the two shapes meet.

Columns the gateway fills that v1 does not name (finish reasons, errors, the watermark scheme, every
choice's text) travel as extra fields named after their column, so the gateway's rows round-trip.
An import moves rows in batches (`Batch`): columns of Python values as the store takes them, the store's columns
plus the row's line and account name.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from itertools import compress
from typing import Any

import msgspec
from sqlalchemy import JSON, Boolean, DateTime

from alambic.logs.format import BadRow, LogRow
from alambic.store.requestlog import MONITOR_FIELDS, fit_to_columns
from alambic.store.schema import RequestLog

CHAT_ENDPOINT = "/v1/chat/completions"
# Store columns carried as v1 extra fields under these names (`responses`: every choice's text).
COLUMN_EXTRAS = {
    "method": "method",
    "finish_reasons": "finish_reasons",
    "error_type": "error_type",
    "error_message": "error_message",
    "watermark_scheme": "watermark_scheme",
    "state": "state",
    "response_texts": "responses",
}
COLUMN_DEFAULTS = {"method": "POST", "state": "complete"}  # not written out when a row has these
# MONITOR_FIELDS: optional v1 fields with a column of the same name, written out only when set.
TIME_FIELDS = ("admitted_at", "completed_at")
COLUMN_EXTRA_TYPES = {"finish_reasons": list, "response_texts": list}  # the others are text
# Columns an import does not take from the row: the store numbers rows, names the account and the run, and
# a follower stamps the ingest sequence.
NOT_IN_BATCH = ("id", "account_id", "api_key_id", "imported_in", "ingest_seq")
JSON_COLUMNS = tuple(c.name for c in RequestLog.__table__.columns if isinstance(c.type, JSON))


# A batch's columns: the row's line, its account's name, and the store's columns that come from the row.
BATCH_COLUMNS = ("line", "account", *(c.name for c in RequestLog.__table__.columns if c.name not in NOT_IN_BATCH))
TIME_COLUMNS = tuple(c.name for c in RequestLog.__table__.columns if isinstance(c.type, DateTime))
BOOLEAN_COLUMNS = tuple(c.name for c in RequestLog.__table__.columns if isinstance(c.type, Boolean))


@dataclass
class Batch:
    """Rows of an import as columns (`BATCH_COLUMNS`), each a list of values as the store takes them: times as
    UTC text (`time_text`), booleans as 0 and 1, JSON as text. Plain lists cross from the vetting process and go
    to the driver as they are, with no conversion on the writer's side."""

    columns: dict[str, list]

    @classmethod
    def of_rows(cls, rows: list[dict[str, Any]]) -> Batch:
        return cls({name: [row[name] for row in rows] for name in BATCH_COLUMNS})

    def __len__(self) -> int:
        return len(self.columns["line"])

    def where(self, keep: list[bool]) -> Batch:
        return Batch({name: list(compress(values, keep)) for name, values in self.columns.items()})

    def __reduce__(self) -> tuple:
        """Pickled (to the writer, from the vetting process) as MessagePack: ~2x quicker than pickling the lists."""
        return _unpacked, (msgspec.msgpack.encode(self.columns),)

    def joined(self, other: Batch) -> Batch:
        """Both batches' rows, in line order."""
        columns = {name: values + other.columns[name] for name, values in self.columns.items()}
        order = sorted(range(len(columns["line"])), key=columns["line"].__getitem__)
        return Batch({name: [values[i] for i in order] for name, values in columns.items()})


def _unpacked(packed: bytes) -> Batch:
    return Batch(msgspec.msgpack.decode(packed))


def time_text(moment: datetime) -> str:
    """A UTC time as the store's text: what SQLAlchemy writes into SQLite (six decimals always), and what
    PostgreSQL reads as UTC in an import's transaction."""
    if moment.tzinfo is not UTC:
        moment = moment.astimezone(UTC)
    return moment.isoformat(" ", "microseconds")[:26]  # without its offset, +00:00


def batch_row(line: int, row: LogRow) -> dict[str, Any]:
    """One v1 row as a batch row (`to_columns`, its values as a `Batch` holds them)."""
    columns = to_columns(row)
    for name in JSON_COLUMNS:
        if columns[name] is not None:
            columns[name] = json.dumps(columns[name])
    for name in TIME_COLUMNS:
        if columns[name] is not None:
            columns[name] = time_text(columns[name])
    for name in BOOLEAN_COLUMNS:
        if columns[name] is not None:
            columns[name] = int(columns[name])
    return {"line": line, "account": row.account, **columns}


def to_columns(row: LogRow) -> dict[str, Any]:
    """The store's columns for one v1 row (but those of `NOT_IN_BATCH`)."""
    params = row.params
    extra = dict(row.extra)
    columns: dict[str, Any] = {column: extra.pop(name, None) for column, name in COLUMN_EXTRAS.items()}
    for column, value in columns.items():
        kind = COLUMN_EXTRA_TYPES.get(column, str)
        if value is not None and not isinstance(value, kind):
            raise BadRow(f"{COLUMN_EXTRAS[column]}: must be {'an array' if kind is list else 'a string'}")
    for column, default in COLUMN_DEFAULTS.items():
        columns[column] = columns[column] or default
    if columns["response_texts"] is None and row.response is not None:
        columns["response_texts"] = [row.response]
    prompt = row.messages if row.messages is not None else None if row.prompt is None else [row.prompt]
    columns.update(
        request_id=row.id,
        created_at=row.time,
        endpoint=row.endpoint,
        status_code=row.status,
        client_address=row.client_ip,
        user_agent=row.user_agent,
        model=row.model,
        prompt=prompt,
        parameters=params or None,
        prompt_tokens=row.prompt_tokens,
        completion_tokens=row.completion_tokens,
        latency_ms=row.latency_ms,
        extra=extra or None,
        **{name: getattr(row, name) for name in MONITOR_FIELDS},
        stream=bool(params.get("stream")),
        n=params.get("n"),
        max_tokens=params.get("max_completion_tokens") or params.get("max_tokens"),
        temperature=params.get("temperature"),
        top_p=params.get("top_p"),
        seed=params.get("seed"),
        stop=[params["stop"]] if isinstance(params.get("stop"), str) else params.get("stop"),
        logprobs=None if params.get("logprobs") is None else bool(params["logprobs"]),
        top_logprobs=params.get("top_logprobs"),
    )
    return fit_to_columns(columns)


def to_v1(row: RequestLog, account: str | None) -> dict[str, Any]:
    """One stored request as a v1 object."""
    prompt = row.prompt
    chat = row.endpoint == CHAT_ENDPOINT or (prompt and isinstance(prompt[0], dict))
    texts = row.response_texts or []
    params = {k: v for k, v in (row.parameters or {}).items() if k != "model"}
    v1: dict[str, Any] = {
        "id": row.request_id or f"alambic-{row.id}",
        "time": _utc(row.created_at).isoformat(timespec="microseconds"),
        "account": account,
        "client_ip": row.client_address,
        "user_agent": row.user_agent,
        "endpoint": row.endpoint,
        "model": row.model,
        "messages": prompt if chat else None,
        "prompt": None if chat or not prompt else prompt[0],
        "params": params,
        "response": texts[0] if texts else None,
        "prompt_tokens": row.prompt_tokens,
        "completion_tokens": row.completion_tokens,
        "status": row.status_code,
        "latency_ms": row.latency_ms,
    }
    for name in MONITOR_FIELDS:
        value = getattr(row, name)
        if value is not None:
            v1[name] = _utc(value).isoformat(timespec="microseconds") if name in TIME_FIELDS else value
    for column, name in COLUMN_EXTRAS.items():
        value = getattr(row, column)
        if value is None or value == COLUMN_DEFAULTS.get(column):
            continue
        if not (column == "response_texts" and len(value) <= 1):
            v1[name] = value
    return {**v1, **(row.extra or {})}


def _utc(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; the store writes UTC.
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)
