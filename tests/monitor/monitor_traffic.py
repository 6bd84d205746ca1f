"""A small log whose flag times are known, a stand-in for the scoring that flags by request count, and one for
the sentence encoder; a log opened with its prompt tables."""

import json
from datetime import UTC, datetime, timedelta

import duckdb
import numpy as np
from sklearn.feature_extraction.text import HashingVectorizer

from alambic.monitor.source import open_log
from alambic.monitor.tables import load_tables
from alambic.monitor.verdict import Verdict

START = datetime(2026, 12, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)


class HashedWords:
    """A cheap stand-in for the sentence encoder (hashed bag of words and word pairs); counts the texts it encodes."""

    def __init__(self) -> None:
        self.vectorizer = HashingVectorizer(n_features=512, ngram_range=(1, 2), norm="l2", alternate_sign=False)
        self.texts = 0

    def __call__(self, texts: list[str]) -> np.ndarray:
        self.texts += len(texts)
        return self.vectorizer.transform(texts).toarray().astype(np.float32)


def opened(files, connection: duckdb.DuckDBPyConnection | None = None) -> duckdb.DuckDBPyConnection:
    """The log's `requests` and the tables every pass reads (`tables.load_tables`)."""
    connection = open_log(files, connection)
    load_tables(connection)
    return connection


def counting(
    connection: duckdb.DuckDBPyConnection, reference=None, content=None, signatures=None, over_steps=None
) -> list[Verdict]:
    """A stand-in for the scoring: flag an account at 3 requests, block it at 5."""
    counts = connection.execute("SELECT account, count(*) FROM requests GROUP BY account ORDER BY account").fetchall()
    action = {n: "block" if n >= 5 else "flag" if n >= 3 else "none" for _, n in counts}
    return [Verdict(account, min(1.0, n / 10), (f"sent {n} requests",), None, action[n]) for account, n in counts]


def row(number: int, account: str, minutes: float) -> dict:
    return {
        "id": f"r{number}",
        "time": (START + minutes * MINUTE).isoformat(),
        "account": account,
        "endpoint": "/v1/chat/completions",
        "status": 200,
        "messages": [{"role": "user", "content": f"question {number}"}],
    }


def traffic() -> list[dict]:
    """`steady` every 10 minutes from 00:00 to 01:50, `quiet` twice, `late` three times from 01:31, then
    `closer` once, which closes the last step."""
    times = [("steady", 10 * i) for i in range(12)] + [("quiet", 5), ("quiet", 45)]
    times += [("late", 91), ("late", 95), ("late", 99), ("closer", 200)]
    return [row(n, account, minutes) for n, (account, minutes) in enumerate(sorted(times, key=lambda x: x[1]))]


def write(path, rows) -> list:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return [path]
