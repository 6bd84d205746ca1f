"""The request log as the gateway writes it: a row from admission on, final rows that survive a failed write,
refused requests that still name their account, and metrics that callers cannot fill with series."""

import asyncio
import json

import httpx
import pytest
from sqlalchemy import select
from sqlalchemy.exc import OperationalError

from alambic.serve import requestlog
from alambic.store import Policy
from alambic.store.schema import Account, RequestLog

BODY = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def rows(store) -> list[RequestLog]:
    with store.session() as session:
        return session.scalars(select(RequestLog).order_by(RequestLog.id)).all()


def account_id(store, name: str) -> int:
    with store.session() as session:
        return session.scalar(select(Account.id).where(Account.name == name))


def test_a_streamed_answer_has_its_row_in_progress_before_its_first_token(gateway):
    key = gateway.key("alice")
    body = {**BODY, "max_tokens": 50, "min_tokens": 50, "stream": True}
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers) as response:
        lines = (line for line in response.iter_lines() if line.startswith("data: "))
        next(lines)
        [row] = rows(gateway.store)  # what a gateway killed now would leave behind
        assert (row.state, row.account_id) == ("in_progress", account_id(gateway.store, "alice"))
        assert list(lines)[-1] == "data: [DONE]"
    [row] = rows(gateway.store)
    assert (row.state, row.status_code, row.completion_tokens) == ("complete", 200, 50)


@pytest.mark.parametrize("stream", [False, True])
def test_a_failed_write_is_tried_again_and_the_request_released(gateway, monkeypatch, stream):
    key = gateway.key("alice", Policy.THROTTLE, tokens_per_minute=10_000)
    write, calls = requestlog.log_request, []

    def fails_once(store, record, row_id=None):
        calls.append(record.status_code)
        if len(calls) == 1:
            raise OperationalError("UPDATE requests", {}, Exception("database is locked"))
        return write(store, record, row_id)

    monkeypatch.setattr(requestlog, "log_request", fails_once)
    if stream:
        with pytest.raises(httpx.RemoteProtocolError):  # a stream that could not be logged ends without [DONE]
            gateway.post("/v1/chat/completions", key, json={**BODY, "stream": True})
    else:
        assert gateway.post("/v1/chat/completions", key, json=BODY).status_code == 500
    [row] = rows(gateway.store)
    assert (row.state, row.status_code, row.error_type) == ("complete", 500, "server_error")
    assert len(calls) == 2
    gatekeeper = gateway.app.state.gatekeeper
    assert sum(gatekeeper.in_flight.values()) == sum(gatekeeper.held_tokens.values()) == 0


REFUSED_EARLY = {
    "body too large": ("POST", "/v1/chat/completions", {"content": b"x" * (2 << 20)}, 413),
    "malformed JSON": ("POST", "/v1/chat/completions", {"content": b'{"model": '}, 400),
    "wrong method": ("GET", "/v1/chat/completions", {}, 405),
    "unknown path": ("POST", "/v1/embeddings", {"json": {}}, 404),
}


@pytest.mark.parametrize("case", REFUSED_EARLY.values(), ids=REFUSED_EARLY.keys())
def test_a_request_refused_before_auth_is_logged_with_its_keys_account(gateway, case):
    method, path, request, status = case
    key = gateway.key("alice")
    response = httpx.request(method, f"{gateway.url}{path}", headers={"Authorization": f"Bearer {key}"}, **request)
    assert response.status_code == status
    [row] = rows(gateway.store)
    assert (row.status_code, row.account_id) == (status, account_id(gateway.store, "alice"))
    assert row.api_key_id is not None


def test_a_refused_request_with_a_wrong_key_names_no_account(gateway):
    response = gateway.post("/v1/chat/completions", "alb-wrong", content=b'{"model": ')
    assert response.status_code == 400
    [row] = rows(gateway.store)
    assert row.account_id is None and row.api_key_id is None


def test_metrics_label_requests_by_route_so_unknown_paths_add_no_series(gateway):
    key = gateway.key("alice")
    assert gateway.post("/v1/chat/completions", key, json=BODY).status_code == 200
    for n in range(3):
        assert gateway.post(f"/v1/made-up-{n}", key, json={}).status_code == 404
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'alambic_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in metrics
    assert 'alambic_requests_total{endpoint="unmatched",status="404"} 3.0' in metrics
    assert "made-up" not in metrics


def test_a_streamed_rows_text_is_the_text_sent(gateway):
    key = gateway.key("alice")
    headers = {"Authorization": f"Bearer {key}"}
    body = {**BODY, "max_tokens": 12, "stream": True}
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", json=body, headers=headers) as response:
        chunks = [json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: {")]
    sent = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    [row] = rows(gateway.store)
    assert row.response_texts == [sent] and row.completion_tokens == 12


@pytest.mark.parametrize("stream", [False, True])
def test_bookkeeping_runs_on_the_event_loop_without_a_thread_hop(gateway, monkeypatch, stream):
    # Under load a hop to a worker thread waits for the GIL behind generation (tens of ms per hop, measured);
    # each write is one short transaction, done where the request is handled.
    from alambic.serve import policy

    on_loop = []

    def recording(function):
        def call(*args, **kwargs):
            try:
                on_loop.append((function.__name__, asyncio.get_running_loop() is not None))
            except RuntimeError:
                on_loop.append((function.__name__, False))
            return function(*args, **kwargs)

        return call

    monkeypatch.setattr(policy, "authenticate", recording(policy.authenticate))
    monkeypatch.setattr(policy, "usage_since", recording(policy.usage_since))
    monkeypatch.setattr(requestlog, "start_request", recording(requestlog.start_request))
    monkeypatch.setattr(requestlog, "log_request", recording(requestlog.log_request))
    key = gateway.key("alice", Policy.THROTTLE, tokens_per_minute=10_000)
    assert gateway.post("/v1/chat/completions", key, json={**BODY, "stream": stream}).status_code == 200
    assert on_loop == [("authenticate", True), ("usage_since", True), ("start_request", True), ("log_request", True)]
