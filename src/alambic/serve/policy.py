"""Who may call: the API key names an account, and the account's policy allows, throttles or blocks.

Throttling counts the account's served requests and tokens over the last minute in the request log
itself, so limits hold across restarts and across gateway replicas sharing one database. Requests in
flight in this process count too, with the tokens they may still use (prompt + max_tokens, held from the
moment they are known until the request ends), so a burst cannot slip in before its rows are final.

The key's lookup and the usage query run on the event loop, as the log's writes do (see `requestlog`): one
short query each, where a worker thread's hop waited for the GIL under load. No cache: a policy changed from
another process (`alambic accounts policy`) applies from the next request on.
"""

from __future__ import annotations

import math
import time
from collections import Counter
from datetime import UTC, datetime, timedelta

from starlette.requests import Request

from alambic.errors import AuthenticationError, PermissionDeniedError, RateLimitError
from alambic.store import AccountPolicy, Policy, RequestRecord, Store, UsageWindow, authenticate, usage_since

WINDOW = timedelta(minutes=1)


class Gatekeeper:
    def __init__(self, store: Store) -> None:
        self.store = store
        self.in_flight: Counter[int] = Counter()  # admitted requests not yet over, by account
        self.held_tokens: Counter[int] = Counter()  # the tokens those requests may use, by account

    async def admit(self, request: Request) -> AccountPolicy:
        """The caller's account, or an error (401, 403, 429) that the handlers turn into a response."""
        started = time.perf_counter()
        try:
            return await self._admit(request)
        finally:
            request.scope["state"]["overhead_s"] += time.perf_counter() - started

    async def _admit(self, request: Request) -> AccountPolicy:
        key = bearer_token(request)
        account = authenticate(self.store, key)
        request.state.unchecked_key = None  # the log need not look it up again
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
            now = datetime.now(UTC)
            usage = usage_since(self.store, account.account_id, now - WINDOW)
            # No await from this check to the count below: concurrent admissions see each other.
            self._refuse_over_limits(account, usage, requests=usage.requests + self.in_flight[account.account_id])
            request.state.usage = usage
        self.in_flight[account.account_id] += 1
        request.state.admitted = True
        request.state.account = account
        return account

    def hold_tokens(self, request: Request, tokens: int) -> None:
        """Hold the tokens an admitted request may use (prompt + max_tokens for each choice) until it ends, or
        refuse it (429) if the account's tokens per minute are spent, counting what requests in flight hold."""
        account: AccountPolicy = request.state.account
        usage: UsageWindow | None = getattr(request.state, "usage", None)
        if usage is not None:
            self._refuse_over_limits(account, usage, requests=None)
        self.held_tokens[account.account_id] += tokens
        request.state.held_tokens = tokens

    def release(self, record: RequestRecord, state: dict) -> None:
        """Called once per request when it is over (its row final, or its write failed)."""
        if state.get("admitted"):
            self.in_flight[record.account_id] -= 1
            self.held_tokens[record.account_id] -= state.get("held_tokens", 0)

    def _refuse_over_limits(self, account: AccountPolicy, usage: UsageWindow, *, requests: int | None) -> None:
        over = []
        if account.requests_per_minute is not None and requests is not None and requests >= account.requests_per_minute:
            over.append(f"{account.requests_per_minute} requests")
        tokens = usage.tokens + self.held_tokens[account.account_id]
        if account.tokens_per_minute is not None and tokens >= account.tokens_per_minute:
            over.append(f"{account.tokens_per_minute} tokens")
        if not over:
            return
        now, retry_after = datetime.now(UTC), 1
        if usage.oldest is not None:
            oldest = usage.oldest if usage.oldest.tzinfo else usage.oldest.replace(tzinfo=UTC)
            retry_after = max(1, math.ceil((oldest + WINDOW - now).total_seconds()))
        raise RateLimitError(
            f"Rate limit reached for account '{account.name}': {' and '.join(over)} per minute.",
            retry_after_s=retry_after,
        )


def bearer_token(request: Request) -> str:
    token = parse_bearer(request.headers.get("authorization", ""))
    if token is None:
        raise AuthenticationError(
            "You didn't provide an API key. Send it as 'Authorization: Bearer YOUR_KEY'.",
            code="missing_api_key",
        )
    return token


def parse_bearer(header: str) -> str | None:
    """The key of an `Authorization: Bearer KEY` header, or None."""
    scheme, _, token = header.partition(" ")
    return token.strip() if scheme.lower() == "bearer" and token.strip() else None
