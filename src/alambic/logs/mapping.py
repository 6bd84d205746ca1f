"""Other gateways' logs as v1: `--map FIELD=SOURCE.PATH` rules, and presets for LiteLLM and NGINX JSON logs.

A path is dotted (`metadata.user_api_key_alias`, `response.choices.0.message.content`); a JSON string met
on the way is decoded, as exports often hold nested objects as text.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from alambic.errors import InvalidRequestError
from alambic.logs.format import V1_FIELDS

MISSING = object()
Finisher = Callable[[dict[str, Any], dict[str, Any]], None]  # (source row, v1 row so far) -> fills v1 row


def lookup(source: Any, path: str) -> Any:
    """The value at a dotted path, or MISSING."""
    value = source
    for part in path.split("."):
        if isinstance(value, str) and value[:1] in "[{":
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                return MISSING
        if isinstance(value, dict):
            value = value.get(part, MISSING)
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
        if value is MISSING:
            return MISSING
    return value


def json_at(source: Any, path: str) -> Any:
    """The value at a path, decoded if it is JSON text (a column that holds a JSON document as a string)."""
    value = lookup(source, path)
    if isinstance(value, str) and value[:1] in "[{":
        try:
            return json.loads(value)
        except json.JSONDecodeError:
            return value
    return value


@dataclass(frozen=True)
class FieldMap:
    """How one source row becomes a v1 object: copied paths, then a preset's own conversions."""

    paths: dict[str, str] = field(default_factory=dict)
    finish: Finisher | None = None
    keep_unmapped: bool = True  # a plain v1 file keeps its extra fields; a foreign export's are dropped

    @property
    def is_identity(self) -> bool:
        """True for plain v1: the rows are taken as they are."""
        return not self.paths and self.finish is None

    def apply(self, source: dict[str, Any]) -> dict[str, Any]:
        if self.is_identity:
            return source
        row = {k: v for k, v in source.items() if k not in self.paths.values()} if self.keep_unmapped else {}
        for target, path in self.paths.items():
            value = lookup(source, path)
            if value is not MISSING:
                row[target] = value
        if self.finish is not None:
            self.finish(source, row)
        return row

    def with_rules(self, rules: list[str]) -> FieldMap:
        """This map with `FIELD=SOURCE.PATH` rules added (the user's win over a preset's)."""
        paths = dict(self.paths)
        for rule in rules:
            target, sep, path = rule.partition("=")
            target, path = target.strip(), path.strip()
            if not sep or not target or not path:
                raise InvalidRequestError(f"--map {rule!r}: write FIELD=SOURCE.PATH, e.g. account=user.id.")
            if target not in V1_FIELDS:
                raise InvalidRequestError(f"--map {rule!r}: {target} is not a v1 field ({', '.join(V1_FIELDS)}).")
            paths[target] = path
        return FieldMap(paths, self.finish, self.keep_unmapped)


# --- LiteLLM's spend log (the LiteLLM_SpendLogs table, exported as JSONL/CSV/Parquet) --------------------

LITELLM_ENDPOINTS = {
    "completion": "/v1/chat/completions",
    "acompletion": "/v1/chat/completions",
    "text_completion": "/v1/completions",
    "atext_completion": "/v1/completions",
    "embedding": "/v1/embeddings",
    "aembedding": "/v1/embeddings",
}


def _litellm_finish(source: dict[str, Any], row: dict[str, Any]) -> None:
    call_type = source.get("call_type") or "acompletion"
    row["endpoint"] = LITELLM_ENDPOINTS.get(call_type, f"litellm:{call_type}")
    status = str(source.get("status") or "success").lower()
    row["status"] = 200 if status == "success" else 500
    start, end = source.get("startTime"), source.get("endTime")
    if start and end:
        row["latency_ms"] = max(0.0, (_moment(end) - _moment(start)).total_seconds() * 1000)
    row["time"] = _moment(start).isoformat() if start else row.get("time")
    messages = json_at(source, "messages")
    if isinstance(messages, list):
        row["messages"] = messages
    elif isinstance(messages, str) and messages:  # a text completion's prompt
        row["prompt"] = messages
    content = lookup(source, "response.choices.0.message.content")
    if content is MISSING:
        content = lookup(source, "response.choices.0.text")
    row["response"] = content if isinstance(content, str) else None
    params = lookup(source, "model_parameters")
    if params is MISSING:
        params = lookup(source, "metadata.model_parameters")
    row["params"] = params if isinstance(params, dict) else {}


def _moment(value: str | float | datetime) -> datetime:
    """LiteLLM's times: its database keeps UTC, and some exports drop the offset."""
    if isinstance(value, int | float):
        return datetime.fromtimestamp(value, UTC)
    moment = value if isinstance(value, datetime) else datetime.fromisoformat(value)
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


LITELLM = FieldMap(
    paths={
        "id": "request_id",
        "account": "api_key",  # LiteLLM stores the key's hash, never the key
        "model": "model",
        "client_ip": "requester_ip_address",
        "prompt_tokens": "prompt_tokens",
        "completion_tokens": "completion_tokens",
    },
    finish=_litellm_finish,
    keep_unmapped=False,
)


# --- NGINX access log with `log_format ... escape=json` (docs/request-log.md gives the format) ------------


def _nginx_finish(source: dict[str, Any], row: dict[str, Any]) -> None:
    body = json_at(source, "request_body")
    body = body if isinstance(body, dict) else {}
    row["endpoint"] = (source.get("request_uri") or "").split("?", 1)[0] or "/"
    row["status"] = int(source.get("status") or 0)
    if source.get("request_time") not in (None, ""):
        row["latency_ms"] = float(source["request_time"]) * 1000
    row["model"] = body.get("model")
    row["messages"] = body.get("messages")
    row["prompt"] = body.get("prompt")
    row["params"] = {k: v for k, v in body.items() if k not in ("model", "messages", "prompt")}
    if not row.get("account"):
        authorization = source.get("http_authorization") or ""
        token = authorization.partition(" ")[2].strip() or authorization.strip()
        # The key itself never enters the store: the account is named by its SHA-256, as the gateway keeps it.
        row["account"] = "key-" + hashlib.sha256(token.encode()).hexdigest()[:16] if token else None
    for name in ("client_ip", "user_agent"):
        if row.get(name) == "":
            row[name] = None


NGINX_JSON = FieldMap(
    paths={
        "id": "request_id",
        "time": "time_iso8601",
        "client_ip": "remote_addr",
        "user_agent": "http_user_agent",
        "account": "remote_user",
    },
    finish=_nginx_finish,
    keep_unmapped=False,
)

PRESETS: dict[str, FieldMap] = {"litellm": LITELLM, "nginx-json": NGINX_JSON}


def field_map(preset: str | None, rules: list[str]) -> FieldMap:
    """The map for `--preset` and `--map` rules; v1 as it is when neither is given."""
    if preset is None:
        return FieldMap().with_rules(rules)
    if preset not in PRESETS:
        raise InvalidRequestError(f"Unknown preset '{preset}'; choose one of {', '.join(PRESETS)}.")
    return PRESETS[preset].with_rules(rules)
