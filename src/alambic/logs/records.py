"""v1 rows to the store's request-log columns and back: the one place the two shapes meet.

Columns the gateway fills that v1 does not name (finish reasons, errors, the watermark scheme, every
choice's text) travel as extra fields named after their column, so the gateway's rows round-trip.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from alambic.logs.format import LogRow
from alambic.store.requestlog import fit_to_columns
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
# Optional v1 fields with a column of the same name: written out only when set.
MONITOR_FIELDS = (
    "prompt_hash",
    "conversation",
    "admitted_at",
    "completed_at",
    "first_token_ms",
    "gateway_instance",
    "watermark_key_id",
    "watermark_params",
)
TIME_FIELDS = ("admitted_at", "completed_at")


def to_columns(row: LogRow, account_id: int | None, imported_in: str) -> dict[str, Any]:
    """The store's columns for one v1 row."""
    params = row.params
    extra = dict(row.extra)
    # Every row gets every key, so a batch is one executemany.
    columns: dict[str, Any] = {column: extra.pop(name, None) for column, name in COLUMN_EXTRAS.items()}
    for column, default in COLUMN_DEFAULTS.items():
        columns[column] = columns[column] or default
    if columns["response_texts"] is None and row.response is not None:
        columns["response_texts"] = [row.response]
    prompt = row.messages if row.messages is not None else None if row.prompt is None else [row.prompt]
    columns.update(
        request_id=row.id,
        imported_in=imported_in,
        created_at=row.time,
        account_id=account_id,
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
