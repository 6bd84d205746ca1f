"""The request log as one DuckDB relation, `requests`, read in place from v1 files (never loaded into Python)."""

from __future__ import annotations

import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path

import duckdb

from alambic.errors import InvalidRequestError

# v1 columns as DuckDB reads them; `time` may be ISO 8601 text or epoch seconds, so it is read as text.
V1_COLUMNS = {
    "id": "VARCHAR",
    "time": "VARCHAR",
    "account": "VARCHAR",
    "client_ip": "VARCHAR",
    "user_agent": "VARCHAR",
    "endpoint": "VARCHAR",
    "model": "VARCHAR",
    "messages": "JSON",
    "prompt": "JSON",
    "params": "JSON",
    "response": "VARCHAR",
    "prompt_tokens": "BIGINT",
    "completion_tokens": "BIGINT",
    "status": "INTEGER",
    "latency_ms": "DOUBLE",
}


TIME = "coalesce(TRY_CAST(time AS TIMESTAMPTZ), to_timestamp(TRY_CAST(time AS DOUBLE)))"
"""The request's time from v1's `time` (ISO 8601 text or epoch seconds); the same expression on every engine."""


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def connect(memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """A DuckDB connection. With `memory_limit` (DuckDB's units: "512MB", "2GB") its sorts, joins, aggregates and
    materialised tables spill past the limit to a temporary directory of its own (removed with the connection), so
    that a pass's memory is bounded by the limit, not by the log's length. What cannot spill counts against it too:
    reading JSONL takes ~40 MiB a thread."""
    connection = duckdb.connect()
    if memory_limit is not None:
        try:
            connection.execute(f"SET memory_limit = {_literal(memory_limit)}")
        except duckdb.Error as error:
            raise InvalidRequestError(f"Memory limit {memory_limit!r}: {str(error).splitlines()[0]}") from None
        spill = tempfile.mkdtemp(prefix="alambic-duckdb-")
        connection.execute(f"SET temp_directory = {_literal(spill)}")
        weakref.finalize(connection, shutil.rmtree, spill, ignore_errors=True)
    return connection


def open_log(
    paths: Sequence[Path], connection: duckdb.DuckDBPyConnection | None = None, name: str = "requests"
) -> duckdb.DuckDBPyConnection:
    """A connection with a view (`requests`, or `name`) over v1 JSONL (optionally gzipped) or Parquet files.

    Beside v1's columns: `t` the time (UTC), `turns` the messages as a list of (role, content) structs and
    `prompt_text` the completions prompt as text, the shapes the feature pass reads on every engine.
    """
    if not paths:
        raise InvalidRequestError("Name at least one request log file.")
    for path in paths:
        if not Path(path).is_file():
            raise InvalidRequestError(f"{path}: no such file.")
    connection = connection or connect()
    connection.execute("SET enable_progress_bar = false")
    files = "[" + ", ".join(_literal(str(p)) for p in paths) + "]"
    if all(str(p).endswith(".parquet") for p in paths):
        source = f"read_parquet({files}, union_by_name = true)"
    else:
        columns = "{" + ", ".join(f"{_literal(k)}: {_literal(v)}" for k, v in V1_COLUMNS.items()) + "}"
        source = f"read_json({files}, format = 'newline_delimited', columns = {columns})"
    connection.execute("SET TimeZone = 'UTC'")
    connection.execute(f"""
        CREATE OR REPLACE VIEW {name} AS
        SELECT *,
               {TIME} AS t,
               from_json(CAST(messages AS JSON), '[{{"role": "VARCHAR", "content": "VARCHAR"}}]') AS turns,
               json_extract_string(CAST(prompt AS JSON), '$') AS prompt_text
        FROM {source}
    """)
    return connection
