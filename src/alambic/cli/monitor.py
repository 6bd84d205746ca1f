"""`alambic monitor`: score the request log for extraction campaigns, replay or follow it, and act on it."""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from alambic.cli.common import app, console, duration, moment, one_line_errors
from alambic.errors import InvalidRequestError
from alambic.store import Store

RISK_OVER_STEPS = "risk-over-steps.json"  # in a follower's checkpoint: its reference's highest risks over the steps


@app.command()
@one_line_errors
def monitor(
    log: Annotated[
        list[Path] | None, typer.Option("--log", help="A v1 log file (.jsonl, .jsonl.gz, .parquet); repeatable.")
    ] = None,
    db: Annotated[
        str | None,
        typer.Option("--db", help="The store (SQLAlchemy URL): its log when no --log is given; where --act writes."),
    ] = None,
    reference: Annotated[
        list[Path] | None,
        typer.Option(
            help="A benign-only v1 log to calibrate risk on, and to learn the phrasing its crowds share (repeatable).",
            show_default="the log itself",
        ),
    ] = None,
    json_lines: Annotated[bool, typer.Option("--json", help="One JSON object per account and line.")] = False,
    until: Annotated[str | None, typer.Option(help="Score only what was known at this ISO 8601 time.")] = None,
    replay: Annotated[
        bool,
        typer.Option(
            help="Feed the rows in time order; add first_flag_time and requests_before_flag. With a --reference, "
            "risk is calibrated on its replay over the same steps (a flag, once raised, stays); without, per step."
        ),
    ] = False,
    follow: Annotated[bool, typer.Option(help="Follow the live store (--db), checkpointed in --checkpoint.")] = False,
    step: Annotated[str, typer.Option(help="--replay, --follow: score the log as known every STEP.")] = "1h",
    window: Annotated[
        str | None,
        typer.Option(
            help="--replay, --follow: judge each account at each step on the last WINDOW of the log (a flag, once "
            "raised, stays).",
            show_default="the time the --reference spans, over which its accounts were judged; without one, the "
            "whole log",
        ),
    ] = None,
    checkpoint: Annotated[Path | None, typer.Option(help="--follow: the directory holding its state.")] = None,
    lag: Annotated[str, typer.Option(help="--follow: score a step once the newest row is LAG past it.")] = "5m",
    poll: Annotated[float, typer.Option(min=0.1, help="--follow: seconds between reads of the store.")] = 5.0,
    once: Annotated[bool, typer.Option(help="--follow: read and score what is there, then stop.")] = False,
    act: Annotated[bool, typer.Option(help="Write flags and policy changes into the store (--db).")] = False,
    dry_run: Annotated[bool, typer.Option(help="Show what --act would change, and change nothing.")] = False,
    throttle_rpm: Annotated[int, typer.Option(min=1, help="Requests per minute left to a throttled account.")] = 10,
    memory_limit: Annotated[
        str | None,
        typer.Option(help="DuckDB's memory for the log's SQL passes (512MB, 2GB); past it they spill to disk."),
    ] = None,
    top: Annotated[int, typer.Option(min=1, help="Rows of the tables (without --json).")] = 20,
    content: Annotated[
        bool,
        typer.Option(
            help="Score what the prompts ask too (topic coverage from sentence embeddings of up to 16 prompts an "
            "account, cached by text under the cache directory); the --reference is read the same way."
        ),
    ] = False,
) -> None:
    """Find extraction campaigns in the request log: each account's risk, reasons, campaign and action."""
    if act and dry_run:
        raise InvalidRequestError("Give --act or --dry-run, not both.")
    for needs_store, option in ((follow, "--follow"), (act, "--act"), (dry_run, "--dry-run")):
        if needs_store and db is None:
            raise InvalidRequestError(f"{option} needs the store: --db URL.")
    if not log and db is None:
        raise InvalidRequestError("Give the log: --log FILE (repeatable) or --db URL.")
    if follow and (log or replay or until):
        raise InvalidRequestError("--follow reads the store (--db) as it grows: no --log, --replay or --until.")
    if follow and checkpoint is None:
        raise InvalidRequestError("--follow needs --checkpoint DIR to keep its state across restarts.")
    if follow and not reference:
        raise InvalidRequestError("--follow needs a benign --reference log: the live log is too young to calibrate on.")
    if window is not None and not (replay or follow):
        raise InvalidRequestError("--window applies to --replay and --follow, which score the log step by step.")
    step_length, known_at = duration("--step", step), moment("--until", until)
    window_length = duration("--window", window) if window is not None else None
    if memory_limit is not None:
        from alambic.monitor.source import connect

        connect(memory_limit).close()  # a limit DuckDB cannot read is bad input, before any work
    store = Store(db, create=False) if db is not None else None  # a store that is not there fails before any work
    with _memory_bounded(memory_limit):
        embeddings = _embeddings() if content else None
        benign, over_steps = None, None
        if reference:
            benign, units, connection, span = _reference(reference, embeddings, memory_limit)
            if window_length is None and span:  # a reference of one instant judged its accounts on no time at all
                window_length = span
            if replay or follow:
                kept = checkpoint if follow else None
                over_steps = _over_steps(benign, units, connection, embeddings, step_length, window_length, kept)
        acting = Acting(store, act, throttle_rpm) if act or dry_run else None
        out = Console(soft_wrap=True)
        if follow:
            from alambic.monitor.follow import Follower

            follower = Follower(
                store,
                checkpoint,
                _assess(benign, embeddings, over_steps),
                step_length,
                duration("--lag", lag),
                memory_limit,
                window_length,
            )
            _follow(follower, poll, once, json_lines, acting)
            return
        with ExitStack() as stack:
            connection = _open(log, store, known_at, stack, memory_limit)
            flags = {}
            connection.execute("CREATE OR REPLACE VIEW requests AS SELECT * FROM log")
            if replay:
                from alambic.monitor.replay import SteppedMonitor

                # Without a benign reference, calibrated on the whole log (the early steps are too few to), per step.
                stepped = SteppedMonitor(
                    connection,
                    _assess(benign or _self_calibrated(connection, embeddings), embeddings, over_steps),
                    step_length,
                    window=window_length,
                )
                with _steps("replay") as on_step:
                    stepped.advance(on_step=on_step)
                verdicts, flags = stepped.verdicts, stepped.flags
            else:
                verdicts = _assess(benign, embeddings)(connection)
    verdicts = sorted(verdicts, key=lambda v: (-v.risk, v.account))
    if json_lines:
        for verdict in verdicts:
            print(json.dumps(_line(verdict, flags if replay else None), ensure_ascii=False))
    else:
        _tables(out, verdicts, flags if replay else None, top)
    if acting:
        acting.on(verdicts)


@contextmanager
def _memory_bounded(memory_limit: str | None) -> Iterator[None]:
    """DuckDB running out of memory (within `memory_limit`, or the machine's) as a one-line error."""
    import duckdb

    try:
        yield
    except duckdb.OutOfMemoryException as error:
        within = f"--memory-limit {memory_limit}" if memory_limit else "the memory DuckDB may take"
        raise InvalidRequestError(
            f"The log's SQL passes do not fit in {within} ({str(error).splitlines()[0]}): raise it (reading "
            "JSONL takes ~40 MiB a DuckDB thread, one a core; prompts and their near-duplicates grow with the "
            "distinct prompts)."
        ) from None


@contextmanager
def _steps(label: str) -> Iterator[Callable[[int, int], None]]:
    """A progress bar over a replay's steps, on stderr: what `SteppedMonitor.advance` calls after each."""
    columns = (TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console) as progress:
        task = progress.add_task(label, total=None)
        yield lambda done, steps: progress.update(task, completed=done, total=steps)


def _open(files: list[Path] | None, store, until: datetime | None, stack: ExitStack, memory_limit: str | None):
    """A DuckDB connection (`memory_limit`: `source.connect`) whose `log` view holds the rows to score (those up
    to `until`)."""
    import duckdb

    from alambic.monitor.source import connect, open_log

    if not files:  # the store's log, through a Parquet export (DuckDB's own readers need no extension)
        from alambic.logs.exporter import export_log

        files = [Path(stack.enter_context(tempfile.TemporaryDirectory())) / "log.parquet"]
        if export_log(store, files[0]) == 0:
            raise InvalidRequestError("The store's request log is empty.")
    connection = open_log(files, connect(memory_limit), name="source")
    limit = f"WHERE t <= TIMESTAMPTZ '{until.isoformat()}'" if until is not None else ""
    connection.execute(f"CREATE OR REPLACE VIEW log AS SELECT * FROM source {limit}")
    try:
        connection.execute("SELECT count(*) FROM log").fetchone()
    except duckdb.OutOfMemoryException:
        raise  # `_memory_bounded` says it
    except Exception as error:  # a file DuckDB cannot read as v1: its message, in one line
        raise InvalidRequestError(f"The log could not be read: {str(error).splitlines()[0]}") from None
    return connection


def _embeddings():
    """The prompt-embedding cache `--content` reads and grows."""
    from alambic.monitor.embeddings import EmbeddingCache, encoder_key
    from alambic.paths import cache_dir

    return EmbeddingCache(path=cache_dir() / "monitor" / f"prompt-embeddings-{encoder_key()}")


def _assess(reference, embeddings, over_steps=None):
    """The scoring, against `reference` (None: the log itself) and `over_steps` (`risk.RiskOverSteps`), keeping the
    prompts' signatures from one scoring of a growing log to the next; a log too small to calibrate on is bad input."""
    import alambic.monitor.assess as assessing
    from alambic.monitor.near_duplicates import Signatures

    signatures = Signatures()

    def assess(connection):
        try:
            return assessing.assess(connection, reference, embeddings, signatures, over_steps)
        except ValueError as error:  # too few accounts to calibrate risk on
            raise InvalidRequestError(f"{error}; give a benign --reference log.") from None

    return assess


def _reference(files: list[Path], embeddings, memory_limit: str | None) -> tuple:
    """Risk calibrated on a benign log's accounts and on its linked groups, each taken as one account, with its common
    phrasing; what the log gave it (`assess.BenignUnits`), the log (as `log` and `requests`), and the time it spans,
    over which its accounts were judged."""
    from alambic.monitor.assess import benign_units
    from alambic.monitor.source import connect, open_log

    connection = open_log(files, connect(memory_limit), name="log")
    connection.execute("CREATE OR REPLACE VIEW requests AS SELECT * FROM log")
    units = benign_units(connection, embeddings)
    span = connection.execute("SELECT epoch_us(max(t)) - epoch_us(min(t)) FROM log").fetchone()[0]
    reference = _calibrated(units.rows, "--reference", groups=units.groups, phrasing=units.phrasing)
    return reference, units, connection, timedelta(microseconds=span)


def _over_steps(
    reference, units, connection, embeddings, step: timedelta, window: timedelta | None, kept: Path | None = None
):
    """Risk over the steps of a replay: the reference log replayed as the monitor will step (`step`, `window`), each
    of its accounts compared with the others only, and calibrated on how high their risk climbs. With `kept` (a
    follower's checkpoint), those highest risks are kept there and read back while the reference's accounts, the
    settings and the monitor's code are the same (a follower run `--once` at a time need not replay it each time)."""
    import alambic.monitor
    from alambic.monitor.replay import highest_risks
    from alambic.monitor.risk import RiskOverSteps
    from alambic.paths import fingerprint

    settings = {"reference": [units.accounts, units.rows, units.groups], "content": embeddings is not None}
    settings |= {"step": step, "window": window}
    key = fingerprint(settings, Path(alambic.monitor.__file__).parent)
    path = kept / RISK_OVER_STEPS if kept is not None else None
    if path is not None and path.is_file() and (found := json.loads(path.read_text()))["key"] == key:
        return RiskOverSteps(found["highest"])
    own_excluded = _assess(reference.excluding_own(units.accounts), embeddings)
    with _steps("the reference's replay (calibration)") as on_step:
        highest = highest_risks(connection, own_excluded, step, window, on_step)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.with_suffix(".tmp").write_text(json.dumps({"key": key, "highest": highest}))
        path.with_suffix(".tmp").replace(path)
    return RiskOverSteps(highest)


def _calibrated(rows: list, what: str, accounts: list | None = None, groups: list = (), phrasing=None):
    """A `Reference` on `rows` (see there), or bad input when they are too few."""
    from alambic.monitor.risk import Reference

    try:
        return Reference(rows, accounts, groups, phrasing)
    except ValueError as error:
        raise InvalidRequestError(f"{what}: {error}.") from None


def _self_calibrated(connection, embeddings):
    """Risk calibrated on the log's own accounts, each compared with the others only."""
    from alambic.monitor.assess import feature_rows

    rows = feature_rows(connection, embeddings)
    return _calibrated(list(rows.values()), "the log", list(rows))


def _line(verdict, flags: dict | None) -> dict:
    line = {
        "account": verdict.account,
        "risk": verdict.risk,
        "reasons": list(verdict.reasons),
        "campaign": verdict.campaign,
        "action": verdict.action,
    }
    if flags is not None:
        flag = flags.get(verdict.account)
        line["first_flag_time"] = flag.time.isoformat() if flag else None
        line["requests_before_flag"] = flag.requests if flag else None
    return line


def _tables(out: Console, verdicts: list, flags: dict | None, top: int) -> None:
    accounts = Table("account", "risk", "action", "campaign", "why", title=f"Riskiest accounts (of {len(verdicts):,})")
    if flags is not None:
        accounts.add_column("first flagged")
        accounts.add_column("requests before")
    for v in verdicts[:top]:
        row = [v.account, f"{v.risk:.3f}", v.action, v.campaign or "", "; ".join(v.reasons[:2])]
        if flags is not None:
            flag = flags.get(v.account)
            row += [f"{flag.time:%Y-%m-%d %H:%M}", f"{flag.requests:,}"] if flag else ["", ""]
        accounts.add_row(*row)
    out.print(accounts)
    campaigns: dict[str, list] = {}
    for v in verdicts:
        if v.campaign is not None:
            campaigns.setdefault(v.campaign, []).append(v)
    table = Table("campaign", "accounts", "risk", "actions", "why", title=f"Campaigns ({len(campaigns):,})")
    ranked = sorted(campaigns.items(), key=lambda item: (-max(v.risk for v in item[1]), item[0]))
    for campaign, members in ranked[:top]:
        actions = ", ".join(f"{a} {sum(v.action == a for v in members)}" for a in sorted({v.action for v in members}))
        riskiest = max(members, key=lambda v: v.risk)
        table.add_row(campaign, f"{len(members):,}", f"{riskiest.risk:.3f}", actions, "; ".join(riskiest.reasons[:2]))
    out.print(table)


@dataclass(frozen=True)
class Acting:
    """--act (write) or --dry-run (only say): what acting on the verdicts changes, on stderr."""

    store: Store
    write: bool
    throttle_rpm: int

    def on(self, verdicts: list) -> None:
        from alambic.monitor.actions import apply_actions, plan_actions

        planned = plan_actions(self.store, verdicts, throttle_rpm=self.throttle_rpm)
        for action in planned:
            line = ("" if self.write else "would ") + action.describe()
            console.print(line, highlight=False, markup=False, soft_wrap=True)
        if self.write:
            apply_actions(self.store, planned)
        console.print(f"{len(planned):,} actions {'taken' if self.write else 'to take (dry run)'}", highlight=False)


def _follow(follower, poll: float, once: bool, json_lines: bool, acting: Acting | None) -> None:
    """Poll the store until interrupted (or once): each account flagged for the first time is printed as it is;
    with --act or --dry-run the latest verdicts are acted on after each poll."""
    scored = follower.monitor.scored_until
    try:
        while True:
            for verdict, flag in follower.poll():
                line = _line(verdict, {verdict.account: flag})
                if json_lines:
                    print(json.dumps(line, ensure_ascii=False), flush=True)
                else:
                    console.print(
                        f"{flag.time:%Y-%m-%d %H:%M:%S} {verdict.account} {verdict.action} (risk {verdict.risk:.3f}, "
                        f"{flag.requests:,} requests): {'; '.join(verdict.reasons[:2])}",
                        highlight=False,
                        markup=False,
                    )
            if acting and follower.monitor.scored_until != scored:  # a step scored: act on its verdicts
                acting.on(follower.monitor.verdicts)
            scored = follower.monitor.scored_until
            if once:
                return
            time.sleep(poll)
    except KeyboardInterrupt:
        return
