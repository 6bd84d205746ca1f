"""The request log as one DuckDB relation, `requests`, read in place from v1 files (never loaded into Python)."""

from __future__ import annotations

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
    connection = connection or duckdb.connect()
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
