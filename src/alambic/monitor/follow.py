"""Following a live store: new rows read by ingest sequence into a checkpoint directory, scored as they come.

Each poll stamps the store's new final rows (`store.requestlog.stamp_ingest`), reads those after the cursor
into a new JSONL file in the checkpoint directory, and advances a `SteppedMonitor` over all of them to the
step boundaries that are `lag` behind the newest row (a request still in progress may yet log an earlier
time). `state.json` (the cursor, the last boundary scored, the flags) is replaced atomically after each
poll; a file written by a poll that died before it is removed on restart, so no row is read twice or lost.
With a `window`, the files are compacted past `MAX_FILES` without the rows that no later step's window reaches,
each account's count of them kept in the state: the files, and a step's work, are bounded by a window of traffic.
A checkpoint is resumed with its window or a shorter one (or any, if it was kept without).
"""

from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

from alambic.errors import InvalidRequestError
from alambic.logs.exporter import rows_after
from alambic.monitor.replay import Assess, FirstFlag, SteppedMonitor, micros
from alambic.monitor.source import connect, open_log
from alambic.monitor.verdict import Verdict
from alambic.store import Store
from alambic.store.requestlog import stamp_ingest

STATE = "state.json"
MAX_FILES = 32  # more batch files than this are merged into one: DuckDB reads a few large files faster


class Follower:
    def __init__(
        self,
        store: Store,
        checkpoint: Path,
        assess: Assess,
        step: timedelta,
        lag: timedelta,
        memory_limit: str | None = None,
        window: timedelta | None = None,
    ) -> None:
        self.store = store
        self.checkpoint = checkpoint
        self.lag = lag
        checkpoint.mkdir(parents=True, exist_ok=True)
        state = json.loads((checkpoint / STATE).read_text()) if (checkpoint / STATE).is_file() else {}
        self.window_us = window // timedelta(microseconds=1) if window is not None else None
        kept = state.get("window_us")
        if kept is not None and (self.window_us is None or self.window_us > kept):  # rows it reads may be gone
            raise InvalidRequestError(
                f"The checkpoint {checkpoint} was kept with a window of "
                f"{timedelta(microseconds=kept)}, and the rows before it are gone: follow it with that window or a "
                "shorter one."
            )
        self.cursor: int = state.get("cursor", 0)
        self.files: list[str] = state.get("files", [])
        self.newest: datetime | None = _time(state.get("newest"))
        for stray in [*checkpoint.glob("rows-*.jsonl"), *checkpoint.glob("*.tmp")]:
            if stray.name not in self.files:
                stray.unlink()
        self.connection = connect(memory_limit)  # `source.connect`: DuckDB spills past the limit
        self._open()
        flags = {account: FirstFlag.from_json(flag) for account, flag in state.get("flags", {}).items()}
        self.monitor = SteppedMonitor(
            self.connection,
            assess,
            step,
            scored_until=state.get("scored_until"),
            flags=flags,
            window=window,
            earlier=state.get("earlier"),
        )

    def poll(self) -> list[tuple[Verdict, FirstFlag]]:
        """Read what the store has gained, score it; returns the accounts flagged for the first time."""
        while stamp_ingest(self.store):
            pass
        batch = []
        while page := rows_after(self.store, self.cursor):
            batch += page
            self.cursor = page[-1][0]
        if batch:
            name = f"rows-{batch[0][0]:015d}.jsonl"
            with open(self.checkpoint / name, "w", encoding="utf-8") as handle:
                handle.writelines(json.dumps(row, ensure_ascii=False) + "\n" for _, row in batch)
            self.files.append(name)
            if len(self.files) > MAX_FILES:
                self._merge()
            times = [datetime.fromisoformat(row["time"]) for _, row in batch]
            scored = self.monitor.scored_until
            if self.monitor.tables is not None and scored is not None and micros(min(times)) <= scored:
                self.monitor.tables.reset()  # a late row: in no table kept yet
            self.newest = max([*times, self.newest] if self.newest else times)
            self._open()
        raised = self.monitor.advance(self.newest - self.lag) if self.newest else []
        self._save()
        return raised

    def _merge(self) -> None:
        """Concatenate the batch files into one new file, less the rows no later window reaches (each account's
        count of them added to `earlier`); `_save` makes the swap durable, and what a crash leaves before or after
        it (the new file, or the old ones) is not in the state, so is removed on restart."""
        merged, expired = self.checkpoint / "merging.tmp", Counter()
        scored = self.monitor.scored_until
        cutoff = scored - self.window_us if self.window_us is not None and scored is not None else None
        with open(merged, "wb") as out:
            for name in self.files:
                with open(self.checkpoint / name, "rb") as batch:
                    if cutoff is None:
                        shutil.copyfileobj(batch, out)
                        continue
                    for line in batch:
                        row = json.loads(line)
                        if micros(datetime.fromisoformat(row["time"])) > cutoff:
                            out.write(line)
                        elif row.get("account") is not None:
                            expired[row["account"]] += 1
        old, self.files = self.files, [f"rows-{self.files[-1][5:20]}m.jsonl"]  # a name not among the old
        os.replace(merged, self.checkpoint / self.files[0])
        for account, count in expired.items():
            self.monitor.earlier[account] = self.monitor.earlier.get(account, 0) + count
        self._save()
        for name in old:
            (self.checkpoint / name).unlink()

    def _open(self) -> None:
        if self.files:  # until then, nothing is scored (`newest` is None)
            open_log([self.checkpoint / name for name in self.files], self.connection, name="log")

    def _save(self) -> None:
        state = {
            "cursor": self.cursor,
            "files": self.files,
            "newest": self.newest.astimezone(UTC).isoformat() if self.newest else None,
            "scored_until": self.monitor.scored_until,
            "flags": {account: flag.to_json() for account, flag in self.monitor.flags.items()},
            "window_us": self.window_us,
            "earlier": self.monitor.earlier,
        }
        temporary = self.checkpoint / (STATE + ".tmp")
        temporary.write_text(json.dumps(state, indent=1))
        os.replace(temporary, self.checkpoint / STATE)


def _time(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None
