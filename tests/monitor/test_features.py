"""The feature pass: one row per account, every declared feature, values that say what each style does."""

from __future__ import annotations

import gc
import json
import random
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest
from monitor_traffic import MINUTE, START, row, write

from alambic.monitor.features import FEATURES, account_features
from alambic.monitor.source import connect, open_log
from alambic.simulate import Simulation, SimulationSettings, write_jsonl

ROWS_FOR_THREADS = 300_000  # DuckDB aggregates a log this long on several threads
ROWS_TO_SPILL, SPILLING_LIMIT = 300_000, "96MB"  # the pass over that many rows spills, on one thread, within that


@pytest.fixture(scope="module")
def features_by_style(tmp_path_factory):
    out = tmp_path_factory.mktemp("week") / "log.jsonl"
    settings = SimulationSettings(seed=12, days=5, scale=0.15, campaigns=("bulk", "chain-of-thought", "pivot"))
    write_jsonl(Simulation(settings), out)
    labels = json.loads((out.parent / "labels.json").read_text())
    features = account_features(open_log([out]))
    assert {f.account for f in features} == set(labels)
    by_style: dict[str, list[dict]] = {}
    for f in features:
        by_style.setdefault(labels[f.account]["style"], []).append(f.values)
    return by_style


def test_every_declared_feature_is_computed_for_every_account(features_by_style):
    for rows in features_by_style.values():
        for values in rows:
            assert list(values) == list(FEATURES)
            assert values["requests"] >= 1 and 0 <= values["single_turn_share"] <= 1


def test_features_describe_what_each_campaign_does(features_by_style):
    (bulk,) = features_by_style["bulk"]
    benign = sorted(
        v["requests_per_active_day"]
        for style, rows in features_by_style.items()
        for v in rows
        if style not in ("bulk", "chain-of-thought", "pivot")
    )
    assert bulk["requests_per_active_day"] > benign[int(0.95 * len(benign))] and bulk["long_answer_share"] == 1
    assert all(v["reasoning_cue_share"] == 1 for v in features_by_style["chain-of-thought"])
    assert all(v["reasoning_cue_share"] < 0.05 for v in features_by_style["person"])
    for pivot in features_by_style["pivot"]:
        assert pivot["newest_model_share"] == 1 and pivot["hours_to_newest_model"] < 6
    classify = features_by_style["integration-classify"]
    assert all(v["templated_share"] > 0.9 for v in classify if v["requests"] >= 20)


def _two_models(tmp_path, second_model_after: timedelta) -> dict[str, dict]:
    """Six accounts an hour apart from START on model `a`; three more on `b` from `second_model_after` on."""
    rows = [row(n, f"old-{n}", 60 * n) | {"model": "a"} for n in range(6)]
    late = second_model_after / MINUTE
    rows += [row(10 + n, f"new-{n}", late + 30 * n) | {"model": "b"} for n in range(3)]
    return {f.account: f.values for f in account_features(open_log(write(tmp_path / "log.jsonl", rows)))}


def test_a_model_first_seen_at_the_log_s_start_is_no_release(tmp_path):
    # A log known for hours only: every model in use appears in its first minutes, the last of them by chance.
    for values in _two_models(tmp_path, timedelta(minutes=10)).values():
        assert values["newest_model_share"] is None and values["hours_to_newest_model"] is None


def test_a_model_first_seen_a_day_into_the_log_is_a_release(tmp_path):
    found = _two_models(tmp_path, timedelta(days=1, hours=1))
    assert found["new-2"]["newest_model_share"] == 1 and found["new-2"]["hours_to_newest_model"] == 1
    assert found["old-0"]["newest_model_share"] == 0 and found["old-0"]["hours_to_newest_model"] is None


def test_a_prompt_counts_as_shared_when_another_account_sent_it(tmp_path):
    """Per account: the share of its requests whose prompt another account also sent (repeats by itself alone do
    not count), and its distinct prompts per request."""
    sent = [("a", "x"), ("a", "x"), ("a", "y"), ("a", "w"), ("a", "w"), ("b", "x"), ("c", "y"), ("c", "z"), ("c", "z")]
    rows = [row(n, account, n) | {"messages": [{"role": "user", "content": p}]} for n, (account, p) in enumerate(sent)]
    found = {f.account: f.values for f in account_features(open_log(write(tmp_path / "log.jsonl", rows)))}
    assert {a: v["shared_prompt_share"] for a, v in found.items()} == {"a": 3 / 5, "b": 1, "c": 1 / 3}
    assert {a: v["prompt_diversity"] for a, v in found.items()} == {"a": 3 / 5, "b": 1, "c": 2 / 3}


def test_answer_tokens_are_the_mean_completion_tokens_whatever_the_prompt_s_length(tmp_path):
    """What a harvest keeps is the answer: its mean length, which a long template around each prompt (the prompt
    tokens) leaves as it is, while it shrinks the answer-to-prompt ratio."""
    sent = [("a", 900, 300), ("a", 950, 350), ("b", 20, 30), ("b", 25, 10), ("b", 30, 20)]
    rows = [
        row(n, account, n) | {"prompt_tokens": prompt, "completion_tokens": completion}
        for n, (account, prompt, completion) in enumerate(sent)
    ]
    found = {f.account: f.values for f in account_features(open_log(write(tmp_path / "log.jsonl", rows)))}
    assert found["a"]["answer_tokens"] == 325 and found["b"]["answer_tokens"] == 20
    assert found["a"]["answer_prompt_ratio"] < found["b"]["answer_prompt_ratio"]


def test_answer_length_is_per_choice_so_that_several_samples_count_once(tmp_path):
    """A request asking for `n` samples is billed their tokens together (OpenAI's usage, the gateway's log): that it
    asked for several is `multi_sample_share`, and its answers are as long as one sample's, not n times longer."""
    sent = [("one", 1, 200), ("one", 1, 100), ("five", 5, 1000), ("five", 5, 500)]
    rows = [
        row(n, account, n) | {"params": {"n": choices}, "prompt_tokens": 50, "completion_tokens": completion}
        for n, (account, choices, completion) in enumerate(sent)
    ]
    found = {f.account: f.values for f in account_features(open_log(write(tmp_path / "log.jsonl", rows)))}
    for name in ("answer_tokens", "answer_prompt_ratio"):
        assert found["five"][name] == found["one"][name], name
    assert found["one"]["answer_tokens"] == 150 and found["one"]["answer_prompt_ratio"] == 3
    assert found["five"]["multi_sample_share"] == 1 and found["one"]["multi_sample_share"] == 0


def test_the_same_log_gives_the_same_features_to_the_last_bit(tmp_path):
    """Float sums add in whatever order DuckDB's threads meet: the timing and temperature features are summed
    exactly (whole microseconds, millionths of a temperature), so that a log large enough for several threads gives
    the same features every time (before: gap_cv, burstiness and mean_temperature a last bit apart)."""
    rng, path, t = random.Random(0), tmp_path / "log.jsonl", 0
    with open(path, "w") as out:
        for n in range(ROWS_FOR_THREADS):
            t += rng.randint(1, 5_000_000)
            time = (START + timedelta(microseconds=t)).isoformat()
            asked = row(n, f"a{n % 3}", 0) | {"time": time, "params": {"temperature": rng.random()}}
            out.write(json.dumps(asked) + "\n")
    connection = open_log([path])
    connection.execute("SET threads = 2")
    first, *others = [{f.account: f.values for f in account_features(connection)} for _ in range(3)]
    assert all(other == first for other in others)


def test_within_a_memory_limit_the_pass_spills_to_disk_and_gives_the_same_features(tmp_path):
    """The pass over this log does not fit in `SPILLING_LIMIT` on one thread (it fails with nowhere to spill to);
    within it, it spills and gives the features it gives without a limit."""
    path = write(tmp_path / "log.jsonl", [row(n, f"a{n % 3}", n) for n in range(ROWS_TO_SPILL)])[0]
    unbounded = {f.account: f.values for f in account_features(open_log([path]))}
    bounded = open_log([path], connect(SPILLING_LIMIT))
    bounded.execute("SET threads = 1")
    assert {f.account: f.values for f in account_features(bounded)} == unbounded
    bounded.execute("SET max_temp_directory_size = '0KB'")
    with pytest.raises(duckdb.OutOfMemoryException):
        account_features(bounded)


def test_a_memory_limit_bounds_duckdb_which_spills_into_a_directory_removed_with_the_connection():
    connection = connect("64MB")
    limit, spill = connection.execute(
        "SELECT current_setting('memory_limit'), current_setting('temp_directory')"
    ).fetchone()
    assert limit == "61.0 MiB" and Path(spill).is_dir()
    del connection
    gc.collect()
    assert not Path(spill).exists()
