"""The feature pass on Spark, for logs that outgrow one machine: the same SQL as on DuckDB, transpiled.

`features.ACCOUNT_FEATURES` is written once, in the subset of DuckDB's SQL that SQLGlot carries over to Spark;
only reading the files differs. Two time functions are spelled out here because SQLGlot's defaults round
them to whole seconds on Spark, and the digest of text, `hash(md5_number(...))`, which Spark lacks.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

import sqlglot
from sqlglot import exp
from sqlglot.dialects.spark import Spark

from alambic.errors import InvalidRequestError
from alambic.monitor.features import ACCOUNT_FEATURES, AccountFeatures
from alambic.monitor.source import TIME, V1_COLUMNS

if TYPE_CHECKING:
    from pyspark.sql import SparkSession

SPARK_TYPES = {"VARCHAR": "STRING", "JSON": "STRING", "BIGINT": "BIGINT", "INTEGER": "INT", "DOUBLE": "DOUBLE"}
TURNS = "ARRAY<STRUCT<role: STRING, content: STRING>>"


class MonitorSpark(Spark):
    """Spark SQL with epoch times to the microsecond, as DuckDB has them, and its 64-bit digest of text."""

    class Generator(Spark.Generator):
        TRANSFORMS: ClassVar[dict] = {
            **Spark.Generator.TRANSFORMS,
            exp.TimeToUnix: lambda self, e: f"(UNIX_MICROS({self.sql(e, 'this')}) / 1e6)",
            exp.UnixToTime: lambda self, e: f"TIMESTAMP_MICROS(CAST({self.sql(e, 'this')} * 1e6 AS BIGINT))",
            exp.Anonymous: lambda self, e: _digest(self, e),
        }


def _digest(generator: Spark.Generator, call: exp.Anonymous) -> str:
    """The pass's 64-bit digest of text, DuckDB's `hash(md5_number(text))`, as Spark's `xxhash64(text)`: Spark
    has no `md5_number`, and its `hash` (32 bits) collides among a million prompts. Only equality is compared."""
    digested = call.expressions[0] if call.name.lower() == "hash" and len(call.expressions) == 1 else None
    if isinstance(digested, exp.Anonymous) and digested.name.lower() == "md5_number":
        return generator.func("XXHASH64", *digested.expressions)
    return generator.anonymous_sql(call)


def to_spark(sql: str) -> str:
    """One DuckDB statement in Spark's dialect."""
    return sqlglot.transpile(sql, read="duckdb", write=MonitorSpark)[0]


def local_session(cores: int = 1) -> SparkSession:
    """A local Spark with the settings the feature pass assumes: UTC, and NULL (not an error) off an array's end."""
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(f"local[{cores}]")
        .appName("alambic-monitor")
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.sql.ansi.enabled", "false")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.shuffle.partitions", str(2 * cores))
        .getOrCreate()
    )


def open_log(spark: SparkSession, paths: Sequence[Path]) -> None:
    """Register `requests` over v1 JSONL files (optionally gzipped), with the columns `source.open_log` adds."""
    if not paths or any(str(p).endswith(".parquet") for p in paths):
        raise InvalidRequestError("The Spark feature pass reads v1 JSONL files (.jsonl or .jsonl.gz).")
    schema = ", ".join(f"`{name}` {SPARK_TYPES[kind]}" for name, kind in V1_COLUMNS.items())
    spark.read.schema(schema).json([str(p) for p in paths]).createOrReplaceTempView("requests_raw")
    spark.sql(
        f"CREATE OR REPLACE TEMP VIEW requests AS SELECT *, {to_spark(f'SELECT {TIME}')[len('SELECT ') :]} AS t, "
        f"from_json(messages, '{TURNS}') AS turns, prompt AS prompt_text FROM requests_raw"
    )


def account_features(spark: SparkSession) -> list[AccountFeatures]:
    """`features.account_features` on Spark: every account's features, in account order."""
    frame = spark.sql(to_spark(ACCOUNT_FEATURES))
    names = frame.columns
    return [
        AccountFeatures(row[0], {name: _plain(value) for name, value in zip(names[1:], row[1:], strict=True)})
        for row in frame.collect()
    ]


def _plain(value: object) -> float | int | None:
    return None if value is None else value if isinstance(value, int) else float(value)
