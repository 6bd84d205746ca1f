"""Request log v1: one JSON object per request, validated by the JSON Schema shipped beside this module.

`docs/request-log.md` describes the fields; `parse_row` turns one object into a `LogRow` or says why not.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

import fastjsonschema

from alambic.store.requestlog import MonitorFields

SCHEMA_FILE = "request-log-v1.schema.json"


class BadRow(ValueError):
    """A row that does not follow v1; the message says why, in one line."""


@cache
def schema() -> dict[str, Any]:
    return json.loads(resources.files("alambic.logs").joinpath(SCHEMA_FILE).read_text())


@cache
def _validator():
    return fastjsonschema.compile(schema())


V1_FIELDS: tuple[str, ...] = tuple(schema()["properties"])
NESTED_FIELDS = ("messages", "prompt", "params", "watermark_params")  # JSON text in CSV and Parquet
EXTRA_COLUMN = "extra"  # CSV and Parquet: the other fields, as one JSON object


@dataclass
class LogRow(MonitorFields):
    """One validated v1 request, times in UTC; `extra` holds the fields v1 does not name, kept as they came."""

    id: str
    time: datetime
    account: str | None
    endpoint: str
    status: int
    client_ip: str | None = None
    user_agent: str | None = None
    model: str | None = None
    messages: list[dict] | None = None
    prompt: str | list | None = None
    params: dict[str, Any] = field(default_factory=dict)
    response: str | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def parse_row(raw: Any) -> LogRow:
    """Validate one v1 object (as decoded from JSON) and normalise it; raises `BadRow`."""
    if not isinstance(raw, dict):
        raise BadRow(f"a row must be a JSON object, not {type(raw).__name__}")
    try:
        _validator()(raw)
    except fastjsonschema.JsonSchemaValueException as error:
        raise BadRow(_say(error)) from None
    if raw.get("messages") is not None and raw.get("prompt") is not None:
        raise BadRow("a row has `messages` (chat) or `prompt` (completions), not both")
    extra = {k: v for k, v in raw.items() if k not in V1_FIELDS}
    return LogRow(
        id=raw["id"],
        time=parse_time(raw["time"]),
        account=raw["account"],
        endpoint=raw["endpoint"],
        status=raw["status"],
        client_ip=raw.get("client_ip"),
        user_agent=raw.get("user_agent"),
        model=raw.get("model"),
        messages=raw.get("messages"),
        prompt=raw.get("prompt"),
        params=raw.get("params") or {},
        response=raw.get("response"),
        prompt_tokens=raw.get("prompt_tokens"),
        completion_tokens=raw.get("completion_tokens"),
        latency_ms=raw.get("latency_ms"),
        prompt_hash=raw.get("prompt_hash"),
        conversation=raw.get("conversation"),
        admitted_at=_optional_time(raw, "admitted_at"),
        completed_at=_optional_time(raw, "completed_at"),
        first_token_ms=raw.get("first_token_ms"),
        gateway_instance=raw.get("gateway_instance"),
        watermark_key_id=raw.get("watermark_key_id"),
        watermark_params=raw.get("watermark_params"),
        extra=extra,
    )


def _optional_time(raw: dict, name: str) -> datetime | None:
    if raw.get(name) is None:
        return None
    try:
        return parse_time(raw[name])
    except BadRow as error:
        raise BadRow(f"{name}{str(error).removeprefix('time')}") from None


def parse_time(value: str | float | int) -> datetime:
    """ISO 8601 with an offset, or epoch seconds, as an aware UTC datetime."""
    if isinstance(value, int | float):
        if not math.isfinite(value):
            raise BadRow(f"time: {value} is not a time")
        return datetime.fromtimestamp(value, UTC)
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        raise BadRow(f"time: {value!r} is not ISO 8601") from None
    if moment.tzinfo is None:
        raise BadRow(f"time: {value!r} has no UTC offset (add Z or +00:00)")
    return moment.astimezone(UTC)


def _say(error: fastjsonschema.JsonSchemaValueException) -> str:
    where = (error.name or "data").removeprefix("data").lstrip(".") or "row"
    if error.rule == "required":
        missing = [name for name in error.rule_definition if name not in (error.value or {})]
        return f"{where}: missing required field {', '.join(missing)}"
    message = error.message.removeprefix(error.name or "").strip()
    return f"{where}: {message}" if where != "row" else message
