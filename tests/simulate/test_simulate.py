"""The traffic simulator: deterministic, valid v1, and a population shaped like a real API's."""

from __future__ import annotations

import hashlib
import json
import statistics
import tracemalloc
from collections import Counter, defaultdict
from pathlib import Path

import pytest

from alambic.logs.format import parse_row
from alambic.simulate import CAMPAIGNS, Simulation, SimulationSettings, write_jsonl
from conftest import SHARED_DATA

SMALL = SimulationSettings(seed=3, days=3, scale=0.25)


@pytest.fixture(scope="module")
def small_week(tmp_path_factory: pytest.TempPathFactory) -> tuple[list[dict], dict[str, dict]]:
    out = tmp_path_factory.mktemp("simulated") / "log.jsonl"
    write_jsonl(Simulation(SMALL), out)
    rows = [json.loads(line) for line in out.read_text().split("\n") if line]
    return rows, json.loads((out.parent / "labels.json").read_text())


def test_the_same_seed_gives_the_same_bytes_and_another_seed_does_not(tmp_path):
    settings = SimulationSettings(seed=5, days=1, scale=0.05)
    first, second, other = tmp_path / "a.jsonl.gz", tmp_path / "b.jsonl.gz", tmp_path / "c.jsonl.gz"
    write_jsonl(Simulation(settings), first, tmp_path / "a.json")
    write_jsonl(Simulation(settings), second, tmp_path / "b.json")
    write_jsonl(Simulation(SimulationSettings(seed=6, days=1, scale=0.05)), other, tmp_path / "c.json")
    assert (
        first.read_bytes() == second.read_bytes()
        and (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()
    )
    assert first.read_bytes() != other.read_bytes()


def test_every_row_is_valid_v1_in_time_order_and_labels_stay_out_of_the_log(small_week):
    rows, labels = small_week
    parsed = [parse_row(row) for row in rows]
    assert [p.time for p in parsed] == sorted(p.time for p in parsed)
    assert len({p.id for p in parsed}) == len(parsed)
    assert {p.account for p in parsed} == set(labels)
    assert not any("campaign" in json.dumps(row) for row in rows[:2000])


def test_every_campaign_style_is_present_and_labelled(small_week):
    _, labels = small_week
    styles = Counter(label["style"] for label in labels.values() if label["kind"] == "campaign")
    assert set(styles) == set(CAMPAIGNS)
    campaigns = {label["campaign_id"] for label in labels.values() if label["kind"] == "campaign"}
    assert len(campaigns) == len(CAMPAIGNS)
    assert all(label["campaign_id"] is None for label in labels.values() if label["kind"] == "benign")


def test_the_population_is_mostly_programmatic_benign_traffic(small_week):
    rows, labels = small_week
    benign = [r for r in rows if labels[r["account"]]["kind"] == "benign"]
    assert len(benign) / len(rows) > 0.8
    people = {"person", "classroom"}
    programmatic = [r for r in benign if labels[r["account"]]["style"] not in people]
    assert len(programmatic) / len(benign) > 0.9
    kinds = Counter(label["kind"] for label in labels.values())
    assert kinds["benign"] > kinds["campaign"]


def test_hydra_accounts_stay_under_the_benign_median_and_share_its_egress(small_week):
    rows, labels = small_week
    per_account = Counter(r["account"] for r in rows)
    benign_median = statistics.median(n for a, n in per_account.items() if labels[a]["kind"] == "benign")
    hydra = [a for a, label in labels.items() if label["style"] == "hydra"]
    assert hydra and all(per_account[a] < benign_median for a in hydra), benign_median
    kinds_by_address = defaultdict(set)
    for row in rows:
        kinds_by_address[row["client_ip"]].add(labels[row["account"]]["style"])
    shared = [styles for styles in kinds_by_address.values() if "hydra" in styles and styles & {"person", "sandbox"}]
    assert len(shared) >= 5


def test_campaign_labels_count_the_requests_that_carry_the_campaign_s_prompts(small_week):
    """What a hydra account sent of its campaign's prompts, beside its cover traffic: an account that sent only
    cover carries none of the campaign's evidence, and a benchmark must be able to say how many there are."""
    rows, labels = small_week
    per_account = Counter(r["account"] for r in rows)
    assert all(label["extraction_requests"] is None for label in labels.values() if label["kind"] == "benign")
    campaign = {a: label for a, label in labels.items() if label["kind"] == "campaign"}
    assert all(0 <= label["extraction_requests"] <= per_account[a] for a, label in campaign.items())
    bulk = [a for a, label in campaign.items() if label["style"] == "bulk"]
    assert bulk and all(campaign[a]["extraction_requests"] == per_account[a] for a in bulk)
    hydra = [a for a, label in campaign.items() if label["style"] == "hydra"]
    cover = sum(per_account[a] - campaign[a]["extraction_requests"] for a in hydra) / sum(per_account[a] for a in hydra)
    assert 0.15 < cover < 0.45, cover


def test_the_new_model_is_adopted_gradually_and_the_pivot_follows_within_hours(small_week):
    rows, labels = small_week
    first_new = {}
    for row in rows:
        if row["model"] == "smollm3":
            first_new.setdefault(row["account"], row["time"])
    release = min(first_new.values())
    pivot = [t for a, t in first_new.items() if labels[a]["style"] == "pivot"]
    benign = [t for a, t in first_new.items() if labels[a]["kind"] == "benign"]
    assert pivot and max(pivot) < max(benign)
    assert len({t[:13] for t in benign}) > 5  # benign accounts move over many hours
    assert release >= "2026-11-03T12:00"


def test_real_prompts_come_from_the_data_directory_when_given(tmp_path):
    if not (SHARED_DATA / "sharegpt").is_dir():
        pytest.skip("no shared data")
    out = tmp_path / "real.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=1, days=1, scale=0.05, campaigns=("bulk",), data=SHARED_DATA)), out)
    gsm8k = {json.loads(line)["question"] for line in (SHARED_DATA / "gsm8k" / "train.jsonl").read_text().splitlines()}
    prompts = [json.loads(line)["messages"][-1]["content"] for line in out.read_text().split("\n") if line]
    assert any(p in gsm8k for p in prompts)


def test_the_cli_refuses_an_unknown_campaign_style_in_one_line(tmp_path):
    import subprocess
    import sys

    result = subprocess.run(
        [sys.executable, "-m", "alambic", "simulate", "--out", str(tmp_path / "x.jsonl"), "--campaigns", "bulk,sybil"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "Unknown campaign style sybil" in result.stderr
    assert "Traceback" not in result.stderr


def test_simulating_into_a_store_imports_every_row(tmp_path):
    from alambic.logs.exporter import v1_rows
    from alambic.store import Store

    out = tmp_path / "log.jsonl"
    settings = SimulationSettings(seed=2, days=1, scale=0.05, campaigns=("sharded",))
    written = write_jsonl(Simulation(settings), out)
    store = Store(f"sqlite:///{tmp_path / 'sim.db'}")
    from alambic.logs.importer import LogImporter

    report = LogImporter(store).import_files([out])
    assert (report.imported, report.rejected) == (written, [])
    assert [r["id"] for r in v1_rows(store)] == [json.loads(line)["id"] for line in out.read_text().split("\n") if line]
    assert Path(tmp_path / "labels.json").is_file()


def test_writing_a_log_reports_every_row_written(tmp_path):
    heard: list[int] = []
    written = write_jsonl(Simulation(SMALL), tmp_path / "log.jsonl", on_progress=heard.append)
    assert written > 0 and sum(heard) == written


def test_the_rows_are_the_ones_benchmarks_were_built_on(tmp_path):
    """Pinned: benchmarks and their caches depend on these bytes; change the digest only on purpose."""
    out = tmp_path / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=1, days=2, scale=0.05)), out)
    assert hashlib.sha256(out.read_bytes()).hexdigest() == (
        "0d8da61e60982894962402c7b881793f703992e0fa6e2ccace27a05b84ec9963"
    )


def test_memory_does_not_grow_with_the_days_the_same_world_runs():
    """The same population over 7x the days: campaigns' prompt sets are made as they are asked for (held
    whole, they grew with the days: 3.4 to 4.2 MiB here)."""
    short_rows, short_peak = _peak_with_the_world(SimulationSettings(seed=2, days=2, scale=0.05))
    long_rows, long_peak = _peak_with_the_world(SimulationSettings(seed=2, days=14, scale=0.05))
    assert long_rows > 4 * short_rows
    assert long_peak < 1.05 * short_peak, (short_peak, long_peak)


def _peak_with_the_world(settings: SimulationSettings) -> tuple[int, int]:
    """Rows, and the most memory held at once while the world is made and its rows stream."""
    tracemalloc.start()
    try:
        rows = sum(1 for _ in Simulation(settings).rows())
        return rows, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _streaming_peak(settings: SimulationSettings) -> tuple[int, int]:
    """Rows, and the most memory held at once while they stream (the world itself left out)."""
    simulation = Simulation(settings)
    tracemalloc.start()
    try:
        held = tracemalloc.get_traced_memory()[0]
        rows = sum(1 for _ in simulation.rows())
        return rows, tracemalloc.get_traced_memory()[1] - held
    finally:
        tracemalloc.stop()


def test_memory_while_streaming_grows_far_slower_than_the_requests_a_day():
    small_rows, small_peak = _streaming_peak(SimulationSettings(seed=2, days=1, scale=0.05, campaigns=()))
    large_rows, large_peak = _streaming_peak(SimulationSettings(seed=2, days=1, scale=0.2, campaigns=()))
    assert large_rows > 2 * small_rows
    # a day held whole grows with its rows (as it did, by 2.5 for 2.5); what grows now is the accounts' state
    assert large_peak / small_peak < 0.7 * large_rows / small_rows, (small_peak, large_peak)
