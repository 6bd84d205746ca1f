"""The empirical null harness on the tiny engine and model: each key's watermarked harvest (single-turn, two-turn
with the first answer in its prompt, a summary of it) and every trial it gives, per scheme, mode and reader."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_prove_null as bench
from alambic.prove.null import Trial, summarise


def test_each_key_gives_a_trial_per_scheme_mode_and_reader_from_its_own_watermarked_harvest(engine, tiny):
    keys = {index: bench.Conversation(f"What is {index} plus {index}?", "And times two?") for index in (3, 7)}
    harvests = bench.harvest(engine, keys, tokens=12)
    for index, conversation in keys.items():
        for scheme in bench.schemes(index):
            single, two_turn, summary = harvests[index][scheme.name]["rows"]
            first = single["answer"]
            assert single["messages"] == [{"role": "user", "content": conversation.first}]
            assert two_turn["messages"][1] == {"role": "assistant", "content": first}
            assert summary["messages"][0]["content"] == bench.SUMMARISE + first
            api = harvests[index][scheme.name]["api"]
            assert [row["messages"] for row in api] == [two_turn["messages"], summary["messages"]]
    trials = bench.key_trials(harvests, tiny.tokenizer, {"tiny": tiny}, answer_tokens=12)
    for index in keys:
        found = {(t["scheme"], t["mode"], t["reader"]): t for t in trials[index]}
        reading = [("reading", "tiny"), ("reading", "copier")]
        readers = [*reading, ("api", "teacher"), ("api", "tiny"), ("api", "copier")]  # tiny answers itself
        assert set(found) == {(scheme, *reader) for scheme in ("kgw", "gumbel") for reader in readers}
        assert all(0 < t["pvalue"] <= 1 and 0 <= t["uniform_pvalue"] <= t["pvalue"] for t in found.values())
        assert all(t["tokens_scored"] > 0 for key, t in found.items() if key[1] == "reading")
    again = bench.key_trials(harvests, tiny.tokenizer, {"tiny": tiny}, answer_tokens=12)
    assert again == trials  # each trial's randomisation, and each reader's answers, seeded by the trial
    summary = summarise([Trial(t["pvalue"], t["uniform_pvalue"], t["tokens_scored"]) for t in trials[3]])
    assert summary["trials"] == 10 and np.isfinite(summary["ks_pvalue"])


def test_the_trials_are_kept_under_the_code_a_trial_runs_and_no_other(monkeypatch):
    where = bench.trials_directory(Path("harvest-1"), Path("student-1"), {"answer_tokens": 64})
    assert bench.trials_directory(Path("harvest-1"), Path("student-1"), {"answer_tokens": 64}) == where
    monkeypatch.setattr(bench, "summary", lambda trials: {})  # reporting: not part of a trial
    assert bench.trials_directory(Path("harvest-1"), Path("student-1"), {"answer_tokens": 64}) == where
    monkeypatch.setattr(bench, "_copier_row", lambda *args: None)  # a trial's own code
    assert bench.trials_directory(Path("harvest-1"), Path("student-1"), {"answer_tokens": 64}) != where


def test_a_readers_api_answers_are_its_own_and_seeded_by_the_trial(tiny):
    chat = [{"role": "user", "content": "What is 3 plus 3?"}]
    asks = [(chat, bench.answer_seed(3, "kgw", "summary", reader)) for reader in ("tiny", "layer_cut")]
    answers = bench.own_answers(tiny, asks, tokens=12)
    assert bench.own_answers(tiny, asks[::-1], tokens=12) == answers[::-1]  # each its seed's, in any batch
    assert answers[0] != answers[1]  # another reader's seed: its own draws
    assert bench.answer_seed(3, "kgw", "summary", "tiny") not in {
        bench.answer_seed(4, "kgw", "summary", "tiny"),
        bench.answer_seed(3, "gumbel", "summary", "tiny"),
        bench.answer_seed(3, "kgw", "two_turn", "tiny"),
    }


def test_the_trials_are_kept_under_the_answering_code(monkeypatch):
    where = bench.trials_directory(Path("harvest-1"), Path("student-1"), {"answer_tokens": 64})
    monkeypatch.setattr(bench, "own_answers", lambda *args: None)
    assert bench.trials_directory(Path("harvest-1"), Path("student-1"), {"answer_tokens": 64}) != where
    assert bench.SOURCES / "generation" in bench.TRIALS_CODE  # the transformers backend answers in a trial
