"""Prompt sources: files of prompts or conversations, each prompt content-addressed by a hash of its turns.

Formats: JSONL, JSON (a list), CSV, Parquet and plain text (one prompt a line). `field` names the column
holding the prompt; a value that is a list of strings is a conversation, replayed turn by turn with the
teacher's own replies in context.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from alambic.errors import InvalidRequestError

DEFAULT_FIELDS = ("prompt", "question", "instruction", "turns", "text", "input")


@dataclass(frozen=True)
class Prompt:
    """One or more user turns; `prompt_id` is the same wherever and however often the prompt appears."""

    prompt_id: str
    turns: tuple[str, ...]
    system: str | None = None

    @classmethod
    def of(cls, turns: list[str] | tuple[str, ...] | str, system: str | None = None) -> Prompt:
        turns = (turns,) if isinstance(turns, str) else tuple(turns)
        if not turns or not all(isinstance(t, str) and t.strip() for t in turns):
            raise ValueError("a prompt needs at least one non-empty user turn")
        canonical = json.dumps({"system": system, "turns": turns}, ensure_ascii=False, sort_keys=True)
        return cls(hashlib.sha256(canonical.encode()).hexdigest()[:24], turns, system)


def load_prompts(path: str | Path, field: str | None = None, *, system: str | None = None) -> list[Prompt]:
    """Every prompt in a file, first occurrence kept where a prompt repeats."""
    path = Path(path)
    if not path.is_file():
        raise InvalidRequestError(f"No prompt file at {path}.", param="prompts")
    records = _records(path)
    prompts: dict[str, Prompt] = {}
    for number, record in enumerate(records, start=1):
        value = record if isinstance(record, str) else _field(record, field, path, number)
        try:
            prompt = Prompt.of(value, system)
        except (ValueError, TypeError):
            raise InvalidRequestError(
                f"{path.name}, record {number}: the prompt must be a non-empty string or list of strings.",
                param="field",
            ) from None
        prompts.setdefault(prompt.prompt_id, prompt)
    if not prompts:
        raise InvalidRequestError(f"{path} holds no prompts.", param="prompts")
    return list(prompts.values())


def _records(path: Path) -> Iterator[dict | str]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".jsonl":
            with path.open(encoding="utf-8") as lines:
                yield from (json.loads(line) for line in lines if line.strip())
        elif suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"))
            if not isinstance(data, list):
                raise InvalidRequestError(f"{path} must hold a JSON list of records.", param="prompts")
            yield from data
        elif suffix == ".csv":
            with path.open(encoding="utf-8", newline="") as rows:
                yield from csv.DictReader(rows)
        elif suffix == ".parquet":
            import pyarrow.parquet as pq

            yield from pq.read_table(path).to_pylist()
        else:  # plain text: one prompt a line
            with path.open(encoding="utf-8") as lines:
                yield from (line.rstrip("\n") for line in lines if line.strip())
    except (json.JSONDecodeError, UnicodeDecodeError, csv.Error) as error:
        raise InvalidRequestError(f"{path} could not be read: {error}", param="prompts") from None


def _field(record: dict, field: str | None, path: Path, number: int) -> str | list[str]:
    if not isinstance(record, dict):
        raise InvalidRequestError(f"{path.name}, record {number}: expected an object.", param="prompts")
    if field is not None:
        if field not in record:
            raise InvalidRequestError(f"{path.name}, record {number} has no field '{field}'.", param="field")
        return record[field]
    for candidate in DEFAULT_FIELDS:
        if candidate in record:
            return record[candidate]
    raise InvalidRequestError(
        f"{path.name}: name the prompt's field with --field (none of {', '.join(DEFAULT_FIELDS)} found).",
        param="field",
    )
