"""Who may call: the API key names an account, and the account's policy allows, throttles or blocks.

Throttling counts the account's served requests and tokens over the last minute in the request log
itself, so limits hold across restarts and across gateway replicas sharing one database; requests in
flight in this process count too, so a burst cannot slip in before its rows are written.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

import anyio
from starlette.requests import Request

from alambic.errors import AuthenticationError, PermissionDeniedError, RateLimitError
from alambic.store import AccountPolicy, Policy, RequestRecord, Store, authenticate, usage_since

WINDOW = timedelta(minutes=1)


class Gatekeeper:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.in_flight: Counter[int] = Counter()

    async def admit(self, request: Request) -> AccountPolicy:
        """The caller's account, or an error (401, 403, 429) that the handlers turn into a response."""
        started = time.perf_counter()
        try:
            return await self._admit(request)
        finally:
            request.scope["state"]["overhead_s"] += time.perf_counter() - started

    async def _admit(self, request: Request) -> AccountPolicy:
        key = bearer_token(request)
        account = await anyio.to_thread.run_sync(authenticate, self.store, key)
        if account is None:
            raise AuthenticationError(
                f"Incorrect API key provided: {key[:8]}…. Create one with `alambic accounts create`.",
                code="invalid_api_key",
            )
        record: RequestRecord = request.state.record
        record.account_id, record.api_key_id = account.account_id, account.api_key_id
        if account.policy is Policy.BLOCK:
            raise PermissionDeniedError(f"The account '{account.name}' is blocked.", code="account_blocked")
        if account.policy is Policy.THROTTLE:
            await self._check_limits(account)
        self.in_flight[account.account_id] += 1
        request.state.admitted = True
        request.state.account = account
        return account

    def release(self, record: RequestRecord, state: dict) -> None:
        """Called once the request's row is committed: it now counts through the log."""
        if state.get("admitted"):
            self.in_flight[record.account_id] -= 1

    async def _check_limits(self, account: AccountPolicy) -> None:
        now = datetime.now(UTC)
        usage = await anyio.to_thread.run_sync(usage_since, self.store, account.account_id, now - WINDOW)
        requests = usage.requests + self.in_flight[account.account_id]
        over = []
        if account.requests_per_minute is not None and requests >= account.requests_per_minute:
            over.append(f"{account.requests_per_minute} requests")
        if account.tokens_per_minute is not None and usage.tokens >= account.tokens_per_minute:
            over.append(f"{account.tokens_per_minute} tokens")
        if over:
            retry_after = 1
            if usage.oldest is not None:
                oldest = usage.oldest if usage.oldest.tzinfo else usage.oldest.replace(tzinfo=UTC)
                retry_after = max(1, math.ceil((oldest + WINDOW - now).total_seconds()))
            raise RateLimitError(
                f"Rate limit reached for account '{account.name}': {' and '.join(over)} per minute.",
                retry_after_s=retry_after,
            )


def bearer_token(request: Request) -> str:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    return token.strip()
