"""`alambic log import`: v1 files (or other gateways' exports, mapped) into the store's request log.

Rows go in batches, each one transaction and one bulk write: a killed import leaves whole batches only, and
running it again adds just what is missing, since a row is known by its `id`. Each bad row is reported with
its file and line and skipped; the good ones are imported exactly once. A v1 JSONL file is vetted in bulk
(`vetting`: typed decoding, columns built whole); what that cannot vouch for, and any other file or mapped
export, is checked row by row against the JSON Schema. The next chunk is vetted (in another process) while a
batch is written; memory is three chunks, whatever the file's length.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Any

from sqlalchemy import Connection

from alambic.logs.format import BadRow, LogRow, parse_row
from alambic.logs.mapping import FieldMap
from alambic.logs.records import Batch, batch_row
from alambic.logs.sources import SourceRow, is_jsonl, read_rows
from alambic.logs.vetting import vet_file_in_a_worker
from alambic.store import Store, bulk

BATCH_ROWS = 10_000
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
    """What an import did: rows added, rows already in the store, rows refused (with their reasons), and
    how many rows were checked one by one rather than vetted in bulk."""

    imported: int = 0
    already_present: int = 0
    rejected: list[Rejected] = field(default_factory=list)
    accounts_created: int = 0
    per_row: int = 0

    @property
    def read(self) -> int:
        return self.imported + self.already_present + len(self.rejected)


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
        self._rejected: list[Rejected] = []  # the current batch's, reported in line order when it is written

    def import_files(self, paths: Iterable[Path]) -> ImportReport:
        with bulk.import_connection(self.store.engine) as connection:
            for path in paths:
                if is_jsonl(path) and self.field_map.is_identity:
                    self._import_jsonl(connection, path)
                else:
                    self._import_rows(connection, read_rows(path))
        return self.report

    def import_rows(self, rows: Iterable[SourceRow]) -> ImportReport:
        """Rows already read (and decoded), each checked against the schema."""
        with bulk.import_connection(self.store.engine) as connection:
            self._import_rows(connection, rows)
        return self.report

    def _import_jsonl(self, connection: Connection, path: Path) -> None:
        """v1 JSONL: vetted in bulk, a chunk ahead in another process; what that leaves is checked row by row."""
        for chunk in vet_file_in_a_worker(path, self.batch_rows, counting_tokens=self.count_tokens is not None):
            batch, left = chunk.batch, chunk.others
            if left.texts:
                batch = batch.joined(self._checked(left.rows(range(len(left.texts)))))
            self._write(connection, batch, chunk.read, left.path)

    def _import_rows(self, connection: Connection, rows: Iterable[SourceRow]) -> None:
        rows = iter(rows)
        while chunk := list(islice(rows, self.batch_rows)):
            self._write(connection, self._checked(chunk), len(chunk), chunk[0].path)

    def _checked(self, rows: Iterable[SourceRow]) -> Batch:
        """The rows that follow v1, one by one, as a batch; the others rejected with the schema's reason."""
        parsed = list(self._parsed(rows))
        self.report.per_row += len(parsed)
        self._fill_token_counts([row for _, row in parsed])
        batch = []
        for source, row in parsed:
            try:
                batch.append(batch_row(source.line, row))
            except BadRow as error:
                self._reject(source.line, source.path, str(error))
        return Batch.of_rows(batch)

    def _parsed(self, rows: Iterable[SourceRow]) -> Iterator[tuple[SourceRow, LogRow]]:
        for row in rows:
            if row.error is not None:
                self.report.per_row += 1
                self._reject(row.line, row.path, row.error)
                continue
            try:
                mapped = self.field_map.apply(row.value) if isinstance(row.value, dict) else row.value
                yield row, parse_row(mapped)
            except (BadRow, ValueError, TypeError) as error:
                self.report.per_row += 1
                self._reject(row.line, row.path, str(error))

    def _reject(self, line: int, path: str, reason: str) -> None:
        self._rejected.append(Rejected(path, line, reason))

    def _write(self, connection: Connection, batch: Batch, read: int, path: str) -> None:
        """One transaction for a batch in line order: rows whose id the store has are skipped (this run's:
        duplicates in the file)."""
        with connection.begin():
            ids = batch.columns["request_id"]
            unique = set(ids)
            known = bulk.known_requests(connection, list(unique))
            if known or len(unique) < len(ids):  # else every row is new
                batch = batch.where(self._fresh(ids, batch.columns["line"], known, path))
            if len(batch):
                self._add_accounts(connection, batch.columns["account"])
                bulk.insert_requests(connection, self._store_columns(batch))
        self.report.imported += len(batch)
        self.report.rejected += sorted(self._rejected, key=lambda r: r.line)
        self._rejected = []
        self.on_progress(read)

    def _fresh(self, ids: list[str], lines: list[int], known: dict[str, str | None], path: str) -> list[bool]:
        """Which rows to insert: not those the store has, counted, nor repeats of an earlier row, rejected."""
        fresh, seen = [], set()
        for request_id, line in zip(ids, lines, strict=True):
            earlier = request_id in seen or (request_id in known and known[request_id] == self.run_id)
            if earlier:
                self._reject(line, path, f"duplicate id {request_id!r} (an earlier row of this import has it)")
            elif request_id in known:
                self.report.already_present += 1
            fresh.append(not earlier and request_id not in known)
            seen.add(request_id)
        return fresh

    def _add_accounts(self, connection: Connection, names: list[str | None]) -> None:
        """Accounts named in the rows, created (without keys) where the store has none, in the order named."""
        wanted = [name for name in dict.fromkeys(names) if name is not None and name not in self.accounts]
        if wanted:
            ids, created = bulk.account_ids(connection, wanted)
            self.accounts.update(ids)
            self.report.accounts_created += created

    def _store_columns(self, batch: Batch) -> dict[str, list]:
        """The batch as the store's columns: the account's id for its name, this run's id, no line."""
        columns = {name: values for name, values in batch.columns.items() if name not in ("line", "account")}
        columns["account_id"] = list(map(self.accounts.get, batch.columns["account"]))  # None: no account
        columns["imported_in"] = [self.run_id] * len(batch)
        return columns

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
