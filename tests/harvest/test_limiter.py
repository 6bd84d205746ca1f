"""The harvest's adaptive concurrency limit (AIMD), driven by counts: no clock, no server."""

import asyncio

from alambic.harvest.limiter import AdaptiveLimit


def fill(limit: AdaptiveLimit) -> list[int]:
    """Take every free slot; their tickets."""
    tickets = []
    while (ticket := limit.take()) is not None:
        tickets.append(ticket)
    return tickets


def test_overload_halves_the_limit_once_per_cut_down_to_1():
    limit = AdaptiveLimit(8)
    sent_at_8 = fill(limit)
    assert len(sent_at_8) == 8 and limit.take() is None
    limit.overloaded(sent_at_8[0])
    assert limit.limit == 4
    for ticket in sent_at_8[1:]:  # sent before the cut: already accounted for
        limit.overloaded(ticket)
        limit.release(ticket)
    assert limit.limit == 4 and limit.in_flight == 1
    limit.release(sent_at_8[0])
    for expected in (2, 1, 1):
        tickets = fill(limit)
        for ticket in tickets:
            limit.overloaded(ticket)
            limit.release(ticket)
        assert limit.limit == expected
    assert limit.lowest == 1 and limit.in_flight == 0


def answer_a_window(limit: AdaptiveLimit) -> None:
    for ticket in fill(limit):
        limit.release(ticket)


def test_a_window_without_overload_adds_one_up_to_the_ceiling():
    limit = AdaptiveLimit(4)
    limit.overloaded(limit.take())
    limit.release(0)
    assert limit.limit == 2
    answer_a_window(limit)
    assert limit.limit == 3
    answer_a_window(limit)
    assert limit.limit == 4
    for _ in range(5):
        answer_a_window(limit)
    assert limit.limit == 4 and limit.lowest == 2


def test_the_limit_does_not_grow_while_the_request_in_the_new_slot_is_out():
    limit = AdaptiveLimit(8)
    limit.overloaded(limit.take())
    limit.release(0)
    answer_a_window(limit)
    assert limit.limit == 5
    probe, *others = fill(limit)  # the fifth slot's request: the teacher is slow on it
    for _ in range(10):  # the other four keep being answered
        for ticket in others:
            limit.release(ticket)
        others = fill(limit)
    assert limit.limit == 5
    limit.overloaded(probe)
    limit.release(probe)
    assert limit.limit == 2


def test_a_failure_that_is_no_overload_neither_cuts_nor_holds_back_the_limit():
    limit = AdaptiveLimit(4)
    limit.overloaded(limit.take())
    limit.release(0)
    first, second = fill(limit)
    limit.release(first)
    limit.release(second)  # an HTTP 500: not reported as an overload
    assert limit.limit == 3


def test_requests_beyond_the_limit_wait_for_a_slot_and_none_is_lost():
    async def scenario() -> list[str]:
        limit, events = AdaptiveLimit(4), []
        limit.overloaded(await limit.acquire())
        limit.release(0)  # 2 slots
        first, second = await limit.acquire(), await limit.acquire()
        waiting = [asyncio.create_task(limit.acquire()) for _ in range(2)]
        await asyncio.sleep(0)
        events.append(f"in flight {limit.in_flight}, waiting {sum(not t.done() for t in waiting)}")
        limit.release(first)
        await asyncio.sleep(0)
        events.append(f"in flight {limit.in_flight}, waiting {sum(not t.done() for t in waiting)}")
        limit.release(second)  # the window answered: 3 slots, the last one may go too
        await asyncio.sleep(0)
        events.append(f"in flight {limit.in_flight}, waiting {sum(not t.done() for t in waiting)}, limit {limit.limit}")
        return events

    assert asyncio.run(scenario()) == [
        "in flight 2, waiting 2",
        "in flight 2, waiting 1",
        "in flight 2, waiting 0, limit 3",
    ]
