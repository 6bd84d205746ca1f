"""`alambic log import`: v1 files (or other gateways' exports, mapped) into the store's request log.

Rows go in batches, each one transaction: a killed import leaves whole batches only, and running it again
adds just what is missing, since a row is known by its `id`. Each bad row is reported with its file and
line and skipped; the good ones are imported exactly once. Memory is one batch, whatever the file's length.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sqlalchemy import insert, select

from alambic.logs.format import BadRow, LogRow, parse_row
from alambic.logs.mapping import FieldMap
from alambic.logs.records import to_columns
from alambic.logs.sources import SourceRow, read_rows
from alambic.store import Store
from alambic.store.schema import Account, RequestLog, utc_now

BATCH_ROWS = 2000
TokenCounter = Callable[[list[str]], list[int]]


@dataclass(frozen=True)
class Rejected:
    path: str
    line: int
    reason: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.reason}"


@dataclass
class ImportReport:
    """What an import did: rows added, rows already in the store, rows refused (with their reasons)."""

    imported: int = 0
    already_present: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    accounts_created: int = 0

    @property
    def read(self) -> int:
        return self.imported + self.already_present + len(self.rejected)


@dataclass
class _Batch:
    rows: list[tuple[SourceRow, LogRow]] = field(default_factory=list)
    ids: set[str] = field(default_factory=set)


class LogImporter:
    """Imports files into one store under one run id; `on_progress` hears of each batch written."""

    def __init__(
        self,
        store: Store,
        field_map: FieldMap | None = None,
        *,
        count_tokens: TokenCounter | None = None,
        on_progress: Callable[[int], None] | None = None,
        batch_rows: int = BATCH_ROWS,
    ) -> None:
        self.store = store
        self.field_map = field_map or FieldMap()
        self.count_tokens = count_tokens
        self.on_progress = on_progress or (lambda _rows: None)
        self.batch_rows = batch_rows
        self.run_id = uuid.uuid4().hex
        self.accounts: dict[str, int] = {}
        self.report = ImportReport()

    def import_files(self, paths: Iterable[Path]) -> ImportReport:
        for path in paths:
            self.import_rows(read_rows(path))
        return self.report

    def import_rows(self, rows: Iterable[SourceRow]) -> ImportReport:
        batch = _Batch()
        for row, parsed in self._parsed(rows):
            if parsed.id in batch.ids:
                self._reject(row, f"duplicate id {parsed.id!r} (an earlier row of this import has it)")
                continue
            batch.rows.append((row, parsed))
            batch.ids.add(parsed.id)
            if len(batch.rows) >= self.batch_rows:
                self._write(batch)
                batch = _Batch()
        if batch.rows:
            self._write(batch)
        return self.report

    def _parsed(self, rows: Iterable[SourceRow]) -> Iterator[tuple[SourceRow, LogRow]]:
        for row in rows:
            if row.error is not None:
                self._reject(row, row.error)
                continue
            try:
                mapped = self.field_map.apply(row.value) if isinstance(row.value, dict) else row.value
                yield row, parse_row(mapped)
            except (BadRow, ValueError, TypeError) as error:
                self._reject(row, str(error))

    def _reject(self, row: SourceRow, reason: str) -> None:
        self.report.rejected.append(Rejected(row.path, row.line, reason))

    def _write(self, batch: _Batch) -> None:
        """One transaction: rows whose id the store has are skipped (this run's: duplicates in the file)."""
        self._fill_token_counts([parsed for _, parsed in batch.rows])
        with self.store.session.begin() as session:
            known = dict(
                session.execute(
                    select(RequestLog.request_id, RequestLog.imported_in).where(RequestLog.request_id.in_(batch.ids))
                ).all()
            )
            fresh: list[LogRow] = []
            for row, parsed in batch.rows:
                if parsed.id not in known:
                    fresh.append(parsed)
                elif known[parsed.id] == self.run_id:
                    self._reject(row, f"duplicate id {parsed.id!r} (an earlier row of this import has it)")
                else:
                    self.report.already_present += 1
            if fresh:
                self._add_accounts(session, {r.account for r in fresh if r.account is not None})
                columns = [to_columns(r, self.accounts.get(r.account), self.run_id) for r in fresh]
                session.execute(insert(RequestLog.__table__), columns)  # Core executemany: no ORM objects
        self.report.imported += len(fresh)
        self.on_progress(len(batch.rows))

    def _add_accounts(self, session, names: set[str]) -> None:
        """Accounts named in the rows, created (without keys) where the store has none."""
        wanted = names - self.accounts.keys()
        if not wanted:
            return
        existing = dict(session.execute(select(Account.name, Account.id).where(Account.name.in_(wanted))).all())
        missing = sorted(wanted - existing.keys())
        if missing:
            session.execute(
                insert(Account.__table__), [{"name": n, "policy": "allow", "created_at": utc_now()} for n in missing]
            )
            existing.update(session.execute(select(Account.name, Account.id).where(Account.name.in_(missing))).all())
            self.report.accounts_created += len(missing)
        self.accounts.update(existing)

    def _fill_token_counts(self, rows: list[LogRow]) -> None:
        """v1 lets counts be null: then they are counted here, with the tokenizer the caller chose."""
        if self.count_tokens is None:
            return
        prompts = [r for r in rows if r.prompt_tokens is None and (r.messages or r.prompt)]
        answers = [r for r in rows if r.completion_tokens is None and r.response]
        for row, count in zip(prompts, self.count_tokens([_prompt_text(r) for r in prompts]), strict=True):
            row.prompt_tokens = count
        for row, count in zip(answers, self.count_tokens([r.response or "" for r in answers]), strict=True):
            row.completion_tokens = count


def _prompt_text(row: LogRow) -> str:
    if row.messages is not None:
        return "\n".join(_content_text(m.get("content")) for m in row.messages)
    return row.prompt if isinstance(row.prompt, str) else " ".join(map(str, row.prompt or []))


def _content_text(content: Any) -> str:
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content or ""
