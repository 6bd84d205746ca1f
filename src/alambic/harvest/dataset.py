"""The harvest directory: append-only JSONL shards of answers, a log of failures, and a manifest.

A row is one line, written whole and flushed before the next request is counted done, so the rows are the
record of what is done: after a crash (kill -9 included) the next run truncates a torn last line, reads
which (prompt, turn, sample) have rows, and asks only for the rest. Each run appends to shards of its own.
`datasets.load_dataset(DIR)` reads `data/*.jsonl` through the dataset card (README.md).
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from alambic.errors import InvalidRequestError

RowKey = tuple[str, int, int]  # (prompt_id, turn, sample)
ROWS_PER_SHARD = 10_000
DATASET_CARD = """---
configs:
- config_name: default
  data_files:
  - split: train
    path: "data/*.jsonl"
---
# Teacher answers harvested by alambic

One row per answer: `prompt_id`, `turn`, `sample`, `messages` (what was sent), `answer`, `finish_reason`,
`logprobs` (when asked), token counts, latency, the key used (as its SHA-256) and the time.
`manifest.json` holds the endpoint, the model, the sampling parameters, the counts and the cost;
`errors.jsonl` the prompts that kept failing.
"""


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
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        self.data_dir = self.directory / "data"
        if self.directory.exists() and not self.directory.is_dir():
            raise InvalidRequestError(f"{self.directory} exists and is not a directory.", param="out")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        (self.directory / "README.md").write_text(DATASET_CARD)
        self.done: dict[RowKey, AnswerRow] = {}
        for shard in sorted(self.data_dir.glob("*.jsonl")):
            for row in _read_repairing(shard):
                self.done.setdefault(row.key, row)
        self._run = f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self._shard_number = 0
        self._rows_in_shard = 0
        self._shard = None

    def write(self, row: AnswerRow) -> None:
        """Append one row as one line; it counts as done once this returns."""
        if row.key in self.done:
            return
        if self._shard is None or self._rows_in_shard >= ROWS_PER_SHARD:
            self._open_next_shard()
        self._shard.write(json.dumps(asdict(row), ensure_ascii=False) + "\n")
        self._shard.flush()  # in the kernel now: survives the process being killed
        self._rows_in_shard += 1
        self.done[row.key] = row

    def record_error(self, key: RowKey, error: str, attempts: int) -> None:
        with (self.directory / "errors.jsonl").open("a", encoding="utf-8") as errors:
            record = {"prompt_id": key[0], "turn": key[1], "sample": key[2], "error": error, "attempts": attempts}
            errors.write(json.dumps({**record, "time": time.time()}) + "\n")

    def write_manifest(self, manifest: dict) -> None:
        staging = self.directory / "manifest.json.partial"
        staging.write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n")
        staging.replace(self.directory / "manifest.json")  # atomic

    def close(self) -> None:
        if self._shard is not None:
            os.fsync(self._shard.fileno())
            self._shard.close()
            self._shard = None

    def _open_next_shard(self) -> None:
        self.close()
        path = self.data_dir / f"part-{self._run}-{self._shard_number:04d}.jsonl"
        self._shard = path.open("a", encoding="utf-8")
        self._shard_number += 1
        self._rows_in_shard = 0


def _read_repairing(shard: Path) -> list[AnswerRow]:
    """The rows of a shard; a torn last line (the writer was killed mid-line) is cut off the file."""
    content = shard.read_bytes()
    complete = content[: content.rfind(b"\n") + 1]
    if len(complete) != len(content):
        with shard.open("r+b") as file:
            file.truncate(len(complete))
    return [AnswerRow(**json.loads(line)) for line in complete.decode("utf-8").splitlines() if line]
