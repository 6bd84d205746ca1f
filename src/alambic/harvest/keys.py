"""Spreading requests over several API keys, each paced on its own: how a campaign over linked accounts looks.

Strategies: `round-robin` (each request the next key), `random`, or `shard` (each prompt always goes to
the key its hash picks, so every key owns its share of the prompts). Pacing per key: at most
`requests_per_minute`, each gap stretched or shrunk by up to `jitter` of itself, and a rest of
`pause_seconds` after every `pause_every` requests.
"""

from __future__ import annotations

import asyncio
import hashlib
import random
import time
from dataclasses import dataclass, field
from enum import StrEnum

from alambic.errors import InvalidRequestError


class KeyStrategy(StrEnum):
    ROUND_ROBIN = "round-robin"
    RANDOM = "random"
    SHARD = "shard"


@dataclass(frozen=True)
class Pacing:
    requests_per_minute: float | None = None
    jitter: float = 0.0  # fraction of the gap
    pause_every: int | None = None
    pause_seconds: float = 0.0


@dataclass
class ApiKey:
    index: int
    secret: str
    sha256: str
    next_start: float = 0.0  # monotonic time before which this key sends nothing
    sent: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class KeyPool:
    def __init__(self, keys: list[str], strategy: KeyStrategy, pacing: Pacing, *, seed: int | None = None) -> None:
        if not keys:
            raise InvalidRequestError("Give at least one API key.", param="api_key")
        if pacing.requests_per_minute is not None and pacing.requests_per_minute <= 0:
            raise InvalidRequestError("requests per minute must be positive.", param="rpm_per_key")
        if not 0 <= pacing.jitter < 1:
            raise InvalidRequestError("jitter must be in [0, 1).", param="jitter")
        self.keys = [ApiKey(i, k, hashlib.sha256(k.encode()).hexdigest()) for i, k in enumerate(keys)]
        self.strategy = strategy
        self.pacing = pacing
        self.random = random.Random(seed)
        self._next = 0

    def choose(self, prompt_id: str) -> ApiKey:
        if self.strategy is KeyStrategy.SHARD:
            return self.keys[int(prompt_id[:8], 16) % len(self.keys)]
        if self.strategy is KeyStrategy.RANDOM:
            return self.random.choice(self.keys)
        key = self.keys[self._next % len(self.keys)]
        self._next += 1
        return key

    async def wait_turn(self, key: ApiKey) -> None:
        """Sleep until `key` may send its next request under its pacing, and book that slot."""
        async with key.lock:
            delay = key.next_start - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            key.sent += 1
            gap = 0.0
            if self.pacing.requests_per_minute:
                gap = 60.0 / self.pacing.requests_per_minute
                gap *= 1 + self.pacing.jitter * self.random.uniform(-1, 1)
            if self.pacing.pause_every and key.sent % self.pacing.pause_every == 0:
                gap += self.pacing.pause_seconds
            key.next_start = time.monotonic() + gap
