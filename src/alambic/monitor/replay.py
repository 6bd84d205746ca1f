"""The monitor in time: the log scored as it was known at each step, and each account's first flag.

`SteppedMonitor` reads a DuckDB relation (`log`, v1 rows with their time `t`) that only grows, and scores
it at step boundaries (multiples of `step` since the epoch, so every reader of the same traffic scores the
same prefixes): at boundary B, `requests` is every row with `t <= B`, or with a `window` W those with
`B - W < t <= B`, so that a step's work is bounded by the traffic of a window, not by the log's length.
Only boundaries that new rows fall before are scored. The tables every pass reads are kept from one step to the
next (`tables.WindowTables`): a step shapes only the rows that arrived since the last. An account first flagged at
B gets its latest request up to B as `first_flag_time` and its requests up to B as `requests_before_flag` (those
no longer in `log` counted in `earlier`), which is exact to one step; a flag, once raised, stays. `--replay` feeds
it a file, `--follow` a live store (`monitor.follow`): the same code, the same flag times.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta

import duckdb

from alambic.monitor.tables import WindowTables
from alambic.monitor.verdict import Verdict

Assess = Callable[[duckdb.DuckDBPyConnection], list[Verdict]]  # scores the `requests` relation and its tables


@dataclass(frozen=True)
class FirstFlag:
    time: datetime  # the account's latest request when the flag was raised
    requests: int  # its requests up to and including that one
    action: str  # what the verdict said then
    raised_at: datetime  # the step boundary it was raised at

    def to_json(self) -> dict:
        return {**asdict(self), "time": self.time.isoformat(), "raised_at": self.raised_at.isoformat()}

    @classmethod
    def from_json(cls, data: dict) -> FirstFlag:
        moments = {name: datetime.fromisoformat(data[name]) for name in ("time", "raised_at")}
        return cls(**{**data, **moments})


def micros(moment: datetime) -> int:
    return round(moment.timestamp() * 1_000_000)


class SteppedMonitor:
    def __init__(
        self,
        connection: duckdb.DuckDBPyConnection,
        assess: Assess,
        step: timedelta,
        *,
        log: str = "log",
        scored_until: int | None = None,
        flags: dict[str, FirstFlag] | None = None,
        window: timedelta | None = None,
        earlier: dict[str, int] | None = None,
        tables: bool = True,
    ) -> None:
        """`tables`: keep the tables the monitor's passes read (`tables.WindowTables`); a scoring that reads
        `requests` alone (a baseline) has no use for them."""
        if step <= timedelta(0) or (window is not None and window <= timedelta(0)):
            raise ValueError("the step and the window must be positive")
        self.connection = connection
        self.assess = assess
        self.step = step // timedelta(microseconds=1)
        self.window = window // timedelta(microseconds=1) if window is not None else None
        self.log = log
        self.scored_until = scored_until  # the last boundary scored, in microseconds since the epoch
        self.flags = dict(flags or {})
        self.earlier = dict(earlier or {})  # per account, its requests no longer in `log` (a follower's expired)
        self.latest: dict[str, Verdict] = {}  # per account, the verdict of the latest step that scored it
        self.highest: dict[str, float] = {}  # per account, its highest risk at any step scored (in this run)
        self.tables = WindowTables(log) if tables else None  # those of the last boundary scored (in this run)

    @property
    def verdicts(self) -> list[Verdict]:
        """Each account's latest verdict: with a window, an account quiet since is judged as it was last seen."""
        return list(self.latest.values())

    def advance(
        self, until: datetime | None = None, on_step: Callable[[int, int], None] | None = None
    ) -> list[tuple[Verdict, FirstFlag]]:
        """Score every boundary up to `until` (None: up to the one past the last row) that new rows fall before,
        calling `on_step(steps scored, steps in all)` after each; returns the accounts flagged for the first time,
        in the order they were."""
        raised = []
        boundaries = self._boundaries(until)
        for done, boundary in enumerate(boundaries, 1):
            raised += self._score(boundary)
            if on_step is not None:
                on_step(done, len(boundaries))
        return raised

    def _score(self, boundary: int) -> list[tuple[Verdict, FirstFlag]]:
        """Score the log as known at `boundary`; the accounts it flags for the first time."""
        since = boundary - self.window if self.window is not None else None
        known = f"SELECT * FROM {self.log} WHERE {_us('t')} <= {boundary}"
        if since is not None:
            known += f" AND {_us('t')} > {since}"
        self.connection.execute(f"CREATE OR REPLACE VIEW requests AS {known}")
        if self.tables is not None:
            self.tables.advance(self.connection, since, boundary)
        scored = self.assess(self.connection)
        self.latest.update((v.account, v) for v in scored)
        for v in scored:
            self.highest[v.account] = max(v.risk, self.highest.get(v.account, 0.0))
        self.scored_until = boundary
        fresh = {v.account: v for v in scored if v.action != "none" and v.account not in self.flags}
        if not fresh:
            return []
        rows = self.connection.execute(
            f"SELECT account, count(*), max({_us('t')}) FROM {self.log} WHERE {_us('t')} <= {boundary} "
            "AND account IN (SELECT unnest(?)) GROUP BY account",
            [list(fresh)],
        ).fetchall()
        seen = {account: (count, last) for account, count, last in rows}
        raised = []
        for account, verdict in fresh.items():
            if account in seen:
                count, last = seen[account]
                count += self.earlier.get(account, 0)
                self.flags[account] = flag = FirstFlag(_moment(last), count, verdict.action, _moment(boundary))
                raised.append((verdict, flag))
        return raised

    def _boundaries(self, until: datetime | None) -> list[int]:
        ceiling = f"(({_us('t')} + {self.step - 1}) // {self.step}) * {self.step}"
        where = [f"{_us('t')} > {self.scored_until}"] if self.scored_until is not None else ["t IS NOT NULL"]
        if until is not None:
            where.append(f"{ceiling} <= {micros(until)}")
        query = f"SELECT DISTINCT {ceiling} AS boundary FROM {self.log} WHERE {' AND '.join(where)} ORDER BY boundary"
        return [row[0] for row in self.connection.execute(query).fetchall()]


def highest_risks(
    connection: duckdb.DuckDBPyConnection,
    assess: Assess,
    step: timedelta,
    window: timedelta | None = None,
    on_step: Callable[[int, int], None] | None = None,
) -> list[float]:
    """Each account's highest risk over a replay of `log` (the same `step` and `window` as the monitor it
    calibrates): on a benign log, what `risk.RiskOverSteps` is fitted on. `on_step` as `SteppedMonitor.advance`'s."""
    monitor = SteppedMonitor(connection, assess, step, window=window)
    monitor.advance(on_step=on_step)
    return list(monitor.highest.values())


def campaign_requests_before_flag(monitor: SteppedMonitor, campaigns: dict[str, list[str]]) -> dict[str, int | None]:
    """For each campaign (its accounts), the requests all its accounts had sent by the step at which the first
    of them was flagged (None if none was): what it extracted before the monitor could stop it."""
    counts: dict[str, int | None] = {}
    for campaign, accounts in campaigns.items():
        flagged = [monitor.flags[a].raised_at for a in accounts if a in monitor.flags]
        if not flagged:
            counts[campaign] = None
            continue
        counts[campaign] = monitor.connection.execute(
            f"SELECT count(*) FROM {monitor.log} WHERE account IN (SELECT unnest(?)) AND {_us('t')} <= ?",
            [accounts, micros(min(flagged))],
        ).fetchone()[0]
    return counts


def _moment(microseconds: int) -> datetime:
    return datetime.fromtimestamp(0, UTC) + timedelta(microseconds=microseconds)


def _us(column: str) -> str:
    return f"epoch_us({column})"
