"""`alambic log export`: the store's request log as v1 JSONL or Parquet, streamed in time order.

Rows are read in keyset-paginated pages (by time, then row id), so memory is one page whatever the log's
size, and a page never skips a row written with an earlier time than the last one read.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from sqlalchemy import and_, or_, select

from alambic.errors import InvalidRequestError
from alambic.logs.format import EXTRA_COLUMN, NESTED_FIELDS, V1_FIELDS
from alambic.logs.records import to_v1
from alambic.store import Store
from alambic.store.schema import Account, RequestLog

PAGE_ROWS = 5000


@dataclass(frozen=True)
class ExportFilter:
    since: datetime | None = None
    until: datetime | None = None
    account: str | None = None


def v1_rows(store: Store, where: ExportFilter = ExportFilter()) -> Iterator[dict[str, Any]]:
    """The log's rows as v1 objects, oldest first."""
    query = select(RequestLog, Account.name).outerjoin(Account, Account.id == RequestLog.account_id)
    if where.since is not None:
        query = query.where(RequestLog.created_at >= where.since)
    if where.until is not None:
        query = query.where(RequestLog.created_at < where.until)
    if where.account is not None:
        query = query.where(Account.name == where.account)
    query = query.order_by(RequestLog.created_at, RequestLog.id).limit(PAGE_ROWS)
    last: tuple[datetime, int] | None = None
    while True:
        page = query
        if last is not None:
            at, row_id = last
            page = query.where(
                or_(RequestLog.created_at > at, and_(RequestLog.created_at == at, RequestLog.id > row_id))
            )
        with store.session() as session:
            rows = session.execute(page).all()
        for row, account in rows:
            yield to_v1(row, account)
        if len(rows) < PAGE_ROWS:
            return
        last = (rows[-1][0].created_at, rows[-1][0].id)


def rows_after(store: Store, cursor: int, limit: int = PAGE_ROWS) -> list[tuple[int, dict[str, Any]]]:
    """Up to `limit` stamped rows after ingest sequence `cursor`, as (sequence, v1 object), in sequence order
    (`store.requestlog.stamp_ingest` stamps them)."""
    query = (
        select(RequestLog, Account.name)
        .outerjoin(Account, Account.id == RequestLog.account_id)
        .where(RequestLog.ingest_seq > cursor)
        .order_by(RequestLog.ingest_seq)
        .limit(limit)
    )
    with store.session() as session:
        return [(row.ingest_seq, to_v1(row, account)) for row, account in session.execute(query)]


def export_log(
    store: Store, out: Path, where: ExportFilter = ExportFilter(), on_progress: Callable[[int], None] | None = None
) -> int:
    """Write v1 rows to `out` (.jsonl or .parquet); returns how many."""
    name = out.name.lower()
    if name.endswith(".jsonl"):
        writer: Callable = _write_jsonl
    elif name.endswith(".parquet"):
        writer = _write_parquet
    else:
        raise InvalidRequestError(f"{out}: export to a .jsonl or .parquet file.")
    out.parent.mkdir(parents=True, exist_ok=True)
    return writer(v1_rows(store, where), out, on_progress or (lambda _rows: None))


def _write_jsonl(rows: Iterator[dict], out: Path, on_progress: Callable[[int], None]) -> int:
    written = 0
    with open(out, "w", encoding="utf-8") as handle:
        for row in rows:
            handle.write(json.dumps(row, ensure_ascii=False) + "\n")
            written += 1
            if written % PAGE_ROWS == 0:
                on_progress(PAGE_ROWS)
    on_progress(written % PAGE_ROWS)
    return written


def _write_parquet(rows: Iterator[dict], out: Path, on_progress: Callable[[int], None]) -> int:
    """Nested fields (and extra fields) as JSON text, as in CSV: the columns stay the same for every row."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    numbers = {"prompt_tokens": pa.int64(), "completion_tokens": pa.int64(), "status": pa.int32()}
    numbers["latency_ms"] = numbers["first_token_ms"] = pa.float64()
    schema = pa.schema([(name, numbers.get(name, pa.string())) for name in (*V1_FIELDS, EXTRA_COLUMN)])
    written = 0
    with pq.ParquetWriter(out, schema) as writer:
        page: list[dict] = []
        for row in rows:
            page.append(_flat(row))
            if len(page) == PAGE_ROWS:
                writer.write_table(pa.Table.from_pylist(page, schema=schema))
                written += len(page)
                on_progress(len(page))
                page = []
        writer.write_table(pa.Table.from_pylist(page, schema=schema))
        written += len(page)
        on_progress(len(page))
    return written


def _flat(row: dict[str, Any]) -> dict[str, Any]:
    flat = {name: row.get(name) for name in V1_FIELDS}
    for name in NESTED_FIELDS:
        if flat[name] is not None:
            flat[name] = json.dumps(flat[name], ensure_ascii=False)
    extra = {k: v for k, v in row.items() if k not in V1_FIELDS}
    flat[EXTRA_COLUMN] = json.dumps(extra, ensure_ascii=False) if extra else None
    return flat
