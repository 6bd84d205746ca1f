"""The spool: an actor's day back in time order, held on disk rather than in memory while it is merged."""

from __future__ import annotations

import gc
import random
import tracemalloc

from alambic.simulate import spool as spool_module
from alambic.simulate.population import Request, chat
from alambic.simulate.spool import INLINE, Spool


def _day(n: int, seed: int = 0) -> list[Request]:
    rng = random.Random(seed)
    return [
        Request(
            float(rng.randrange(50)),  # many ties
            messages=chat("system", f"question {i} " + "x" * rng.randrange(2000)),
            params={"max_tokens": rng.randrange(1, 500), "response_format": {"type": "json_object"}},
            answer_tokens=i,
            status=rng.choice([200, 429]),
            address=rng.choice([None, "10.0.0.1"]),
        )
        for i in range(n)
    ]


def test_a_day_comes_back_whole_in_time_order_and_ties_in_the_order_drawn():
    for n in (0, 1, INLINE, INLINE + 1, 3000):
        day = _day(n, seed=n)
        with Spool() as spool:
            back = list(spool.in_time_order(iter(day)))
        assert back == sorted(day, key=lambda r: r.at), n


def test_a_long_day_waits_on_disk_not_in_memory():
    day = _day(3000)
    tracemalloc.start()
    try:
        with Spool() as spool:
            start = tracemalloc.get_traced_memory()[0]
            parked = spool.in_time_order(day)
            first = next(parked)
            del day
            gc.collect()
            held = tracemalloc.get_traced_memory()[0] - start
            rest = list(parked)
    finally:
        tracemalloc.stop()
    assert first.at == 0 and len(rest) == 2999
    assert held < 3000 * 64, held  # a time and a place per request; the requests are ~1 KB each


def test_leaving_the_spool_before_a_day_is_read_is_harmless():
    with Spool() as spool:
        parked = spool.in_time_order(_day(100))
        next(parked)
    parked.close()


def test_days_parked_over_several_files_read_back_interleaved_and_the_read_files_go(monkeypatch):
    monkeypatch.setattr(spool_module, "FILE_BYTES", 50_000)
    days = [_day(200, seed=s) for s in range(6)]
    with Spool() as spool:
        parked = [spool.in_time_order(day) for day in days]
        firsts = [next(p) for p in parked]  # every day drawn before any is read through: several files
        opened = len(spool._open)
        rests = [list(p) for p in parked]
        assert opened > 2 and len(spool._open) == 1
    back = [[first, *rest] for first, rest in zip(firsts, rests, strict=True)]
    assert back == [sorted(day, key=lambda r: r.at) for day in days]
