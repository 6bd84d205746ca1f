"""Logging every /v1 request: a row is committed before the client sees the response, errors included.

An ASGI middleware gives each request a `RequestRecord` that the handlers fill in. For a whole response it
holds the response back until the row is committed; a stream commits the row itself before `[DONE]`,
and a stream cut short (client gone, server error) is committed when it ends.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime

import anyio
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alambic.errors import ClientDisconnectedError
from alambic.store import RequestRecord, Store, log_request

LOGGED_PREFIX = "/v1/"


class RequestJournal:
    """Commits records once each and tells the listeners (metrics, rate limits) that a request is over."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.listeners: list[Callable[[RequestRecord, dict], None]] = []

    async def commit(self, state: dict) -> None:
        if state.get("logged"):
            return
        state["logged"] = True
        record: RequestRecord = state["record"]
        started = time.perf_counter()
        record.latency_ms = (started - state["started"]) * 1000
        with anyio.CancelScope(shield=True):  # a client hanging up must not lose the row
            await anyio.to_thread.run_sync(log_request, self.store, record)
        state["overhead_s"] += time.perf_counter() - started
        for listener in self.listeners:
            listener(record, state)


class RequestLogMiddleware:
    def __init__(self, app: ASGIApp, journal: RequestJournal, max_body_bytes: int) -> None:
        self.app = app
        self.journal = journal
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(LOGGED_PREFIX):
            await self.app(scope, receive, send)
            return
        state = scope.setdefault("state", {})
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        # /v1 speaks JSON only: parse the body as JSON whatever type the client declared (curl -d says form).
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
        scope["headers"].append((b"content-type", b"application/json"))
        client = scope.get("client")
        state["started"] = time.perf_counter()
        state["overhead_s"] = 0.0  # time spent on the gateway's own bookkeeping: auth, policy, logging
        state["record"] = record = RequestRecord(
            created_at=datetime.now(UTC),
            endpoint=scope["path"],
            method=scope["method"],
            client_address=client[0] if client else None,
            user_agent=(headers.get("user-agent") or "")[:400] or None,
        )
        held_start: Message | None = None

        async def send_after_logging(message: Message) -> None:
            nonlocal held_start
            if message["type"] == "http.response.start":
                record.status_code = message["status"]
                held_start = message
                return
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await self.journal.commit(state)
                if held_start is not None:
                    await send(held_start)
                    held_start = None
            await send(message)

        try:
            await self.app(scope, self._limited(receive, headers), send_after_logging)
        except Exception:
            record.status_code = record.status_code or 500
            record.error_type = record.error_type or "server_error"
            raise
        finally:
            if not state.get("logged"):
                # Cut short: the client left mid-stream (status already sent) or nothing was sent at all.
                record.error_type = record.error_type or ClientDisconnectedError.error_type
                record.status_code = record.status_code or ClientDisconnectedError.status_code
                await self.journal.commit(state)

    def _limited(self, receive: Receive, headers: dict[str, str]) -> Receive:
        limit = self.max_body_bytes
        declared = headers.get("content-length", "")
        if declared.isdigit() and int(declared) > limit:
            return _refuse(limit)
        received = 0

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:
                raise _too_large(limit)
            return message

        return counting_receive


def _too_large(limit: int) -> HTTPException:
    # Raised while FastAPI reads the body, which lets only HTTPException through as what it is.
    return HTTPException(413, f"The request body is larger than {limit} bytes.")


def _refuse(limit: int) -> Receive:
    async def receive() -> Message:
        raise _too_large(limit)

    return receive
