"""Logging every /v1 request: an admitted request's row exists before its answer does, and is final before it ends.

An ASGI middleware gives each request a `RequestRecord` that the handlers fill in. Admission inserts the row
`in_progress` (a gateway killed mid-answer leaves it so); the final row replaces it before a whole response
leaves (a stream: before `[DONE]`), or as a cut stream ends (499). A request refused before admission gets
one row, written at the end.

The writes run on the event loop itself, not on a worker thread: each is one short transaction (~1 ms in
SQLite, a round trip in PostgreSQL), while a hop to a worker thread under load waited for the GIL behind the
generation thread and the other streams, tens of ms per hop (63 ms per request measured at 16 streams). Being
synchronous, a write cannot be cancelled half way by a client hanging up.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from alambic.errors import ClientDisconnectedError
from alambic.serve.policy import parse_bearer
from alambic.store import RequestRecord, Store, authenticate, log_request, start_request

LOGGED_PREFIX = "/v1/"
UNMATCHED_ROUTE = "unmatched"  # the metrics' label for a path no route serves: callers cannot add series


class RequestJournal:
    """Writes each request's row, and tells the listeners (rate limits, metrics) once that a request is over."""

    def __init__(self, store: Store, instance: str) -> None:
        self.store = store
        self.instance = instance  # this gateway, in every row it writes: host:pid or a configured id
        self.listeners: list[Callable[[RequestRecord, dict], None]] = []

    async def open(self, state: dict) -> None:
        """Insert an admitted request's row, `in_progress` until `commit`."""
        state["record"].admitted_at = datetime.now(UTC)
        state["started_row"] = self._bookkeeping(state, start_request, self.store, state["record"])

    async def commit(self, state: dict) -> None:
        """Make the request's row final, once; a write that failed is tried again by the next call."""
        if state.get("logged"):
            return
        record: RequestRecord = state["record"]
        record.latency_ms = (time.perf_counter() - state["started"]) * 1000
        record.completed_at = datetime.now(UTC)
        self._bookkeeping(state, self._write, state)
        state["logged"] = True
        self.finish(state)

    def finish(self, state: dict) -> None:
        """The request is over, its row final or its write failed: release its holds, count it in the metrics."""
        if state.get("finished"):
            return
        state["finished"] = True
        for listener in self.listeners:
            listener(state["record"], state)

    def _write(self, state: dict) -> None:
        record: RequestRecord = state["record"]
        key = state.pop("unchecked_key", None)
        if key is not None and record.account_id is None:
            # Refused before auth (body too large, malformed JSON, wrong method): the log still names the account.
            account = authenticate(self.store, key)
            if account is not None:
                record.account_id, record.api_key_id = account.account_id, account.api_key_id
        log_request(self.store, record, state.get("started_row"))

    @staticmethod
    def _bookkeeping(state: dict, write: Callable[..., Any], *args: Any) -> Any:
        started = time.perf_counter()
        try:
            return write(*args)
        finally:
            state["overhead_s"] += time.perf_counter() - started


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
        state["unchecked_key"] = parse_bearer(headers.get("authorization", ""))
        state["route"] = UNMATCHED_ROUTE  # until the router has matched one
        state["record"] = record = RequestRecord(
            created_at=datetime.now(UTC),
            endpoint=scope["path"],
            method=scope["method"],
            client_address=client[0] if client else None,
            user_agent=headers.get("user-agent") or None,
            gateway_instance=self.journal.instance,
        )
        held_start: Message | None = None

        async def send_after_logging(message: Message) -> None:
            nonlocal held_start
            if message["type"] == "http.response.start":
                record.status_code = message["status"]
                state["route"] = _route_template(scope)
                held_start = message
                return
            if message["type"] == "http.response.body":
                if not message.get("more_body", False):
                    await self.journal.commit(state)
                if held_start is not None:
                    await send(held_start)
                    held_start = None
            await send(message)

        failed = False
        try:
            await self.app(scope, self._limited(receive, headers), send_after_logging)
        except Exception:
            failed = True
            record.status_code = 500
            record.error_type = record.error_type or "server_error"
            raise
        finally:
            try:
                if not state.get("logged"):
                    state["route"] = _route_template(scope)
                    if not failed:  # the app returned with its response unfinished: a stream whose client left
                        record.status_code = ClientDisconnectedError.status_code
                        record.error_type = ClientDisconnectedError.error_type
                        record.error_message = "The client disconnected before the whole answer was sent."
                    await self.journal.commit(state)
            finally:
                self.journal.finish(state)  # even when the row could not be written: holds never leak

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


def _route_template(scope: Scope) -> str:
    """The path template of the route that served the request (`/v1/models/{model:path}`), never the raw path."""
    route = scope.get("route")
    return getattr(route, "path", None) or UNMATCHED_ROUTE


def _too_large(limit: int) -> HTTPException:
    # Raised while FastAPI reads the body, which lets only HTTPException through as what it is.
    return HTTPException(413, f"The request body is larger than {limit} bytes.")


def _refuse(limit: int) -> Receive:
    async def receive() -> Message:
        raise _too_large(limit)

    return receive
