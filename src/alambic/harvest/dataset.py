"""The harvest directory: shards of answers (`part-*.jsonl` or `part-*.parquet`), a log of failures
(`errors.log`, JSON lines), a manifest, and a dataset card so `datasets.load_dataset(DIR)` reads the shards.

The shards are the record of what is done; nothing else is. JSONL: a row is one line, flushed as soon as it
is written; after a crash (kill -9 included) the next run cuts a torn last line. Parquet: rows are buffered
and each flush writes a whole new file atomically (rename), so a crash loses at most the buffered answers,
which the next run asks again. Either way the next run reads which (prompt, turn, sample) have rows and asks
only for the rest: no row lost, none duplicated.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from alambic.errors import InvalidRequestError

RowKey = tuple[str, int, int]  # (prompt_id, turn, sample)
ROWS_PER_JSONL_SHARD = 10_000
DATASET_CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: "part-*.{suffix}"
---
# Teacher answers harvested by alambic

One row per answer: `prompt_id`, `turn`, `sample`, `messages` (what was sent), `answer`, `finish_reason`,
`logprobs` (when asked), token counts, latency, attempts, the key used (as its SHA-256) and the time.
`manifest.json` holds the endpoint, the model, the system prompt, the sampling parameters, the counts and the cost;
`errors.log` the prompts that kept failing.
"""


class ShardFormat(StrEnum):
    JSONL = "jsonl"
    PARQUET = "parquet"


@dataclass
class AnswerRow:
    prompt_id: str
    turn: int
    sample: int
    messages: list[dict]
    answer: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    latency_s: float
    attempts: int
    key_index: int
    key_sha256: str
    model: str
    created_at: float
    logprobs: list[dict] | None = None

    @property
    def key(self) -> RowKey:
        return (self.prompt_id, self.turn, self.sample)


class HarvestDataset:
    def __init__(
        self, directory: str | Path, shard_format: ShardFormat = ShardFormat.JSONL, *, parquet_flush_rows: int = 256
    ) -> None:
        self.directory = Path(directory)
        if self.directory.exists() and not self.directory.is_dir():
            raise InvalidRequestError(f"{self.directory} exists and is not a directory.", param="out")
        self.directory.mkdir(parents=True, exist_ok=True)
        self.format = shard_format
        self.parquet_flush_rows = parquet_flush_rows
        (self.directory / "README.md").write_text(DATASET_CARD.format(suffix=shard_format.value))
        self.done: dict[RowKey, AnswerRow] = {}
        self._remember(read_rows(self.directory, repair=True))
        self._run = f"{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:8]}"  # never another run's name
        self._shard_number = 0
        self._jsonl = None
        self._rows_in_jsonl = 0
        self._buffer: list[AnswerRow] = []

    def write(self, row: AnswerRow) -> None:
        """Store one answer. JSONL: durable on return. Parquet: durable at the next flush."""
        if row.key in self.done:
            return
        self.done[row.key] = row
        if self.format is ShardFormat.PARQUET:
            self._buffer.append(row)
            if len(self._buffer) >= self.parquet_flush_rows:
                self._flush_parquet()
            return
        if self._jsonl is None or self._rows_in_jsonl >= ROWS_PER_JSONL_SHARD:
            self._close_jsonl()
            self._jsonl = self._next_shard_path().open("a", encoding="utf-8")
            self._rows_in_jsonl = 0
        self._jsonl.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
        self._jsonl.flush()  # in the kernel now: survives the process being killed
        self._rows_in_jsonl += 1

    def record_error(self, key: RowKey, error: str, attempts: int) -> None:
        with (self.directory / "errors.log").open("a", encoding="utf-8") as errors:
            record = {"prompt_id": key[0], "turn": key[1], "sample": key[2], "error": error, "attempts": attempts}
            errors.write(json.dumps({**record, "time": time.time()}) + "\n")

    def write_manifest(self, manifest: dict) -> None:
        staging = self.directory / "manifest.json.partial"
        staging.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        staging.replace(self.directory / "manifest.json")  # atomic

    def close(self) -> None:
        self._flush_parquet()
        self._close_jsonl()

    def _remember(self, rows) -> None:
        for row in rows:
            self.done.setdefault(row.key, row)

    def _next_shard_path(self) -> Path:
        path = self.directory / f"part-{self._run}-{self._shard_number:04d}.{self.format.value}"
        self._shard_number += 1
        return path

    def _flush_parquet(self) -> None:
        if not self._buffer:
            return
        path = self._next_shard_path()
        staging = path.with_suffix(".parquet.partial")
        pq.write_table(pa.Table.from_pylist([asdict(row) for row in self._buffer]), staging)
        staging.replace(path)  # atomic: a shard is whole or absent
        self._buffer = []

    def _close_jsonl(self) -> None:
        if self._jsonl is not None:
            os.fsync(self._jsonl.fileno())
            self._jsonl.close()
            self._jsonl = None


def read_manifest(directory: str | Path) -> dict | None:
    """The manifest the last run left in a harvest directory, or None where there is none yet."""
    path = Path(directory) / "manifest.json"
    if not path.is_file():
        return None
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        manifest = None
    if not isinstance(manifest, dict):
        raise InvalidRequestError(f"{path} is not a harvest manifest (a JSON object).", param="out")
    return manifest


def read_rows(directory: str | Path, *, repair: bool = False) -> list[AnswerRow]:
    """Every row in a harvest directory's shards. A torn last line (its writer was killed mid-line, or is still
    writing it) is skipped, and with `repair` cut off the file: only the writer about to resume may do that."""
    directory = Path(directory)
    rows = [row for shard in sorted(directory.glob("part-*.jsonl")) for row in _read_jsonl(shard, repair)]
    for shard in sorted(directory.glob("part-*.parquet")):
        rows.extend(AnswerRow(**row) for row in pq.read_table(shard).to_pylist())
    return rows


def _read_jsonl(shard: Path, repair: bool) -> list[AnswerRow]:
    content = shard.read_bytes()
    complete = content[: content.rfind(b"\n") + 1]
    if repair and len(complete) != len(content):
        with shard.open("r+b") as file:
            file.truncate(len(complete))
    return [AnswerRow(**json.loads(line)) for line in complete.decode("utf-8").splitlines() if line]
