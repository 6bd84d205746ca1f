"""The feature pass is written once: the same SQL, transpiled, gives the same features on Spark as on DuckDB."""

from __future__ import annotations

import shutil
import warnings

import pytest

from alambic.errors import InvalidRequestError
from alambic.monitor import features, source, spark
from alambic.simulate import Simulation, SimulationSettings, write_jsonl

pytest.importorskip("pyspark")
pytestmark = pytest.mark.skipif(shutil.which("java") is None, reason="Spark needs Java")


@pytest.fixture(scope="module")
def session():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # pyspark's note about pandas 3, which it is not given
        spark_session = spark.local_session()
    yield spark_session
    spark_session.stop()


def test_duckdb_and_spark_compute_the_same_features(tmp_path, session):
    log = tmp_path / "log.jsonl.gz"
    settings = SimulationSettings(seed=3, days=2, scale=0.05, campaigns=("bulk", "pivot", "chain-of-thought"))
    write_jsonl(Simulation(settings), log)
    on_duckdb = {f.account: f.values for f in features.account_features(source.open_log([log]))}
    spark.open_log(session, [log])
    on_spark = {f.account: f.values for f in spark.account_features(session)}

    assert on_spark.keys() == on_duckdb.keys() and len(on_duckdb) > 50
    for account, values in on_duckdb.items():
        assert list(on_spark[account]) == list(features.FEATURES)
        for name, value in values.items():
            expected = value if value is None else pytest.approx(value, rel=1e-9, abs=1e-9)
            assert on_spark[account][name] == expected, (account, name)


def test_spark_refuses_what_it_cannot_read(tmp_path, session):
    with pytest.raises(InvalidRequestError, match="JSONL"):
        spark.open_log(session, [tmp_path / "log.parquet"])


def test_times_keep_their_fraction_of_a_second():
    assert "UNIX_MICROS" in spark.to_spark("SELECT epoch(t) FROM requests")


def test_digests_of_text_are_64_bit_hashes_on_spark(session):
    """The pass compares text by DuckDB's `hash(md5_number(...))`; Spark has no md5_number, its `hash` 32 bits."""
    a, b = "hash(md5_number('a'))", "hash(md5_number('b'))"
    digests = f"SELECT {a} = {a} AS same, {a} <> {b} AS differ"
    assert "XXHASH64('a')" in spark.to_spark(digests)
    (row,) = session.sql(spark.to_spark(digests)).collect()
    assert row.same and row.differ
