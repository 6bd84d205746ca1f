"""Writing the request log, and reading an account's recent usage for rate limits."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from datetime import datetime

from sqlalchemy import String, func, insert, select, text, update

from alambic.store.database import Store
from alambic.store.schema import RequestLog

IN_PROGRESS, COMPLETE = "in_progress", "complete"  # RequestLog.state
# The bounded text columns, from the schema: client input longer than its column is cut to fit, not refused
# by PostgreSQL (SQLite ignores lengths).
MAX_LENGTHS = {
    column.name: column.type.length
    for column in RequestLog.__table__.columns
    if isinstance(column.type, String) and column.type.length is not None
}


@dataclass(kw_only=True)
class MonitorFields:
    """What the monitor reads beside the request itself: the same fields in the gateway's record and in v1."""

    prompt_hash: str | None = None
    conversation: str | None = None
    admitted_at: datetime | None = None
    completed_at: datetime | None = None
    first_token_ms: float | None = None
    gateway_instance: str | None = None
    watermark_key_id: str | None = None
    watermark_params: dict | None = None


MONITOR_FIELDS = tuple(f.name for f in fields(MonitorFields))


@dataclass
class RequestRecord(MonitorFields):
    """One request as the gateway saw it; filled in as the request is handled, its row final at the end."""

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


@dataclass(frozen=True)
class StartedRow:
    """The row `start_request` committed: its id, and the columns it wrote."""

    id: int
    columns: dict


def start_request(store: Store, record: RequestRecord) -> StartedRow:
    """Commit the row of a request that is starting, `in_progress` until `log_request` makes it final."""
    columns = _columns(record, IN_PROGRESS)
    return StartedRow(_insert(store, columns), columns)


def log_request(store: Store, record: RequestRecord, started: StartedRow | None = None) -> int:
    """Commit a request's final row, and return its id: a new row, or the update of the `started` one, which sets
    only the columns that changed since (each indexed column set costs its index an entry removed and added)."""
    columns = _columns(record, COMPLETE)
    if started is None:
        return _insert(store, columns)
    changed = {name: value for name, value in columns.items() if started.columns.get(name) != value}
    with store.engine.begin() as connection:
        connection.execute(update(RequestLog).where(RequestLog.id == started.id).values(changed))
    return started.id


def fit_to_columns(columns: dict) -> dict:
    """`columns` with every text cut to its column's length (in place)."""
    for name, length in MAX_LENGTHS.items():
        if isinstance(columns.get(name), str):
            columns[name] = columns[name][:length]
    return columns


def _columns(record: RequestRecord, state: str) -> dict:
    return {**fit_to_columns(asdict(record)), "state": state}


def _insert(store: Store, columns: dict) -> int:
    # Core, not an ORM object: the unit of work's flush cost more than the insert itself.
    with store.engine.begin() as connection:
        return connection.execute(insert(RequestLog), columns).inserted_primary_key[0]


def stamp_ingest(store: Store, limit: int = 5000) -> int:
    """Give up to `limit` final rows without an ingest sequence the next numbers, oldest first; returns how many.

    Stamped by the reader, one stamper at a time (an advisory lock on PostgreSQL, SQLite's single writer): a
    row committed later gets a higher number than any already read, so `ingest_seq > cursor` misses nothing.
    """
    with store.session.begin() as session:
        if store.engine.dialect.name == "postgresql":
            session.execute(text("SELECT pg_advisory_xact_lock(hashtext('alambic.ingest_seq'))"))
        ids = session.scalars(
            select(RequestLog.id)
            .where(RequestLog.ingest_seq.is_(None), RequestLog.state == COMPLETE)
            .order_by(RequestLog.created_at, RequestLog.id)
            .limit(limit)
        ).all()
        top = session.scalar(select(func.max(RequestLog.ingest_seq))) or 0
        if ids:
            session.execute(update(RequestLog), [{"id": i, "ingest_seq": top + n} for n, i in enumerate(ids, 1)])
    return len(ids)


def usage_since(store: Store, account_id: int, since: datetime) -> UsageWindow:
    """Requests served to an account since `since` and the tokens they used. Refused requests do not count, nor
    do those in progress: the gateway serving them counts them itself, with the tokens they may still use."""
    query = select(
        func.count(RequestLog.id),
        func.coalesce(func.sum(RequestLog.prompt_tokens + RequestLog.completion_tokens), 0),
        func.min(RequestLog.created_at),
    ).where(
        RequestLog.account_id == account_id,
        RequestLog.created_at >= since,
        RequestLog.status_code < 400,
        RequestLog.state == COMPLETE,
    )
    with store.session() as session:
        requests, tokens, oldest = session.execute(query).one()
    return UsageWindow(int(requests), int(tokens), oldest)
