"""Simulated traffic sent to a live gateway in accelerated time: each simulated account gets a real account
(through the admin API) and its requests arrive in the simulation's order, `speed` times faster than simulated.

The gateway answers with its own model, so every request asks for the model it serves and at most
`max_tokens` tokens; the user agent is the simulated one. What the gateway logs is the monitor's input.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from alambic.errors import AlambicError, InvalidRequestError


@dataclass
class LiveReport:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    accounts: int = 0
    seconds: float = 0.0


class LiveTraffic:
    """Replays v1 rows against `endpoint` (the gateway's /v1 URL), creating accounts with `admin_key`."""

    def __init__(
        self, endpoint: str, admin_key: str, *, speed: float, concurrency: int = 16, max_tokens: int = 32
    ) -> None:
        self.endpoint = endpoint.rstrip("/")
        self.root = self.endpoint.removesuffix("/v1")
        self.admin_key = admin_key
        self.speed = speed
        self.max_tokens = max_tokens
        self.slots = asyncio.Semaphore(concurrency)
        self.keys: dict[str, str] = {}
        self.report = LiveReport()

    async def run(self, rows: Iterable[dict[str, Any]]) -> LiveReport:
        started = time.perf_counter()
        async with httpx.AsyncClient(timeout=120) as client:
            model = await self._served_model(client)
            first: datetime | None = None
            tasks = []
            for row in rows:
                at = datetime.fromisoformat(row["time"])
                first = first or at
                delay = (at - first).total_seconds() / self.speed - (time.perf_counter() - started)
                if delay > 0:
                    await asyncio.sleep(delay)
                key = await self._key(client, row["account"])
                await self.slots.acquire()
                tasks.append(asyncio.create_task(self._send(client, key, model, row)))
                self.report.sent += 1
            await asyncio.gather(*tasks)
        self.report.seconds = time.perf_counter() - started
        return self.report

    async def _served_model(self, client: httpx.AsyncClient) -> str:
        response = await client.get(f"{self.root}/healthz")
        response.raise_for_status()
        return response.json()["model"]

    async def _key(self, client: httpx.AsyncClient, account: str) -> str:
        if account not in self.keys:
            response = await client.post(f"{self.root}/admin/accounts", json={"name": account}, headers=self._admin())
            if response.status_code == 409:
                raise InvalidRequestError(
                    f"The gateway already has an account '{account}': use a fresh store or --seed."
                )
            if response.status_code != 201:
                raise AlambicError(f"The gateway refused to create account '{account}': {response.text[:200]}")
            self.keys[account] = response.json()["api_key"]
            self.report.accounts += 1
        return self.keys[account]

    async def _send(self, client: httpx.AsyncClient, key: str, model: str, row: dict[str, Any]) -> None:
        params = dict(row.get("params") or {})
        params["max_tokens"] = min(params.get("max_tokens") or self.max_tokens, self.max_tokens)
        params["stream"] = False
        body = {**params, "model": model, "messages": row["messages"]}
        headers = {**_bearer(key), "User-Agent": row.get("user_agent") or "alambic-simulate"}
        try:
            response = await client.post(f"{self.endpoint}/chat/completions", json=body, headers=headers)
            self.report.statuses[response.status_code] += 1
        except httpx.HTTPError:
            self.report.statuses[0] += 1
        finally:
            self.slots.release()

    def _admin(self) -> dict[str, str]:
        return _bearer(self.admin_key)


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}
