"""Writing the request log, and reading an account's recent usage for rate limits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime

from sqlalchemy import func, select

from alambic.store.database import Store
from alambic.store.schema import RequestLog


@dataclass
class RequestRecord:
    """One request as the gateway saw it; filled in as the request is handled, written once at the end."""

    created_at: datetime
    endpoint: str
    method: str
    status_code: int = 0
    client_address: str | None = None
    user_agent: str | None = None
    account_id: int | None = None
    api_key_id: int | None = None
    error_type: str | None = None
    error_message: str | None = None
    model: str | None = None
    stream: bool = False
    n: int | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: list | None = None
    logprobs: bool | None = None
    top_logprobs: int | None = None
    parameters: dict | None = None
    prompt: list | None = None
    response_texts: list | None = field(default=None)
    finish_reasons: list | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    latency_ms: float | None = None
    watermark_scheme: str | None = None


@dataclass(frozen=True)
class UsageWindow:
    requests: int
    tokens: int
    oldest: datetime | None  # the earliest counted request, which leaves the window first


def log_request(store: Store, record: RequestRecord) -> int:
    """Commit one row; returns its id."""
    with store.session.begin() as session:
        row = RequestLog(**asdict(record))
        session.add(row)
        session.flush()
        return row.id


def usage_since(store: Store, account_id: int, since: datetime) -> UsageWindow:
    """Requests served to an account since `since` and the tokens they used (refused requests do not count)."""
    query = select(
        func.count(RequestLog.id),
        func.coalesce(func.sum(RequestLog.prompt_tokens + RequestLog.completion_tokens), 0),
        func.min(RequestLog.created_at),
    ).where(
        RequestLog.account_id == account_id,
        RequestLog.created_at >= since,
        RequestLog.status_code < 400,
    )
    with store.session() as session:
        requests, tokens, oldest = session.execute(query).one()
    return UsageWindow(int(requests), int(tokens), oldest)
