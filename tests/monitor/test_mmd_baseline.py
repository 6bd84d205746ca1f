"""The MMD window test per account, a baseline: windows of an account's prompts against benign traffic, with
p-values from benign accounts' windows only."""

from __future__ import annotations

import json
import random

import numpy as np
import pytest
from monitor_traffic import HashedWords, opened, row, write

from alambic.monitor.content import SAMPLE, account_content
from alambic.monitor.embeddings import EmbeddingCache
from alambic.monitor.mmd_baseline import MmdBaseline, Window, account_windows
from alambic.monitor.source import open_log
from alambic.simulate import Simulation, SimulationSettings, write_jsonl
from alambic.simulate.text import DOMAINS, TextBank
from alambic.simulate.text import TASKS as TASK_TEMPLATES


def _topics(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    rows = centres[rng.integers(len(centres), size=n)] + 0.3 * rng.standard_normal((n, centres.shape[1]))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _benign_windows(
    rng: np.random.Generator, centres: np.ndarray, accounts: int, rows: int = 32
) -> dict[str, list[Window]]:
    return {f"benign-{i}": [Window(f"benign-{i}", 0, 100, _topics(rng, centres, rows))] for i in range(accounts)}


def test_a_window_drawn_from_the_reference_has_mmd_near_zero_and_a_shifted_one_a_large_mmd():
    rng = np.random.default_rng(0)
    benign, elsewhere = rng.standard_normal((20, 16)), rng.standard_normal((20, 16))
    baseline = MmdBaseline.calibrate(_benign_windows(rng, benign, 200, rows=40))
    same = baseline.statistic(_topics(rng, benign, 300))
    shifted = baseline.statistic(_topics(rng, elsewhere[:3], 300))
    assert abs(same) < 0.01 and shifted > 0.1
    assert baseline.p_value(Window("x", 0, 300, _topics(rng, elsewhere[:3], 32))) < 0.01


def test_the_p_values_of_fresh_benign_windows_are_about_uniform():
    rng = np.random.default_rng(1)
    centres = rng.standard_normal((20, 16))
    baseline = MmdBaseline.calibrate(_benign_windows(rng, centres, 400))
    p = np.array([baseline.p_value(w) for (w,) in _benign_windows(rng, centres, 200).values()])
    assert 0.05 <= np.mean(p <= 0.1) <= 0.15 and 0.35 <= np.mean(p <= 0.5) <= 0.65


def test_too_few_benign_windows_to_calibrate_on_is_an_error():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="20 tested benign windows"):
        MmdBaseline.calibrate(_benign_windows(rng, rng.standard_normal((5, 8)), 30))


@pytest.fixture(scope="module")
def weeks(tmp_path_factory):
    """A benign-only week to calibrate on; a week with campaigns to score, and the same week without them."""
    directory = tmp_path_factory.mktemp("mmd")
    benign = directory / "benign" / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=3, days=2, scale=0.1, campaigns=())), benign)
    mixed = directory / "mixed" / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=4, days=2, scale=0.1, campaigns=("bulk", "hydra"))), mixed)
    labels = json.loads((mixed.parent / "labels.json").read_text())
    alone = directory / "alone.jsonl"
    with open(mixed, encoding="utf-8") as rows, open(alone, "w", encoding="utf-8") as out:
        out.writelines(line for line in rows if labels[json.loads(line)["account"]]["kind"] == "benign")
    return benign, mixed, alone, labels


def test_campaign_accounts_move_no_calibration_and_no_benign_score(weeks):
    """Calibration reads the benign week's windows only: scoring a week with campaigns leaves it as it was, and a
    benign account's score is the same with the campaigns in the scored week as without them."""
    benign, mixed, alone, labels = weeks
    cache = EmbeddingCache(HashedWords())
    baseline = MmdBaseline.calibrate(account_windows(open_log([benign]), cache, window=500), reference_size=300)
    calibrated = (baseline.bandwidth, baseline.reference.copy(), baseline.benign_statistics.copy())
    with_campaigns = baseline.scores(account_windows(open_log([mixed]), cache, window=500))
    without = baseline.scores(account_windows(open_log([alone]), cache, window=500))
    assert baseline.bandwidth == calibrated[0] and np.array_equal(baseline.reference, calibrated[1])
    assert np.array_equal(baseline.benign_statistics, calibrated[2])
    assert set(with_campaigns) == set(labels)
    assert without == {a: s for a, s in with_campaigns.items() if labels[a]["kind"] == "benign"}


def test_a_one_window_account_s_sample_is_the_content_signals_and_costs_no_encoding(weeks):
    _, mixed, _, labels = weeks
    connection, encoder = opened([mixed]), HashedWords()
    cache = EmbeddingCache(encoder)
    account_content(connection, cache)
    embedded = encoder.texts
    windows = account_windows(connection, cache, window=10**9)
    assert encoder.texts == embedded and set(windows) == set(labels)
    assert all(len(found) == 1 and len(found[0].embeddings) <= SAMPLE for found in windows.values())
    (bulk,) = [a for a, label in labels.items() if label["style"] == "bulk"]
    assert len(account_windows(connection, cache, window=100)[bulk]) > 1  # its further windows: more to encode
    assert encoder.texts > embedded


def _log(directory, rows: list[tuple[str, str]]):
    asked = [
        row(n, account, n) | {"messages": [{"role": "user", "content": prompt}]}
        for n, (account, prompt) in enumerate(rows)
    ]
    return write(directory / "log.jsonl", asked)[0]


def _everyday(accounts: int, requests: int, seed: int) -> list[tuple[str, str]]:
    rng, text = random.Random(seed), TextBank()
    makers = [text.summarise, text.extract, text.classify, text.translate, text.product, text.code_question]
    return [(f"user-{seed}-{n}", makers[(n + i) % len(makers)](rng)) for n in range(accounts) for i in range(requests)]


def test_every_account_of_a_small_log_gets_a_score_and_a_topic_sweep_ranks_above_everyday_users(tmp_path):
    (tmp_path / "calibration").mkdir()
    calibration = _log(tmp_path / "calibration", _everyday(120, 40, seed=0))
    cache = EmbeddingCache(HashedWords())
    baseline = MmdBaseline.calibrate(account_windows(open_log([calibration]), cache, window=100))
    rng = random.Random(1)
    tasks = [t.format(concept=c, domain=d) for d, concepts in DOMAINS.items() for c in concepts for t in TASK_TEMPLATES]
    rng.shuffle(tasks)
    rows = _everyday(30, 40, seed=2) + [("sweep", task) for task in tasks[:300]] + [("tiny", "hello there")] * 3
    (tmp_path / "scored").mkdir()
    scores = baseline.scores(account_windows(open_log([_log(tmp_path / "scored", rows)]), cache, window=100))
    assert set(scores) == {account for account, _ in rows}
    assert scores["tiny"] == 0.0  # below the smallest window tested: not scored by this baseline
    assert scores["sweep"] > max(s for a, s in scores.items() if a.startswith("user-"))
