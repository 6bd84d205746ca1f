"""v1 JSONL vetted in bulk: msgspec decodes each line into types compiled from the shipped JSON Schema, so the
two paths cannot drift apart, and the rows it vouches for become a batch of store columns, built column by
column; the others take the per-row path (the JSON Schema), which accepts them or says what is wrong.

Beyond the schema, a row goes the per-row way wherever the two could read it differently or the store could
not hold it: an integer past 64 bits, a number past a double, a lone surrogate, `messages` and `prompt` both
given, a time `parse_time` refuses (both paths read times with it), a null token count to count. A JSON-valued
column keeps the row's own text of the value (msgspec's `Raw`): it is never decoded and encoded again. A line
is decoded once, those values as text, each then checked on its own; only a row with fields v1 does not name is
decoded again, to keep them.
"""

from __future__ import annotations

import copy
import gc
import multiprocessing
import queue
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from functools import cache
from multiprocessing.process import BaseProcess
from operator import attrgetter, itemgetter
from pathlib import Path
from typing import Annotated, Any, Union, get_args

import msgspec

from alambic.logs.format import V1_FIELDS, parse_time, schema
from alambic.logs.records import (
    BATCH_COLUMNS,
    COLUMN_DEFAULTS,
    COLUMN_EXTRA_TYPES,
    COLUMN_EXTRAS,
    TIME_FIELDS,
    Batch,
    time_text,
)
from alambic.logs.sources import LineChunk, line_chunks
from alambic.store.requestlog import MAX_LENGTHS

IGNORED_KEYWORDS = {"$schema", "$id", "title", "description", "additionalProperties"}
CHECKED_KEYWORDS = {"type", "required", "properties", "items", "minimum", "maximum", "minLength", "maxLength"}
INT64 = (-(2**63), 2**63 - 1)  # the store's integers
NAMED = frozenset((*V1_FIELDS, *COLUMN_EXTRAS.values()))  # any other field is an extra, kept as it came
OTHER_TIMES = attrgetter(*TIME_FIELDS)
# The fields whose columns hold their JSON text, `params` first (its values fill columns too).
AS_TEXT = (
    "params",
    "messages",
    "prompt",
    "response",
    "watermark_params",
    *(COLUMN_EXTRAS[column] for column, kind in COLUMN_EXTRA_TYPES.items() if kind is list),
)
# A UTC time as most logs write it: its store text is its own, rearranged (`_time_text`).
UTC_ISO = re.compile(r"(\d{4}-\d\d-\d\d)[T ](\d\d:\d\d:\d\d)(?:\.(\d{1,6}))?(?:Z|[+-]00:?00)")
WAIT_S = 1.0  # how often the worker and its caller check that the other is still there


def bulk_schema() -> dict[str, Any]:
    """v1's schema and what `parse_row` and `to_columns` require beyond it: the store's columns carried as extra
    fields hold their column's type, and `params.max_completion_tokens` (read as `max_tokens`) an integer."""
    v1 = copy.deepcopy(schema())
    for column, name in COLUMN_EXTRAS.items():
        v1["properties"][name] = {"type": ["array" if COLUMN_EXTRA_TYPES.get(column) is list else "string", "null"]}
    v1["properties"]["params"]["properties"]["max_completion_tokens"] = {"type": ["integer", "null"]}
    return v1


@cache
def field_types() -> dict[str, Any]:
    """The msgspec type of each field of a row the bulk path vouches for."""
    return {f.name: f.type for f in msgspec.structs.fields(_type(bulk_schema(), "v1"))}


@cache
def row_type(*, strict: bool) -> type[msgspec.Struct]:
    """A row as decoded: the fields of `AS_TEXT` as their JSON text (`Raw`, None when absent), the others typed.
    `strict`: a field v1 does not name is an error (such a row is decoded again, with the other type)."""
    required = bulk_schema()["required"]
    fields = [
        (name, kind) if name in required else (name, msgspec.Raw if name in AS_TEXT else kind, None)
        for name, kind in field_types().items()
    ]
    return msgspec.defstruct("v1", fields, kw_only=True, forbid_unknown_fields=strict, gc=False)


def _type(node: dict[str, Any], name: str) -> Any:
    """The msgspec type that decodes the values `node` of the JSON Schema allows, and no others."""
    unknown = node.keys() - IGNORED_KEYWORDS - CHECKED_KEYWORDS
    if unknown:
        raise NotImplementedError(f"{name}: schema keywords {sorted(unknown)} have no bulk check")
    kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
    return Union[tuple(_kind(kind, node, name) for kind in kinds)]  # noqa: UP007 (a union built at run time)


def _kind(kind: str, node: dict[str, Any], name: str) -> Any:
    low, high = node.get("minimum"), node.get("maximum")
    if kind == "string":
        return Annotated[str, msgspec.Meta(min_length=node.get("minLength"), max_length=node.get("maxLength"))]
    if kind == "integer":
        low = INT64[0] if low is None else max(low, INT64[0])
        high = INT64[1] if high is None else min(high, INT64[1])
        return Annotated[int, msgspec.Meta(ge=low, le=high)]
    if kind == "number":
        return Annotated[float, msgspec.Meta(ge=low, le=high)]
    if kind == "array":
        return list[_type(node["items"], f"{name}[]")] if "items" in node else list
    if kind == "object":
        if "properties" not in node:
            return dict
        required = node.get("required", ())
        types = {field: _type(child, f"{name}.{field}") for field, child in node["properties"].items()}
        fields = [(field, kind) if field in required else (field, kind, None) for field, kind in types.items()]
        return msgspec.defstruct(name, fields, kw_only=True, gc=False)
    return {"boolean": bool, "null": None}[kind]


@dataclass
class Vouched:
    """The rows the bulk path vouches for, in parallel lists: line, decoded row, typed params, the JSON text of the
    fields of `AS_TEXT` (None where null), the other fields' as one object (None: none), times."""

    lines: list[int] = field(default_factory=list)
    rows: list[Any] = field(default_factory=list)  # each a `row_type()`
    params: list[Any] = field(default_factory=list)
    texts: list[list[msgspec.Raw | None]] = field(default_factory=list)  # in `AS_TEXT` order
    extras: list[str | None] = field(default_factory=list)
    times: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # time, TIME_FIELDS (`time_text`)


class Vetter:
    """Vets chunks of JSONL lines."""

    def __init__(self, *, counting_tokens: bool) -> None:
        self.rows = msgspec.json.Decoder(row_type(strict=True))
        self.rows_with_extras = msgspec.json.Decoder(row_type(strict=False))
        self.fields = msgspec.json.Decoder(dict[str, msgspec.Raw])
        self.params = msgspec.json.Decoder(field_types()["params"]).decode
        self.checks = [(name, msgspec.json.Decoder(field_types()[name]).decode) for name in AS_TEXT[1:]]
        self.counting_tokens = counting_tokens

    def vet(self, lines: list[int], texts: list[str]) -> tuple[Batch, list[int]]:
        """The rows vouched for, as a batch, and the positions of the others."""
        vouched, others = Vouched(), []
        for position, (line, text) in enumerate(zip(lines, texts, strict=True)):
            try:
                row, extra = self._decoded(text)
                params = None if row.params is None else self.params(row.params)
                kept = [
                    None if (raw := getattr(row, name)) is None or check(raw) is None else raw
                    for name, check in self.checks
                ]  # each field's text, where the field is not null
                admitted, completed = OTHER_TIMES(row)
                times = (
                    _time_text(row.time),
                    None if admitted is None else _time_text(admitted),
                    None if completed is None else _time_text(completed),
                )
            except (msgspec.MsgspecError, ValueError, OverflowError, OSError):  # parse_time's BadRow is a ValueError
                others.append(position)
                continue
            if (kept[0] is not None and kept[1] is not None) or (  # messages and prompt
                self.counting_tokens and (row.prompt_tokens is None or row.completion_tokens is None)
            ):  # both is a bad row; a null count is counted with the tokenizer, one row at a time
                others.append(position)
                continue
            vouched.lines.append(line)
            vouched.rows.append(row)
            vouched.params.append(params)
            vouched.texts.append([None if params is None else row.params, *kept])
            vouched.extras.append(extra)
            vouched.times.append(times)
        return batch(vouched), others

    def _decoded(self, text: str) -> tuple[Any, str | None]:
        """The row, and the fields v1 does not name as one JSON object (None: it has none)."""
        try:
            return self.rows.decode(text), None
        except msgspec.ValidationError:  # perhaps a field v1 does not name
            row, fields = self.rows_with_extras.decode(text), self.fields.decode(text)
            return row, None if NAMED.issuperset(fields) else _extra(fields)


def _time_text(value: str | float) -> str:
    """`time_text(parse_time(value))`, ~3x quicker for a time of `UTC_ISO`'s shape (which `parse_time` reads
    with `datetime.fromisoformat`, here only to check it)."""
    shape = UTC_ISO.fullmatch(value) if isinstance(value, str) else None
    if shape is None:
        return time_text(parse_time(value))
    datetime.fromisoformat(value)  # a ValueError for a day or an hour out of range, as parse_time's
    day, clock, fraction = shape.groups()
    return f"{day} {clock}.{(fraction or '').ljust(6, '0')}"


def batch(vouched: Vouched) -> Batch:
    """The rows as a batch, as `records.batch_row` fills it, one column at a time."""
    if not vouched.rows:
        return Batch({name: [] for name in BATCH_COLUMNS})
    params = [no_params() if p is None else p for p in vouched.params]
    value = _by_field(vouched.rows, [name for name in field_types() if name not in AS_TEXT]).__getitem__
    param = _by_field(params, [f.name for f in msgspec.structs.fields(no_params())]).__getitem__
    texts = dict(zip(AS_TEXT, map(list, zip(*vouched.texts, strict=True)), strict=True))

    def text(name: str, *, wrapped: bool = False) -> list[str | None]:
        """The field's JSON text where it is not null (as a one-item array's if `wrapped`)."""
        values = texts[name]
        if values.count(None) == len(values):  # most optional fields are null in every row of a chunk
            return values
        return [None if v is None else f"[{str(v, 'utf-8')}]" if wrapped else str(v, "utf-8") for v in values]

    def either(preferred: list, other: list) -> list:
        return [o if p is None else p for p, o in zip(preferred, other, strict=True)]

    columns: dict[str, list] = {
        "line": vouched.lines,
        "account": value("account"),
        **{name: list(map(itemgetter(i), vouched.times)) for i, name in enumerate(("created_at", *TIME_FIELDS))},
        "request_id": value("id"),
        "endpoint": value("endpoint"),
        "status_code": value("status"),
        "client_address": value("client_ip"),
        "user_agent": value("user_agent"),
        "model": value("model"),
        "stream": [int(stream is True) for stream in param("stream")],
        "max_tokens": [c or m for c, m in zip(param("max_completion_tokens"), param("max_tokens"), strict=True)],
        "stop": [None if s is None else _json([s] if isinstance(s, str) else s) for s in param("stop")],
        "logprobs": [None if x is None else int(bool(x)) for x in param("logprobs")],
        "parameters": [None if p is None or not p[1:-1].strip() else p for p in text("params")],  # {}: None
        "prompt": either(text("messages"), text("prompt", wrapped=True)),
        "response_texts": either(text("responses"), text("response", wrapped=True)),
        "extra": vouched.extras,
        **{name: param(name) for name in ("n", "temperature", "top_p", "seed", "top_logprobs")},
        **{name: value(name) for name in ("prompt_tokens", "completion_tokens", "latency_ms", "first_token_ms")},
        **{name: value(name) for name in ("prompt_hash", "conversation", "gateway_instance", "watermark_key_id")},
        "watermark_params": text("watermark_params"),
    }
    for column, name in COLUMN_EXTRAS.items():
        if column not in columns:
            columns[column] = text(name) if COLUMN_EXTRA_TYPES.get(column) is list else value(name)
    for column, default in COLUMN_DEFAULTS.items():
        columns[column] = [x or default for x in columns[column]]
    for column, length in MAX_LENGTHS.items():
        if column in columns and max(map(len, filter(None, columns[column])), default=0) > length:
            columns[column] = [None if x is None else x[:length] for x in columns[column]]
    return Batch({name: columns[name] for name in BATCH_COLUMNS})


def _by_field(rows: list, names: list[str]) -> dict[str, list]:
    """The rows' fields as columns, read in one pass over the rows."""
    return dict(zip(names, map(list, zip(*map(attrgetter(*names), rows), strict=True)), strict=True))


@cache
def no_params() -> Any:
    """A row's `params` when it has none: every parameter null."""
    return next(kind for kind in get_args(field_types()["params"]) if kind is not type(None))()


def _extra(fields: dict[str, msgspec.Raw]) -> str:
    return _json({name: text for name, text in fields.items() if name not in NAMED})


def _json(value: Any) -> str:
    return str(msgspec.json.encode(value), "utf-8")


@dataclass
class VettedChunk:
    """A chunk of a JSONL file vetted: how many lines it read, its rows vouched for as a batch, and the lines left
    to the per-row path."""

    read: int
    batch: Batch
    others: LineChunk


def vet_file(path: Path, lines_per_chunk: int, *, counting_tokens: bool) -> Iterator[VettedChunk]:
    """A JSONL file (optionally gzipped) read and vetted chunk by chunk, in file order."""
    vetter = Vetter(counting_tokens=counting_tokens)
    for chunk in line_chunks(path, lines_per_chunk):
        batch, others = vetter.vet(chunk.numbers, chunk.texts)
        left = LineChunk(chunk.path, [chunk.numbers[i] for i in others], [chunk.texts[i] for i in others])
        yield VettedChunk(len(chunk.texts), batch, left)


def vet_file_in_a_worker(path: Path, lines_per_chunk: int, *, counting_tokens: bool) -> Iterator[VettedChunk]:
    """`vet_file` in a forked process, one chunk ahead of the caller: vetting holds the GIL (msgspec, building
    columns), so a thread could not vet while the store takes a batch, and a process can. Memory is three chunks:
    one vetted, one waiting, the caller's. The worker stops when the caller stops iterating, or dies."""
    context = multiprocessing.get_context("fork")  # the worker needs what this process has imported, not a restart
    chunks = context.Queue(maxsize=1)
    worker = context.Process(
        target=_vet_into, args=(chunks, path, lines_per_chunk, counting_tokens), name="alambic-vet", daemon=True
    )
    worker.start()
    try:
        while (chunk := _take(chunks, worker)) is not None:
            if isinstance(chunk, BaseException):
                raise chunk
            yield chunk
    finally:
        worker.terminate()  # a no-op once it has ended
        worker.join()
        chunks.close()


def _vet_into(chunks: multiprocessing.Queue, path: Path, lines_per_chunk: int, counting_tokens: bool) -> None:
    """The worker: each chunk put on `chunks` (at most one waiting), then None; or the error that stopped it."""
    gc.freeze()  # what it inherited is never garbage here: collections need only look at its own objects
    gc.disable()  # a chunk's rows are thousands of containers kept for the batch: collections every few hundred
    try:  # of them cost ~12% of vetting; one a chunk instead
        for chunk in vet_file(path, lines_per_chunk, counting_tokens=counting_tokens):
            _give(chunks, chunk)
            gc.collect()
        _give(chunks, None)
    except Exception as error:
        _give(chunks, error)


def _give(chunks: multiprocessing.Queue, item: VettedChunk | Exception | None) -> None:
    while True:
        try:
            return chunks.put(item, timeout=WAIT_S)
        except queue.Full:
            if not multiprocessing.parent_process().is_alive():  # killed: nobody will take it
                chunks.cancel_join_thread()
                raise SystemExit(0) from None


def _take(chunks: multiprocessing.Queue, worker: BaseProcess) -> VettedChunk | Exception | None:
    while True:
        try:
            return chunks.get(timeout=WAIT_S)
        except queue.Empty:
            if worker.exitcode is not None and chunks.empty():
                raise RuntimeError(f"the vetting process ended with exit code {worker.exitcode}") from None
