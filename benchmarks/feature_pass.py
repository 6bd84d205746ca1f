"""The monitor's feature pass over v1 log files in a process of its own, on one DuckDB thread, or its replay with a
window: rows/s and peak RSS.

    python benchmarks/feature_pass.py [--memory-limit 128MB] LOG...  the pass here: rows, accounts, seconds
    python benchmarks/feature_pass.py --measure [--memory-limit 128MB] LOG...  the same in a child, with its
                                                                               peak RSS (MiB)
    python benchmarks/feature_pass.py [--measure] --replay REFERENCE --step-hours H --window-hours W LOG...
        the replay instead, every step scored against a pickled benign `risk.Reference`

Linux keeps a process's peak RSS across exec, so a child started from a large process (a benchmark that has
loaded torch and simulated weeks) reports that process's peak as its own floor. `measure` therefore starts this
script, which imports only the standard library, and it starts the pass: the pass's floor is a bare interpreter.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from typing import NamedTuple


def feature_pass(logs: list[Path], memory_limit: str | None = None) -> dict:
    """The rows, accounts and seconds of `features.account_features` over `logs`, read in place, on one thread
    (within DuckDB's `memory_limit`, if given); its CPU seconds too, the one-core figure on a machine that other work
    shares (wall time waits for a core)."""
    from alambic.monitor.features import account_features
    from alambic.monitor.source import connect, open_log

    connection = open_log(logs, connect(memory_limit))
    connection.execute("SET threads = 1")
    rows = connection.execute("SELECT count(*) FROM requests").fetchone()[0]
    started, cpu_started = time.perf_counter(), time.process_time()
    accounts = len(account_features(connection))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "rows": rows,
        "accounts": accounts,
        "threads": 1,
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "cpu_seconds": cpu_seconds,
        "rows_per_cpu_s": rows / cpu_seconds,
        "memory_limit": memory_limit,
    }


class Replay(NamedTuple):
    reference: Path  # a pickled benign `risk.Reference`, fitted without content
    step_hours: float
    window_hours: float


def replay(logs: list[Path], settings: Replay, memory_limit: str | None = None) -> dict:
    """The rows, steps and seconds of the monitor's replay over `logs` read in place (`replay.SteppedMonitor` with a
    window, as `--follow` scores: each step over the window's rows), without content; its CPU seconds too."""
    from alambic.monitor.assess import assess
    from alambic.monitor.near_duplicates import Signatures
    from alambic.monitor.replay import SteppedMonitor
    from alambic.monitor.source import connect, open_log

    reference = pickle.loads(settings.reference.read_bytes())
    connection = open_log(logs, connect(memory_limit), name="log")
    rows = connection.execute("SELECT count(*) FROM log").fetchone()[0]
    signatures = Signatures()
    monitor = SteppedMonitor(
        connection,
        lambda c: assess(c, reference, None, signatures),
        timedelta(hours=settings.step_hours),
        window=timedelta(hours=settings.window_hours),
    )
    started, cpu_started = time.perf_counter(), time.process_time()
    steps: list[int] = []
    monitor.advance(on_step=lambda done, _: steps.append(done))
    seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
    return {
        "rows": rows,
        "steps": len(steps),
        "accounts": len(monitor.verdicts),
        "seconds": seconds,
        "rows_per_s": rows / seconds,
        "cpu_seconds": cpu_seconds,
        **settings._asdict(),
        "reference": settings.reference.name,
        "memory_limit": memory_limit,
    }


def _in_child(logs: list[str], options: list[str]) -> dict:
    """This script's pass in a child of this (small) process, with the child's peak RSS from `os.wait4`."""
    process = subprocess.Popen([sys.executable, __file__, *options, *logs], stdout=subprocess.PIPE, text=True)
    out = process.stdout.read()
    _, status, usage = os.wait4(process.pid, 0)
    if status != 0:
        raise RuntimeError(f"the pass over {logs} failed (status {status})")
    return {**json.loads(out), "peak_rss_mib": usage.ru_maxrss / 1024}


def measure(logs: list[Path], memory_limit: str | None = None, replaying: Replay | None = None) -> dict:
    """`feature_pass` (or, given `replaying`, `replay`) in a child started from a bare interpreter, with its peak RSS
    in MiB."""
    command = [sys.executable, __file__, "--measure", *_options(memory_limit, replaying), *map(str, logs)]
    return json.loads(subprocess.run(command, check=True, stdout=subprocess.PIPE, text=True).stdout)


def _options(memory_limit: str | None, replaying: Replay | None) -> list[str]:
    """This script's options for a child that runs it."""
    options = ["--memory-limit", memory_limit] if memory_limit else []
    if replaying is not None:
        options += ["--replay", str(replaying.reference), "--step-hours", str(replaying.step_hours)]
        options += ["--window-hours", str(replaying.window_hours)]
    return options


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", action="store_true", help="run the pass in a child; add its peak RSS")
    parser.add_argument("--memory-limit", help="DuckDB's memory limit for the pass (it spills past it)")
    parser.add_argument("--replay", type=Path, help="replay the logs against this pickled benign reference")
    parser.add_argument("--step-hours", type=float, default=12.0, help="the replay's step")
    parser.add_argument("--window-hours", type=float, default=168.0, help="the replay's window")
    parser.add_argument("logs", nargs="+")
    args = parser.parse_args()
    replaying = Replay(args.replay, args.step_hours, args.window_hours) if args.replay else None
    if args.measure:
        print(json.dumps(_in_child(args.logs, _options(args.memory_limit, replaying))))
    elif replaying is not None:
        print(json.dumps(replay([Path(p) for p in args.logs], replaying, args.memory_limit)))
    else:
        print(json.dumps(feature_pass([Path(p) for p in args.logs], args.memory_limit)))
