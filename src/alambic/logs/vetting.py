"""v1 JSONL vetted in bulk by DuckDB: the rows it can vouch for become a batch of store columns with no
per-row Python; the others take the per-row path (the JSON Schema), which accepts them or says what is wrong.

The checks are compiled from the shipped JSON Schema, so the two paths cannot drift apart. Beyond it, a row
goes the per-row way wherever DuckDB could read it otherwise than Python: a time not in plain ISO 8601, an
integer past 64 bits, a key given twice. (DuckDB keeps numbers' JSON text as written, and refuses the lone
surrogates that Python accepts.)
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import duckdb
import pyarrow as pa

from alambic.logs.format import V1_FIELDS, schema
from alambic.logs.records import (
    COLUMN_DEFAULTS,
    COLUMN_EXTRA_TYPES,
    COLUMN_EXTRAS,
    MONITOR_FIELDS,
    TIME_FIELDS,
    batch_schema,
)
from alambic.store.requestlog import MAX_LENGTHS

# DuckDB's json_type names for each JSON Schema type. A float that is a whole number (2.0) is no integer
# here: such rows take the per-row path, where the schema decides.
JSON_TYPES = {
    "string": ("VARCHAR",),
    "integer": ("UBIGINT", "BIGINT"),
    "number": ("UBIGINT", "BIGINT", "DOUBLE"),
    "boolean": ("BOOLEAN",),
    "null": ("NULL",),
    "array": ("ARRAY",),
    "object": ("OBJECT",),
}
IGNORED_KEYWORDS = {"$schema", "$id", "title", "description", "additionalProperties"}
# ISO 8601 as both Python and DuckDB read it the same way: seconds, 1-6 decimals, an offset.
PLAIN_ISO = (
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}T([01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](\.[0-9]{1,6})?"
    r"(Z|[+-]([01][0-9]|2[0-3]):[0-5][0-9])"
)
OBJECT_START = r"^[ \t\n\r]*\{"  # valid JSON that starts so is an object: one parse of the row fewer than json_type
VET_ROWS = 5000  # rows a query: DuckDB's working set grows with them (~15 kB a row)
LAST_EPOCH = 253402300799  # 9999-12-31T23:59:59Z, Python's last second


class Fields:
    """The paths DuckDB extracts from each row, and the columns naming each one's JSON type and value.

    Each kind is one list, extracted in one pass over the row, then split into one column a path, so that
    the checks read plain columns.
    """

    def __init__(self) -> None:
        self.paths: dict[str, list[str]] = {"t": [], "s": [], "j": []}

    def _column(self, kind: str, path: str) -> str:
        if path not in self.paths[kind]:
            self.paths[kind].append(path)
        return f"{kind}{self.paths[kind].index(path) + 1}"

    def type(self, path: str) -> str:
        """json_type's name for the value: VARCHAR, UBIGINT, ARRAY, NULL (JSON null)...; SQL NULL if absent."""
        return self._column("t", path)

    def text(self, path: str) -> str:
        """The value as text: a string unquoted, anything else as JSON text."""
        return self._column("s", path)

    def json(self, path: str) -> str:
        """The value as JSON text (a string quoted)."""
        return self._column("j", path)

    def lists(self) -> str:
        """SQL for the three lists, one entry a path."""
        functions = {"t": "json_type", "s": "json_extract_string", "j": "json_extract"}
        return ", ".join(
            f"{functions[kind]}(text, [{', '.join(repr(p) for p in paths)}]) AS {kind}"
            for kind, paths in self.paths.items()
        )

    def columns(self) -> str:
        """SQL splitting the lists into one column a path."""
        return ", ".join(
            f"{kind}[{i}] AS {kind}{i}" for kind, paths in self.paths.items() for i in range(1, len(paths) + 1)
        )


def _in(expression: str, names: tuple[str, ...]) -> str:
    return f"{expression} IN ({', '.join(repr(n) for n in names)})"


def _schema_checks(fields: Fields, node: dict[str, Any], path: str, required: bool) -> Iterator[str]:
    """SQL conditions that hold when the value at `path` follows `node` of the JSON Schema."""
    unknown = node.keys() - IGNORED_KEYWORDS - {"type", "required", "properties", "items"}
    unknown -= {"minimum", "maximum", "minLength", "maxLength"}
    if unknown:
        raise NotImplementedError(f"{path}: schema keywords {sorted(unknown)} have no bulk check")
    kinds = node["type"] if isinstance(node["type"], list) else [node["type"]]
    allowed = tuple(name for kind in kinds for name in JSON_TYPES[kind])
    kind = f"coalesce({fields.type(path)}, 'MISSING')"
    yield _in(kind, allowed if required else (*allowed, "MISSING"))
    if "integer" in kinds:  # the store's integers are 64-bit
        yield f"({kind} NOT IN ('UBIGINT', 'BIGINT') OR TRY_CAST({fields.text(path)} AS BIGINT) IS NOT NULL)"
    for keyword, operator in (("minimum", ">="), ("maximum", "<=")):
        if keyword in node:
            bound = f"TRY_CAST({fields.text(path)} AS DOUBLE) {operator} {node[keyword]}"
            yield f"({kind} NOT IN ('UBIGINT', 'BIGINT', 'DOUBLE') OR {bound})"
    for keyword, operator in (("minLength", ">="), ("maxLength", "<=")):
        if keyword in node:
            yield f"({kind} != 'VARCHAR' OR length({fields.text(path)}) {operator} {node[keyword]})"
    for name, child in node.get("properties", {}).items():
        yield from _schema_checks(fields, child, f"{path}.{name}", name in node.get("required", ()))
    if "items" in node:
        yield from _item_checks(fields, path, node["items"])


def _item_checks(fields: Fields, path: str, items: dict[str, Any]) -> Iterator[str]:
    """An array's items: their type, and their properties' (wildcard paths into the array's JSON text)."""
    if set(items) - {"type", "required", "properties"} or items["type"] != "object":
        raise NotImplementedError(f"{path}: only arrays of objects have a bulk check")
    array = f"CASE WHEN {fields.type(path)} = 'ARRAY' THEN {fields.json(path)} ELSE '[]' END"
    yield f"len(list_filter(json_type({array}, '$[*]'), lambda x: x != 'OBJECT')) = 0"
    for name, child in items.get("properties", {}).items():
        if set(child) != {"type"}:
            raise NotImplementedError(f"{path}[*].{name}: only types have a bulk check")
        kinds = child["type"] if isinstance(child["type"], list) else [child["type"]]
        allowed = tuple(n for kind in kinds for n in JSON_TYPES[kind])
        types = f"json_type({array}, '$[*].{name}')"
        yield f"len(list_filter({types}, lambda x: NOT {_in('x', allowed)})) = 0"
        if name in items.get("required", ()):
            yield f"len({types}) = json_array_length({array})"


def _extra_checks(fields: Fields, counting_tokens: bool) -> Iterator[str]:
    """What `parse_row` and `to_columns` require beyond the schema, and where DuckDB and Python could differ."""
    f = fields
    yield f"(coalesce({f.type('$.messages')}, 'NULL') = 'NULL' OR coalesce({f.type('$.prompt')}, 'NULL') = 'NULL')"
    yield _time_check(f, "$.time")
    for name in TIME_FIELDS:
        yield f"(coalesce({f.type('$.' + name)}, 'NULL') = 'NULL' OR {_time_check(f, '$.' + name)})"
    for column, name in COLUMN_EXTRAS.items():
        kind = "ARRAY" if COLUMN_EXTRA_TYPES.get(column) is list else "VARCHAR"
        yield f"coalesce({f.type('$.' + name)}, 'NULL') IN ('NULL', '{kind}')"
    completion = f.type("$.params.max_completion_tokens")
    yield (
        f"(coalesce({completion}, 'NULL') = 'NULL' OR ({completion} IN ('UBIGINT', 'BIGINT')"
        f" AND TRY_CAST({f.text('$.params.max_completion_tokens')} AS BIGINT) IS NOT NULL))"
    )
    yield "len(keys) = len(list_distinct(keys))"
    if counting_tokens:  # a null count is counted with the tokenizer, one row at a time
        yield f"{f.type('$.prompt_tokens')} IN ('UBIGINT', 'BIGINT')"
        yield f"{f.type('$.completion_tokens')} IN ('UBIGINT', 'BIGINT')"


NOT_TEXT = ("first_token_ms", "watermark_params")  # the monitor's fields that are neither times nor text


def _time_check(f: Fields, path: str) -> str:
    """A time Python and DuckDB read the same way: plain ISO 8601 with an offset, or whole epoch seconds."""
    kind, text = f.type(path), f.text(path)
    return (
        f"(({kind} = 'VARCHAR' AND regexp_full_match({text}, '{PLAIN_ISO}') AND left({text}, 4) != '0000'"
        f" AND TRY_CAST({text} AS TIMESTAMPTZ) IS NOT NULL)"
        f" OR ({kind} = 'UBIGINT' AND TRY_CAST({text} AS BIGINT) <= {LAST_EPOCH}))"
    )


def _time_column(f: Fields, path: str) -> str:
    kind, text = f.type(path), f.text(path)
    return (
        f"CASE WHEN {kind} = 'VARCHAR' THEN TRY_CAST({text} AS TIMESTAMPTZ)"
        f" WHEN {kind} = 'UBIGINT' THEN to_timestamp(TRY_CAST({text} AS BIGINT)) END"
    )


def _columns(fields: Fields) -> dict[str, str]:
    """SQL for each batch column (as `to_columns` fills it) of a row that passed the checks."""
    f = fields

    def param(name: str) -> str:
        return f.text(f"$.params.{name}")

    def integer(path: str) -> str:
        return f"TRY_CAST({f.text(path)} AS BIGINT)"

    def number(path: str) -> str:
        return f"TRY_CAST({f.text(path)} AS DOUBLE)"

    def given(path: str, kind: str | None = None) -> str:
        """The value is there and not null (and of this JSON type)."""
        return f"{f.type(path)} != 'NULL'" if kind is None else f"{f.type(path)} = '{kind}'"

    logprobs = f.type("$.params.logprobs")
    completion = integer("$.params.max_completion_tokens")
    columns = {
        "account": f.text("$.account"),
        "created_at": _time_column(f, "$.time"),
        **{name: _time_column(f, f"$.{name}") for name in TIME_FIELDS},
        **{name: f.text(f"$.{name}") for name in MONITOR_FIELDS if name not in (*TIME_FIELDS, *NOT_TEXT)},
        "first_token_ms": number("$.first_token_ms"),
        "watermark_params": f"CASE WHEN {given('$.watermark_params')} THEN {f.json('$.watermark_params')} END",
        "endpoint": f.text("$.endpoint"),
        "status_code": integer("$.status"),
        "client_address": f.text("$.client_ip"),
        "user_agent": f.text("$.user_agent"),
        "model": f.text("$.model"),
        "stream": f"coalesce({param('stream')} = 'true', false)",
        "n": integer("$.params.n"),
        "max_tokens": f"CASE WHEN {completion} != 0 THEN {completion} ELSE {integer('$.params.max_tokens')} END",
        "temperature": number("$.params.temperature"),
        "top_p": number("$.params.top_p"),
        "seed": integer("$.params.seed"),
        "stop": (
            f"CASE WHEN {given('$.params.stop', 'VARCHAR')} THEN '[' || {f.json('$.params.stop')} || ']'"
            f" WHEN {given('$.params.stop', 'ARRAY')} THEN {f.json('$.params.stop')} END"
        ),
        "logprobs": (
            f"CASE WHEN {logprobs} = 'BOOLEAN' THEN {param('logprobs')} = 'true'"
            f" WHEN {logprobs} IN ('UBIGINT', 'BIGINT') THEN TRY_CAST({param('logprobs')} AS DOUBLE) != 0 END"
        ),
        "top_logprobs": integer("$.params.top_logprobs"),
        "parameters": (
            f"CASE WHEN {given('$.params', 'OBJECT')} AND {f.json('$.params')} != '{{}}' THEN {f.json('$.params')} END"
        ),
        "prompt": (
            f"CASE WHEN {given('$.messages', 'ARRAY')} THEN {f.json('$.messages')}"
            f" WHEN {given('$.prompt')} THEN '[' || {f.json('$.prompt')} || ']' END"
        ),
        "response_texts": (
            f"CASE WHEN {given('$.responses')} THEN {f.json('$.responses')}"
            f" WHEN {given('$.response')} THEN '[' || {f.json('$.response')} || ']' END"
        ),
        "finish_reasons": f"CASE WHEN {given('$.finish_reasons')} THEN {f.json('$.finish_reasons')} END",
        "prompt_tokens": integer("$.prompt_tokens"),
        "completion_tokens": integer("$.completion_tokens"),
        "latency_ms": number("$.latency_ms"),
        "request_id": f.text("$.id"),
        "extra": "extra",
    }
    for column, name in COLUMN_EXTRAS.items():
        if column not in columns:
            columns[column] = f.text(f"$.{name}")
    for column, default in COLUMN_DEFAULTS.items():
        columns[column] = f"coalesce(nullif({columns[column]}, ''), '{default}')"
    for column, length in MAX_LENGTHS.items():
        if column in columns:
            columns[column] = f"left({columns[column]}, {length})"
    return columns


def vetting_query(counting_tokens: bool) -> str:
    """SQL over a table `chunk(idx, line, text)`: the rows it vouches for, as batch columns (and `idx`)."""
    fields = Fields()
    v1 = schema()
    checks = [
        check
        for name, node in v1["properties"].items()
        for check in _schema_checks(fields, node, f"$.{name}", name in v1["required"])
    ]
    checks += _extra_checks(fields, counting_tokens)
    columns = _columns(fields)
    types = {field.name: field.type for field in batch_schema()}
    select = [
        f"CAST({columns[name]} AS {_duck_type(kind)}) AS {name}" for name, kind in types.items() if name != "line"
    ]
    return f"""
        WITH objects AS (
            SELECT idx, line, text FROM chunk WHERE regexp_matches(text, '{OBJECT_START}') AND json_valid(text)
        ), lists AS MATERIALIZED (
            SELECT idx, line, {fields.lists()}, json_keys(text) AS keys, {_extra()} AS extra FROM objects
        ), fields AS MATERIALIZED (
            SELECT idx, line, keys, extra, {fields.columns()} FROM lists
        )
        SELECT idx, line, {", ".join(select)} FROM fields WHERE {" AND ".join(checks)}
    """


def _extra() -> str:
    """SQL for the fields v1 does not name, as a JSON object's text (NULL if none): only rows with such
    fields pay for rewriting the row."""
    named = (*V1_FIELDS, *COLUMN_EXTRAS.values())
    named_nulls = "{" + ", ".join(f'"{name}": null' for name in named) + "}"
    return (
        f"CASE WHEN list_has_all([{', '.join(repr(name) for name in named)}], json_keys(text)) THEN NULL"
        f" ELSE nullif(json_merge_patch(text, '{named_nulls}'), '{{}}') END"
    )


def _duck_type(kind: pa.DataType) -> str:
    if pa.types.is_timestamp(kind):
        return "TIMESTAMPTZ"
    return {pa.int64(): "BIGINT", pa.float64(): "DOUBLE", pa.bool_(): "BOOLEAN", pa.string(): "VARCHAR"}[kind]


class Vetter:
    """Vets chunks of JSONL lines; one DuckDB connection for the whole import."""

    def __init__(self, *, counting_tokens: bool) -> None:
        self.duck = duckdb.connect()
        self.duck.execute("SET TimeZone = 'UTC'")
        self.duck.execute("SET threads = 1")  # measured: less memory, and no slower on a busy machine
        # Measured a third faster without these two rewrites: one pushes the checks into the `lists` CTE, where
        # they run a second time on list elements; the other turns each IN (...) of five names into a join.
        self.duck.execute("SET disabled_optimizers = 'cte_filter_pusher,in_clause'")
        self.prepared = False  # planning the query costs tens of milliseconds: once an import, not once a chunk
        self.counting_tokens = counting_tokens

    def vet(self, lines: list[int], texts: list[str]) -> tuple[pa.Table, list[int]]:
        """The rows vouched for, as a batch (`records.batch_schema`), and the positions of the others."""
        batches, others = [], []
        for start in range(0, len(texts), VET_ROWS):  # DuckDB's memory grows with the rows of one query
            batch, rest = self._vet(lines[start : start + VET_ROWS], texts[start : start + VET_ROWS])
            batches.append(batch)
            others += [start + i for i in rest]
        return pa.concat_tables(batches), others

    def _vet(self, lines: list[int], texts: list[str]) -> tuple[pa.Table, list[int]]:
        chunk = pa.table(
            {"idx": pa.array(range(len(texts)), pa.int64()), "line": pa.array(lines, pa.int64()), "text": texts}
        )
        # The prepared query reads the table `chunk`, whose rows are each chunk's in turn.
        self.duck.register("lines", chunk)
        try:
            self.duck.execute("CREATE OR REPLACE TEMP TABLE chunk AS SELECT * FROM lines")
            if not self.prepared:
                self.duck.execute(f"PREPARE vet AS {vetting_query(self.counting_tokens)}")
                self.prepared = True
            vetted = self.duck.sql("EXECUTE vet").to_arrow_table()
        finally:
            self.duck.unregister("lines")
        vouched = set(vetted.column("idx").to_pylist())
        batch = vetted.drop_columns(["idx"]).cast(batch_schema())
        return batch, [i for i in range(len(texts)) if i not in vouched]
