"""The training-throughput comparison: each precision against `transformers.Trainer` in the same precision,
every contender warmed up once, then measured in interleaved rounds."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_distill


def test_each_precision_is_set_against_the_trainer_in_the_same_precision_warm_and_interleaved(monkeypatch):
    steady = {("alambic", False): 200.0, ("alambic", True): 600.0, ("trainer", False): 100.0, ("trainer", True): 400.0}
    calls = []

    def measure(name: str, bf16: bool) -> float:
        calls.append((name, bf16))
        cold = calls.count((name, bf16)) == 1
        return 1.0 if cold else steady[name, bf16]  # a first run pays for warming up

    def alambic(data, name, **settings):
        return SimpleNamespace(tokens_seen=measure("alambic", settings["bf16"]), wall_seconds=1.0), None

    monkeypatch.setattr(bench_distill, "run", alambic)
    monkeypatch.setattr(bench_distill, "PRECISIONS", ("fp32", "bf16"))  # as on a CPU with bf16 instructions

    def trainer(student, examples, bf16=False):
        return measure("trainer", bf16)

    monkeypatch.setattr(bench_distill, "trainer_baseline", trainer)
    monkeypatch.setattr(bench_distill, "student_from_teacher", lambda teacher, layers: None)
    split = SimpleNamespace(train=[None] * 4)
    builder = SimpleNamespace(example=lambda row, targets: {"input_ids": [1, 2]})

    figures = bench_distill.throughput(Path("answers"), None, split, builder)

    assert figures["fp32"]["ratio"] == 2.0 and figures["bf16"]["ratio"] == 1.5
    assert figures["bf16"]["transformers_trainer_tok_s"] == 400.0
    rounds = [set(calls[i : i + 4]) for i in range(0, len(calls), 4)]
    assert len(rounds) == 1 + bench_distill.THROUGHPUT_ROUNDS and all(len(r) == 4 for r in rounds)
