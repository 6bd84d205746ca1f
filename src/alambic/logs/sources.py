"""Reading request logs from files: JSONL (optionally gzipped), CSV and Parquet, streamed row by row.

Each row comes with its line number (JSONL, CSV) or row number (Parquet), so a bad row can be named.
"""

from __future__ import annotations

import csv
import gzip
import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from alambic.errors import InvalidRequestError
from alambic.logs.format import EXTRA_COLUMN, NESTED_FIELDS

SUFFIXES = (".jsonl", ".jsonl.gz", ".csv", ".parquet")
READ_ROWS = 8192  # rows read at a time: a Parquet batch, or JSONL lines on the per-row path
# CSV holds text only: these v1 fields are numbers when present.
CSV_INTEGERS = ("status", "prompt_tokens", "completion_tokens")
CSV_FLOATS = ("latency_ms", "first_token_ms", "time", "admitted_at", "completed_at")  # times: or ISO 8601


@dataclass(frozen=True)
class SourceRow:
    """One object read from a file, or why it could not be read."""

    path: str
    line: int
    value: Any = None
    error: str | None = None


def file_format(path: Path) -> str:
    name = path.name.lower()
    for suffix in SUFFIXES:
        if name.endswith(suffix):
            return suffix
    raise InvalidRequestError(f"{path}: unknown log format; use one of {', '.join(SUFFIXES)}.")


def read_rows(path: Path) -> Iterator[SourceRow]:
    """The objects of one log file, in file order."""
    if not path.is_file():
        raise InvalidRequestError(f"{path}: no such file.")
    kind = file_format(path)
    if kind == ".parquet":
        yield from _parquet_rows(path)
    elif kind == ".csv":
        yield from _csv_rows(path)
    else:
        yield from _jsonl_rows(path)


@dataclass
class LineChunk:
    """Consecutive non-blank lines of a JSONL file, undecoded, with their line numbers."""

    path: str
    numbers: list[int] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)

    def rows(self, positions: Iterable[int]) -> Iterator[SourceRow]:
        """The lines at these positions, decoded one by one."""
        for i in positions:
            yield jsonl_row(self.path, self.numbers[i], self.texts[i])


def is_jsonl(path: Path) -> bool:
    return file_format(path) in (".jsonl", ".jsonl.gz")


def line_chunks(path: Path, lines_per_chunk: int) -> Iterator[LineChunk]:
    """A JSONL file (optionally gzipped) in chunks of lines, in file order."""
    if not path.is_file():
        raise InvalidRequestError(f"{path}: no such file.")
    opener = gzip.open if file_format(path) == ".jsonl.gz" else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as lines:
        chunk = LineChunk(str(path))
        for number, line in enumerate(lines, start=1):
            if not line.isspace():  # (strip would copy the line)
                chunk.numbers.append(number)
                chunk.texts.append(line)
                if len(chunk.texts) >= lines_per_chunk:
                    yield chunk
                    chunk = LineChunk(str(path))
        if chunk.texts:
            yield chunk


def jsonl_row(path: str, number: int, line: str) -> SourceRow:
    try:
        return SourceRow(path, number, json.loads(line))
    except json.JSONDecodeError as error:
        return SourceRow(path, number, error=f"malformed JSON ({error.msg} at column {error.colno})")


def _jsonl_rows(path: Path) -> Iterator[SourceRow]:
    for chunk in line_chunks(path, READ_ROWS):
        yield from chunk.rows(range(len(chunk.texts)))


def _csv_rows(path: Path) -> Iterator[SourceRow]:
    with open(path, newline="", encoding="utf-8", errors="replace") as handle:
        reader = csv.DictReader(handle)
        for cells in reader:
            line = reader.line_num
            try:
                yield SourceRow(str(path), line, _typed_csv_row(cells))
            except ValueError as error:
                yield SourceRow(str(path), line, error=str(error))


def _typed_csv_row(cells: dict[str, str | None]) -> dict[str, Any]:
    """CSV's text as v1 values: empty cells are null, numbers parsed, nested fields decoded from JSON text."""
    row: dict[str, Any] = {}
    for name, cell in cells.items():
        if name is None:
            raise ValueError("more cells than the header has columns")
        row[name] = None if cell in (None, "") else cell
    for names, kind in ((CSV_INTEGERS, int), (CSV_FLOATS, float)):
        for name in names:
            if name in row:
                row[name] = _number(row, name, kind)
    return decode_nested(row)


def _number(row: dict[str, Any], name: str, kind: type) -> Any:
    """The cell as a number where it is one; anything else is left for validation to name."""
    value = row.get(name)
    try:
        return value if value is None else kind(value)
    except ValueError:
        return value


def decode_nested(row: dict[str, Any]) -> dict[str, Any]:
    """CSV and Parquet hold nested fields, and all extra fields together, as JSON text: decoded in place."""
    for name in (*NESTED_FIELDS, EXTRA_COLUMN):
        value = row.get(name)
        if isinstance(value, str):
            try:
                row[name] = json.loads(value)
            except json.JSONDecodeError:
                raise ValueError(f"{name}: not valid JSON text") from None
    extra = row.pop(EXTRA_COLUMN, None)
    if extra is not None:
        if not isinstance(extra, dict):
            raise ValueError(f"{EXTRA_COLUMN}: must be a JSON object")
        row.update({k: v for k, v in extra.items() if k not in row})
    return row


def _parquet_rows(path: Path) -> Iterator[SourceRow]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=READ_ROWS):
        for row in batch.to_pylist():
            number += 1
            try:
                yield SourceRow(str(path), number, decode_nested(_epoch_or_iso(row)))
            except ValueError as error:
                yield SourceRow(str(path), number, error=str(error))


def _epoch_or_iso(row: dict[str, Any]) -> dict[str, Any]:
    time = row.get("time")
    if hasattr(time, "isoformat"):  # a Parquet timestamp column
        row["time"] = time.isoformat() if time.tzinfo else time.isoformat() + "+00:00"
    return row
