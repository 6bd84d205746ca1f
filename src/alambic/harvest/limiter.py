"""How many requests the harvest keeps in flight: additive increase, multiplicative decrease (AIMD), as TCP.

The limit starts at the ceiling (`--concurrency`). A sign that the teacher is overloaded (a timeout, a 503, a
429 that names no Retry-After) halves it, not below 1, once per cut: requests sent before the last cut went
out under a higher limit, and their own timeouts say nothing new. It grows by one when a whole window of
requests sent since the last change (as many as the limit) has come back without a sign of overload, back up
to the ceiling: so the request sent into a newly opened slot must come back before the limit grows again,
however slowly it times out. Requests beyond the limit wait for a slot; none is dropped.
"""

from __future__ import annotations

import asyncio


class AdaptiveLimit:
    def __init__(self, ceiling: int) -> None:
        self.ceiling = self.limit = self.lowest = ceiling
        self.in_flight = 0
        self._next_ticket = 0  # each slot taken gets the next ticket
        self._cut_at = 0  # the first ticket sent under the current cut
        self._window_start = 0  # the first ticket of the window since the last change
        self._window_settled = 0
        self._waiters: list[asyncio.Future[None]] = []

    def take(self) -> int | None:
        """A slot's ticket, or None when the limit is reached."""
        if self.in_flight >= self.limit:
            return None
        self.in_flight += 1
        self._next_ticket += 1
        return self._next_ticket - 1

    async def acquire(self) -> int:
        """Wait for a slot under the limit and take it; its ticket."""
        while (ticket := self.take()) is None:
            waiter = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await waiter
            finally:
                if waiter in self._waiters:
                    self._waiters.remove(waiter)
        return ticket

    def release(self, ticket: int) -> None:
        """The slot's request is over (any overload it met already reported); at the end of a window with
        no overload, the limit grows by one."""
        self.in_flight -= 1
        if self._window_start <= ticket < self._window_start + self.limit:
            self._window_settled += 1
            if self._window_settled == self.limit:
                self.limit = min(self.ceiling, self.limit + 1)
                self._new_window()
        self._wake()

    def overloaded(self, ticket: int) -> None:
        """The request holding `ticket` found the teacher overloaded: halve the limit, once per cut."""
        if ticket < self._cut_at:
            return
        self.limit = max(1, self.limit // 2)
        self.lowest = min(self.lowest, self.limit)
        self._cut_at = self._next_ticket
        self._new_window()

    def _new_window(self) -> None:
        self._window_start = self._next_ticket
        self._window_settled = 0

    def _wake(self) -> None:
        """Let as many waiters look again as there are free slots (those that find none wait anew)."""
        free = self.limit - self.in_flight
        while free > 0 and self._waiters:
            waiter = self._waiters.pop(0)
            if not waiter.done():  # not cancelled
                waiter.set_result(None)
                free -= 1
