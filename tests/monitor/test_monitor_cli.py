"""`alambic monitor`: one JSON line per account (or tables), --until, --replay's first flags, the store as a
source, --act and --dry-run on a running gateway, --follow, and bad input in one line with exit code 2."""

import json
import re
from collections import Counter
from datetime import datetime, timedelta

import pytest
from monitor_traffic import HashedWords, counting, traffic, write
from sqlalchemy import select
from typer.testing import CliRunner

from alambic.cli import app
from alambic.logs.importer import LogImporter
from alambic.monitor.assess import assess, benign_units
from alambic.monitor.embeddings import EmbeddingCache
from alambic.monitor.risk import Reference, RiskOverSteps, surprise
from alambic.monitor.source import open_log
from alambic.simulate import Simulation, SimulationSettings, write_jsonl
from alambic.store import Store
from alambic.store.schema import Account

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def monitor(*args: str):
    return CliRunner().invoke(app, ["monitor", *args])


def lines(result) -> dict[str, dict]:
    assert result.exit_code == 0, result.output
    return {line["account"]: line for line in map(json.loads, result.stdout.splitlines())}


def calibrated(benign, cache: EmbeddingCache | None = None) -> Reference:
    """The risk `--reference` calibrates: the benign log's accounts, and its linked groups each as one account."""
    rows, groups, phrasing, _ = benign_units(open_log([benign]), cache)
    assert groups  # the log holds some (an organisation's keys, linked harnesses), so that they are tested
    return Reference(rows, groups=groups, phrasing=phrasing)


@pytest.fixture(scope="module")
def benign(tmp_path_factory):
    """A benign-only log to calibrate risk on."""
    out = tmp_path_factory.mktemp("benign") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=21, days=2, scale=0.1, campaigns=())), out)
    return out


@pytest.fixture
def given(monkeypatch) -> list:
    """`counted`'s scoring, recording the calibration over steps each scoring is given (None: per scoring)."""
    calibrations = []

    def recording(connection, reference=None, content=None, signatures=None, over_steps=None):
        calibrations.append(over_steps)
        return counting(connection)

    monkeypatch.setattr("alambic.monitor.assess.assess", recording)
    return calibrations


@pytest.fixture
def counted(monkeypatch):
    """The stand-in scoring (flag at 3 requests, block at 5), so that flag times are known."""
    monkeypatch.setattr("alambic.monitor.assess.assess", counting)


def test_every_account_gets_a_json_line_with_the_scorings_verdict(tmp_path, benign):
    log = tmp_path / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=22, days=2, scale=0.1, campaigns=("bulk",))), log)
    labels = json.loads((tmp_path / "labels.json").read_text())
    found = lines(monitor("--log", str(log), "--reference", str(benign), "--json"))
    assert set(found) == set(labels)
    for verdict in assess(open_log([log]), calibrated(benign)):
        line = found[verdict.account]
        assert (line["risk"], line["reasons"], line["campaign"], line["action"]) == (
            verdict.risk,
            list(verdict.reasons),
            verdict.campaign,
            verdict.action,
        )
    risks = [line["risk"] for line in found.values()]
    assert risks == sorted(risks, reverse=True)  # the riskiest first
    table = monitor("--log", str(log), "--reference", str(benign))
    assert table.exit_code == 0 and "Riskiest accounts" in table.stdout and "Campaigns" in table.stdout


def test_content_scores_prompt_topics_through_the_embedding_cache(tmp_path, benign, monkeypatch):
    monkeypatch.setenv("ALAMBIC_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.setattr("alambic.monitor.embeddings.minilm_encoder", HashedWords)
    log = tmp_path / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=22, days=2, scale=0.1, campaigns=("mimic",))), log)
    found = lines(monitor("--log", str(log), "--reference", str(benign), "--json", "--content"))
    cache = EmbeddingCache(HashedWords())
    reference = calibrated(benign, cache)
    assert "topic_coverage" in reference.features
    expected = {v.account: (v.risk, list(v.reasons)) for v in assess(open_log([log]), reference, cache)}
    assert {account: (line["risk"], line["reasons"]) for account, line in found.items()} == expected
    assert list((tmp_path / "cache" / "monitor").glob("prompt-embeddings-*/part-*.parquet"))


def test_until_scores_only_what_was_known_then(tmp_path, counted):
    log = write(tmp_path / "log.jsonl", traffic())[0]
    found = lines(monitor("--log", str(log), "--json", "--until", "2026-12-01T00:25:00Z"))
    assert {a: line["action"] for a, line in found.items()} == {"steady": "flag", "quiet": "none"}


def test_replay_adds_each_accounts_first_flag(tmp_path, counted, benign):
    log = write(tmp_path / "log.jsonl", traffic())[0]
    found = lines(monitor("--log", str(log), "--json", "--replay", "--step", "10m", "--reference", str(benign)))
    assert (found["steady"]["first_flag_time"], found["steady"]["requests_before_flag"]) == (
        "2026-12-01T00:20:00+00:00",
        3,
    )
    assert (found["quiet"]["first_flag_time"], found["quiet"]["requests_before_flag"]) == (None, None)
    assert found["steady"]["action"] == "block"  # the verdict on the whole log


def test_replay_judges_each_step_on_the_window_given_or_the_references_span(tmp_path, counted, benign):
    log = write(tmp_path / "log.jsonl", traffic())[0]
    args = ["--log", str(log), "--json", "--replay", "--step", "10m", "--reference", str(benign)]
    assert lines(monitor(*args, "--window", "15m"))["steady"]["first_flag_time"] is None  # two at most in 15 min
    assert lines(monitor(*args, "--window", "25m"))["steady"]["requests_before_flag"] == 3
    # the same benign traffic squeezed into 17 minutes: its accounts were judged on 17 minutes, and so is each step
    rows = [json.loads(line) for line in benign.read_text().splitlines()]
    times = [datetime.fromisoformat(r["time"]) for r in rows]
    first, span = min(times), max(times) - min(times)
    squeezed = [
        r | {"time": (first + (t - first) * (17 / (span / timedelta(minutes=1)))).isoformat()}
        for r, t in zip(rows, times, strict=True)
    ]
    short = write(tmp_path / "short.jsonl", squeezed)[0]
    args[-1] = str(short)
    assert lines(monitor(*args))["steady"]["first_flag_time"] is None
    assert lines(monitor(*args, "--window", "25m"))["steady"]["first_flag_time"] is not None


def test_replay_and_follow_calibrate_risk_over_the_steps_of_the_references_replay(tmp_path, benign, given):
    log = write(tmp_path / "log.jsonl", traffic())[0]
    args = ["--log", str(log), "--json", "--reference", str(benign)]
    lines(monitor(*args))
    assert given == [None]  # one scoring of the whole log: risk as calibrated
    given.clear()
    replayed = monitor(*args, "--replay", "--step", "6h", "--window", "30d")
    lines(replayed)
    # the reference replayed at the same step and window (its steps first, with no calibration), then the log's
    benign_rows = [json.loads(line) for line in benign.read_text().splitlines()]
    reference_steps = given.index(next(g for g in given if g is not None))
    assert reference_steps >= 8 and given[:reference_steps] == [None] * reference_steps  # two days of 6 h steps
    progress = replayed.stderr.replace("━", "")  # each replay's bar on stderr, with its steps
    assert f"the reference's replay (calibration)  {reference_steps}/{reference_steps} " in progress
    steps = len(given) - reference_steps  # the log's: 00:00 and 06:00
    assert steps == 2 and re.search(f"^replay  {steps}/{steps} ", progress, re.MULTILINE)
    over_steps = given[-1]
    assert isinstance(over_steps, RiskOverSteps) and all(g is over_steps for g in given[reference_steps:])
    counts = Counter(r["account"] for r in benign_rows)  # `counting` gives an account n / 10 at n requests
    assert sorted(over_steps.highest) == sorted(surprise(min(1.0, n / 10)) for n in counts.values())


def test_a_follower_keeps_its_references_replay_in_the_checkpoint_while_nothing_it_depends_on_changes(
    tmp_path, benign, given
):
    db = f"sqlite:///{tmp_path / 'store.db'}"
    LogImporter(Store(db)).import_files(write(tmp_path / "log.jsonl", traffic()))
    args = ["--db", db, "--follow", "--once", "--json", "--lag", "1s", "--checkpoint", str(tmp_path / "state")]
    args += ["--reference", str(benign)]
    kept = tmp_path / "state" / "risk-over-steps.json"
    replayed = {}
    for run, step in (("first", "6h"), ("again", "6h"), ("another step", "12h")):
        given.clear()
        lines(monitor(*args, "--step", step))
        # the reference's steps (the log's rows all lie before its first boundary, so it scores none), what was kept
        replayed[run] = (len(given), json.loads(kept.read_text())["key"])
    assert replayed["first"][0] >= 8 and replayed["again"] == (0, replayed["first"][1])  # read back, not replayed
    assert 4 <= replayed["another step"][0] < replayed["first"][0]  # a new setting: replayed at its own step
    assert replayed["another step"][1] != replayed["first"][1]


def test_the_store_is_read_as_the_file_is(tmp_path, counted):
    log = write(tmp_path / "log.jsonl", traffic())[0]
    db = f"sqlite:///{tmp_path / 'store.db'}"
    LogImporter(Store(db)).import_files([log])
    assert lines(monitor("--db", db, "--json")) == lines(monitor("--log", str(log), "--json"))


def test_act_blocks_and_the_running_gateway_refuses_the_next_request(gateway, monkeypatch):
    mallory, gina = gateway.key("mallory"), gateway.key("gina")
    for key in (mallory, gina):
        assert gateway.post("/v1/chat/completions", key, json=CHAT).status_code == 200

    def verdicts(connection, reference=None, content=None, signatures=None, over_steps=None):
        from alambic.monitor.verdict import Verdict

        return [
            Verdict("gina", 0.95, ("generates synthetic data for a small model",), None, "flag"),
            Verdict("mallory", 0.999, ("sent 8% of the prompts that 312 other accounts also sent",), "c1", "block"),
        ]

    monkeypatch.setattr("alambic.monitor.assess.assess", verdicts)
    db = gateway.store.url
    dry = monitor("--db", db, "--dry-run")
    assert dry.exit_code == 0 and "would mallory: block, policy allow -> block" in dry.stderr
    assert gateway.post("/v1/chat/completions", mallory, json=CHAT).status_code == 200  # a dry run changes nothing
    acted = monitor("--db", db, "--act", "--json")
    assert acted.exit_code == 0 and "2 actions taken" in acted.stderr
    refused = gateway.post("/v1/chat/completions", mallory, json=CHAT)
    assert (refused.status_code, refused.json()["error"]["code"]) == (403, "account_blocked")
    assert gateway.post("/v1/chat/completions", gina, json=CHAT).status_code == 200  # grey zone: flagged only
    assert "0 actions taken" in monitor("--db", db, "--act").stderr  # nothing twice


def test_follow_prints_each_first_flag_once_and_resumes(tmp_path, counted, benign):
    rows = traffic()
    db = f"sqlite:///{tmp_path / 'store.db'}"
    LogImporter(Store(db)).import_files(write(tmp_path / "first.jsonl", rows[:9]))
    args = ["--db", db, "--follow", "--once", "--json", "--step", "10m", "--lag", "1s"]
    args += ["--checkpoint", str(tmp_path / "state"), "--reference", str(benign)]
    first = lines(monitor(*args))
    assert {a: (line["first_flag_time"], line["requests_before_flag"]) for a, line in first.items()} == {
        "steady": ("2026-12-01T00:20:00+00:00", 3)
    }
    LogImporter(Store(db)).import_files(write(tmp_path / "second.jsonl", rows[9:]))
    resumed = monitor(*args, "--act")
    assert set(lines(resumed)) == {"late"}
    with Store(db).session() as session:
        policies = dict(session.execute(select(Account.name, Account.policy)).all())
    assert policies == {"steady": "block", "late": "allow", "quiet": "allow", "closer": "allow"}
    assert "late: flag, policy stays allow" in resumed.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([], "Give the log"),
        (["--log", "missing.jsonl"], "no such file"),
        (["--log", "LOG", "--until", "noon"], "--until: 'noon' is not an ISO 8601 time"),
        (["--log", "LOG", "--act"], "--act needs the store"),
        (["--log", "LOG", "--replay", "--step", "0m"], "--step: '0m' is not a duration"),
        (["--db", "DB", "--follow"], "--follow needs --checkpoint"),
        (["--db", "DB", "--follow", "--checkpoint", "x"], "--follow needs a benign --reference"),
        (["--log", "GARBAGE"], "could not be read"),
        (["--log", "LOG", "--reference", "LOG"], "--reference"),
        (["--log", "LOG", "--memory-limit", "lots"], "Memory limit 'lots'"),
        (["--log", "LOG", "--window", "1d"], "--window applies to --replay and --follow"),
        (["--log", "LOG", "--replay", "--window", "a week"], "--window: 'a week' is not a duration"),
        (["--log", "LOG", "--memory-limit", "1MB"], "do not fit in --memory-limit 1MB"),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(tmp_path, args, message):
    log = write(tmp_path / "log.jsonl", traffic())[0]
    garbage = tmp_path / "garbage.jsonl"
    garbage.write_text("not json at all\n")
    names = {"LOG": str(log), "GARBAGE": str(garbage), "DB": f"sqlite:///{tmp_path / 'x.db'}"}
    result = monitor(*[names.get(a, a) for a in args])
    assert result.exit_code == 2, result.output
    assert message in result.stderr and len(result.stderr.strip().splitlines()) == 1
