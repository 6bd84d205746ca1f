"""The request log as data, at a million rows: simulate, import (SQLite, PostgreSQL), export; rows/s and peak RSS.

Each step runs as a user would run it, `alambic ...` in its own process, so its peak RSS is its own; the
same steps on the same simulated world over two days instead of seven (the same accounts, ~a third of the
rows) show whether memory grows with the file's length (it must not).

    .venv/bin/python benchmarks/bench_log.py [--postgres URL] [--smoke]

`--smoke` runs every step on a sixtieth of the rows and writes no result: a check that the script runs.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# (scale, days): a simulated week holds ~398k requests at scale 1, so 2.52 makes a million; the short log is
# the same world's first two days.
SIZES = {"full": (2.52, 7), "two_days": (2.52, 2)}
SMOKE_SIZES = {"full": (0.04, 7), "two_days": (0.04, 2)}


def run(*args: str) -> tuple[float, float, str]:
    """Seconds, peak RSS in MiB and stderr of `alambic args` in its own process, started with nothing of an
    earlier step's left to write to disk."""
    os.sync()
    started = time.perf_counter()
    process = subprocess.Popen([sys.executable, "-m", "alambic", *args], stderr=subprocess.PIPE, text=True)
    stderr = process.stderr.read()
    _, status, usage = os.wait4(process.pid, 0)
    seconds = time.perf_counter() - started
    if status != 0:
        raise RuntimeError(f"alambic {' '.join(args)} failed:\n{stderr}")
    return seconds, usage.ru_maxrss / 1024, stderr


def rows_in(path: Path) -> int:
    with open(path, "rb") as handle:
        return sum(1 for _ in handle)


def measure(size: str, scale: float, days: int, directory: Path, postgres: str | None) -> dict:
    log = directory / f"{size}.jsonl"
    seconds, rss, _ = run("simulate", "--out", str(log), "--scale", str(scale), "--days", str(days), "--seed", "1")
    rows = rows_in(log)
    figures = {"rows": rows, "simulate": {"rows_per_s": rows / seconds, "peak_rss_mib": rss}}
    stores = {"sqlite": f"sqlite:///{directory / f'{size}.db'}"}
    if postgres:
        stores["postgresql"] = postgres
    for name, url in stores.items():
        seconds, rss, _ = run("log", "import", str(log), "--db", url, "--no-count-tokens")
        figures[f"import_{name}"] = {"rows_per_s": rows / seconds, "peak_rss_mib": rss}
    for suffix in ("jsonl", "parquet"):
        out = directory / f"{size}-export.{suffix}"
        seconds, rss, _ = run("log", "export", "--db", stores["sqlite"], "--out", str(out))
        figures[f"export_{suffix}"] = {"rows_per_s": rows / seconds, "peak_rss_mib": rss}
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--postgres", help="an empty PostgreSQL database's URL (each size gets its own schema)")
    parser.add_argument("--smoke", action="store_true", help="a sixtieth of the rows, no result written")
    args = parser.parse_args()
    sizes = SMOKE_SIZES if args.smoke else SIZES
    results = {}
    with tempfile.TemporaryDirectory(prefix="bench-log-") as directory:
        for size in ("two_days", "full"):
            postgres = _fresh_database(args.postgres, size) if args.postgres else None
            results[size] = measure(size, *sizes[size], Path(directory), postgres)
            print(size, results[size], flush=True)
    if args.smoke:
        return
    full, short = results["full"], results["two_days"]
    growth = {
        step: full[step]["peak_rss_mib"] / short[step]["peak_rss_mib"] for step in full if isinstance(full[step], dict)
    }
    # Imported only now: `common` loads torch, and a child forked from a process that big reports the parent's
    # peak RSS as its own floor (Linux keeps ru_maxrss across exec).
    from common import write_result

    write_result("log", {**results, "peak_rss_full_over_two_days": growth})


def _fresh_database(url: str, size: str) -> str:
    from sqlalchemy import create_engine, make_url, text

    name = f"alambic_bench_log_{size}"
    admin = create_engine(url, isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        connection.execute(text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    return make_url(url).set(database=name).render_as_string(hide_password=False)


if __name__ == "__main__":
    main()
