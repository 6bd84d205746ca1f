"""Replay and follow: the log scored as it was known at each step, each account's first flag with its own
requests up to it; a follower of a live store, restarted midway, gives the same flag times as a replay."""

import json
from datetime import timedelta

import pytest
from monitor_traffic import MINUTE, START, counting, row, traffic, write

from alambic.errors import InvalidRequestError
from alambic.logs.importer import LogImporter
from alambic.monitor.follow import Follower
from alambic.monitor.replay import FirstFlag, SteppedMonitor, campaign_requests_before_flag, highest_risks
from alambic.monitor.scoring import before_flag_by_style
from alambic.monitor.source import open_log


def replay(files, step: timedelta, window: timedelta | None = None) -> SteppedMonitor:
    monitor = SteppedMonitor(open_log(files, name="log"), counting, step, window=window)
    monitor.advance()
    return monitor


def returning() -> list[dict]:
    """`traffic()` and `returning`, once at 00:00 and three times from 02:30: flagged by a window of 25 minutes
    at 02:40, with its request of 00:00 counted."""
    rows = traffic() + [row(0, "returning", minutes) for minutes in (0, 150, 152, 154)]
    rows.sort(key=lambda r: r["time"])
    return [r | {"id": f"r{n}"} for n, r in enumerate(rows)]


def test_a_replay_flags_each_account_once_with_its_requests_up_to_the_flag(tmp_path):
    files = write(tmp_path / "log.jsonl", traffic())
    fine = replay(files, 10 * MINUTE)
    assert fine.flags == {
        "steady": FirstFlag(START + 20 * MINUTE, 3, "flag", START + 20 * MINUTE),
        "late": FirstFlag(START + 99 * MINUTE, 3, "flag", START + 100 * MINUTE),
    }
    coarse = replay(files, timedelta(hours=1)).flags  # exact to one step: the flag waits for the boundary
    assert coarse["steady"] == FirstFlag(START + 60 * MINUTE, 7, "block", START + 60 * MINUTE)
    assert "quiet" not in coarse
    assert {v.account: v.action for v in fine.verdicts} == {
        "closer": "none",
        "late": "flag",
        "quiet": "none",
        "steady": "block",
    }


def test_a_replay_says_how_far_it_is_after_each_step(tmp_path):
    monitor = SteppedMonitor(open_log(write(tmp_path / "log.jsonl", traffic()), name="log"), counting, 10 * MINUTE)
    steps = []
    monitor.advance(on_step=lambda done, total: steps.append((done, total)))
    assert steps == [(n, 13) for n in range(1, 14)]  # boundaries 00:00 to 01:50, and the closer's at 03:20
    assert monitor.advance(on_step=steps.append) == [] and len(steps) == 13  # nothing new, no step


def test_a_replay_keeps_each_accounts_highest_risk_at_any_step(tmp_path):
    files = write(tmp_path / "log.jsonl", traffic())
    windowed = replay(files, 10 * MINUTE, window=25 * MINUTE)  # `counting`: n / 10 at n requests in the window
    assert windowed.highest == {"steady": 0.3, "quiet": 0.1, "late": 0.3, "closer": 0.1}
    assert sorted(highest_risks(open_log(files, name="log"), counting, 10 * MINUTE)) == [0.1, 0.2, 0.3, 1.0]


def test_following_a_live_store_across_a_restart_gives_the_replays_flag_times(store, tmp_path):
    rows = traffic()
    expected = replay(write(tmp_path / "all.jsonl", rows), 10 * MINUTE).flags
    importer = LogImporter(store)
    half = len(rows) // 2
    importer.import_files(write(tmp_path / "first.jsonl", rows[:half]))
    checkpoint = tmp_path / "checkpoint"
    first = Follower(store, checkpoint, counting, 10 * MINUTE, lag=timedelta(0))
    raised = first.poll()
    assert [(v.account, flag.requests) for v, flag in raised] == [("steady", 3)]
    (checkpoint / "rows-000000000009999.jsonl").write_text(json.dumps(rows[0]) + "\n")  # left by a poll that died
    importer.import_files(write(tmp_path / "second.jsonl", rows[half:]))
    second = Follower(store, checkpoint, counting, 10 * MINUTE, lag=timedelta(0))  # a restart
    assert [v.account for v, _ in second.poll()] == ["late"]
    assert second.monitor.flags == expected
    assert second.connection.execute("SELECT count(*), count(DISTINCT id) FROM log").fetchone() == (len(rows),) * 2
    assert second.poll() == []


def test_a_follower_merges_its_batch_files_and_reads_each_row_once(sqlite_store, tmp_path, monkeypatch):
    monkeypatch.setattr("alambic.monitor.follow.MAX_FILES", 3)
    rows = traffic()
    importer = LogImporter(sqlite_store)
    checkpoint = tmp_path / "checkpoint"
    follower = Follower(sqlite_store, checkpoint, counting, 10 * MINUTE, lag=timedelta(0))
    for number, one in enumerate(rows):
        importer.import_files(write(tmp_path / f"{number}.jsonl", [one]))
        follower.poll()
    assert len(follower.files) <= 3 and sorted(p.name for p in checkpoint.glob("rows-*")) == sorted(follower.files)
    assert follower.connection.execute("SELECT count(*), count(DISTINCT id) FROM log").fetchone() == (len(rows),) * 2
    assert follower.monitor.flags == replay(write(tmp_path / "all.jsonl", rows), 10 * MINUTE).flags


def test_a_window_judges_each_account_on_its_last_window_and_keeps_its_flags(tmp_path):
    files = write(tmp_path / "log.jsonl", returning())
    windowed = replay(files, 10 * MINUTE, window=25 * MINUTE)
    assert windowed.flags == {
        "steady": FirstFlag(START + 20 * MINUTE, 3, "flag", START + 20 * MINUTE),  # never 5 in 25 minutes
        "late": FirstFlag(START + 99 * MINUTE, 3, "flag", START + 100 * MINUTE),
        "returning": FirstFlag(START + 154 * MINUTE, 4, "flag", START + 160 * MINUTE),  # its 00:00 counts
    }
    # every account, as the latest window that held it saw it: steady's (01:25 to 01:50) held three, not twelve
    assert {v.account: v.reasons for v in windowed.verdicts} == {
        "closer": ("sent 1 requests",),
        "late": ("sent 3 requests",),
        "quiet": ("sent 1 requests",),
        "returning": ("sent 3 requests",),
        "steady": ("sent 3 requests",),
    }
    assert "steady" not in replay(files, 10 * MINUTE, window=15 * MINUTE).flags  # two at most in 15 minutes
    assert replay(files, 10 * MINUTE).flags["steady"].action == "flag"  # the whole log: 00:00 to 00:20
    with pytest.raises(ValueError, match="window"):
        SteppedMonitor(open_log(files, name="log"), counting, MINUTE, window=timedelta(0))


def test_a_windowed_follower_keeps_only_the_rows_a_window_reaches_and_gives_the_replays_flags(
    sqlite_store, tmp_path, monkeypatch
):
    monkeypatch.setattr("alambic.monitor.follow.MAX_FILES", 3)
    rows, window = returning(), 25 * MINUTE
    importer = LogImporter(sqlite_store)
    checkpoint = tmp_path / "checkpoint"
    follower = Follower(sqlite_store, checkpoint, counting, 10 * MINUTE, lag=timedelta(0), window=window)
    for number, one in enumerate(rows):
        importer.import_files(write(tmp_path / f"{number}.jsonl", [one]))
        follower.poll()
    kept = follower.connection.execute("SELECT count(*) FROM log").fetchone()[0]
    assert kept < len(rows) and kept + sum(follower.monitor.earlier.values()) == len(rows)
    assert follower.monitor.flags == replay(write(tmp_path / "all.jsonl", rows), 10 * MINUTE, window).flags
    restarted = Follower(sqlite_store, checkpoint, counting, 10 * MINUTE, lag=timedelta(0), window=window)
    assert restarted.monitor.earlier == follower.monitor.earlier and restarted.monitor.flags == follower.monitor.flags
    for longer in (None, 30 * MINUTE):  # each would read rows that are gone
        with pytest.raises(InvalidRequestError, match="window of 0:25:00"):
            Follower(sqlite_store, checkpoint, counting, 10 * MINUTE, lag=timedelta(0), window=longer)
    Follower(sqlite_store, checkpoint, counting, 10 * MINUTE, lag=timedelta(0), window=20 * MINUTE)  # a shorter one


def test_a_campaigns_requests_before_its_first_flag_count_all_its_accounts(tmp_path):
    monitor = replay(write(tmp_path / "log.jsonl", traffic()), 10 * MINUTE)
    groups = {"pair": ["steady", "late"], "alone": ["late"], "unseen": ["quiet", "closer"]}
    # the pair is first flagged at the 00:20 step (steady's 3rd request), before late starts; late alone at the
    # 01:40 step, after its 3rd request (01:39)
    assert campaign_requests_before_flag(monitor, groups) == {"pair": 3, "alone": 3, "unseen": None}


def test_per_style_the_worst_campaign_counts_and_one_never_flagged_fails_the_target():
    counts = {"a": 12, "b": 900, "c": 1500, "d": None, "e": 40}
    style_of = {"a": "bulk", "b": "bulk", "c": "hydra", "d": "mimic", "e": "mimic"}
    assert before_flag_by_style(counts, style_of, target=1000) == {
        "bulk": {"requests_before_flag": 900, "campaigns": 2, "flagged_before_target": 2},
        "hydra": {"requests_before_flag": 1500, "campaigns": 1, "flagged_before_target": 0},
        "mimic": {"requests_before_flag": None, "campaigns": 2, "flagged_before_target": 1},
    }
