"""Each kind of bad request gets its status and an OpenAI-style error body, and is logged; never a 500."""

import pytest
from sqlalchemy import select

from alambic.store.schema import RequestLog

USER = [{"role": "user", "content": "hi"}]


def chat(**fields):
    return {"json": {"model": "tiny", "messages": USER, "max_tokens": 2, **fields}}


CASES = {
    "malformed JSON": ("/v1/chat/completions", {"content": b'{"model": "tiny", "messages": ['}, 400, None),
    "not an object": ("/v1/chat/completions", {"json": [1, 2]}, 400, None),
    "empty body": ("/v1/chat/completions", {"content": b""}, 400, None),
    "unknown model": ("/v1/chat/completions", chat(model="gpt-9"), 404, "model"),
    "messages wrong type": ("/v1/chat/completions", chat(messages="hello"), 400, "messages"),
    "temperature wrong type": ("/v1/chat/completions", chat(temperature="hot"), 400, "temperature"),
    "temperature out of range": ("/v1/chat/completions", chat(temperature=3), 400, "temperature"),
    "missing model": ("/v1/chat/completions", {"json": {"messages": USER}}, 400, "model"),
    "unknown role": (
        "/v1/chat/completions",
        chat(messages=[{"role": "wizard", "content": "x"}]),
        400,
        "messages.0.role",
    ),
    "empty messages": ("/v1/chat/completions", chat(messages=[]), 400, "messages"),
    "max_tokens over the limit": ("/v1/chat/completions", chat(max_tokens=100_000), 400, "max_tokens"),
    "max_tokens zero": ("/v1/chat/completions", chat(max_tokens=0), 400, "max_tokens"),
    "prompt longer than the context": (
        "/v1/completions",
        {"json": {"model": "tiny", "prompt": "word " * 2100}},
        400,
        "messages",
    ),
    "max_tokens past the context": (
        "/v1/completions",
        {"json": {"model": "tiny", "prompt": "word " * 1900, "max_tokens": 300}},
        400,
        "messages",
    ),
    "too many stop sequences": ("/v1/chat/completions", chat(stop=["a", "b", "c", "d", "e"]), 400, "stop"),
    "top_logprobs without logprobs": ("/v1/chat/completions", chat(top_logprobs=3), 400, None),
    "top_logprobs over 20": ("/v1/chat/completions", chat(logprobs=True, top_logprobs=21), 400, "top_logprobs"),
    "n too large": ("/v1/chat/completions", chat(n=1000), 400, "n"),
    "unsupported tools": ("/v1/chat/completions", chat(tools=[{"type": "function"}]), 400, "tools"),
    "unsupported response_format": (
        "/v1/chat/completions",
        chat(response_format={"type": "json_object"}),
        400,
        "response_format",
    ),
    "unknown field": ("/v1/chat/completions", chat(min_p=0.1), 400, "min_p"),
    "unknown message field": (
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": "x", "tool_call_id": "call_1"}]),
        400,
        "messages.0.tool_call_id",
    ),
    "presence_penalty": ("/v1/chat/completions", chat(presence_penalty=0.5), 400, "presence_penalty"),
    "best_of": ("/v1/completions", {"json": {"model": "tiny", "prompt": "x", "best_of": 2}}, 400, "best_of"),
    "echo": ("/v1/completions", {"json": {"model": "tiny", "prompt": "x", "echo": True}}, 400, "echo"),
    "empty prompt": ("/v1/completions", {"json": {"model": "tiny", "prompt": ""}}, 400, "prompt"),
    "token ids outside the vocabulary": (
        "/v1/completions",
        {"json": {"model": "tiny", "prompt": [1, 10**9]}},
        400,
        "prompt",
    ),
    "body too large": (
        "/v1/chat/completions",
        chat(messages=[{"role": "user", "content": "x" * 2_000_000}]),
        413,
        None,
    ),
    "unknown path": ("/v1/embeddings", {"json": {}}, 404, None),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_bad_input_gets_its_status_and_an_openai_error_body(gateway, case):
    path, request, status, param = case
    key = gateway.key("alice")
    response = gateway.post(path, key, **request)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["message"] and "Traceback" not in error["message"]
    assert error["type"] == "invalid_request_error"
    if param is not None:
        assert error["param"] == param
    with gateway.store.session() as session:
        [row] = session.scalars(select(RequestLog)).all()
    assert row.status_code == status and row.error_message == error["message"]


# Client input longer than its column: PostgreSQL refuses it (SQLite ignores lengths), so it is cut to fit.
OVERLONG = {
    "model name": ("/v1/chat/completions", chat(model="m" * 300), 404, "model", "m" * 300),
    "path": ("/v1/" + "p" * 100, {"json": {}}, 404, "endpoint", "/v1/" + "p" * 100),
    "user agent": (
        "/v1/chat/completions",
        {**chat(model="gpt-9"), "headers": {"User-Agent": "u" * 500}},
        404,
        "user_agent",
        "u" * 500,
    ),
}


@pytest.mark.parametrize("case", OVERLONG.values(), ids=OVERLONG.keys())
def test_overlong_input_is_logged_cut_to_its_column(gateway, case):
    path, request, status, column, sent = case
    response = gateway.post(path, gateway.key("alice"), **request)
    assert response.status_code == status, response.text
    assert response.json()["error"]["message"]
    with gateway.store.session() as session:
        [row] = session.scalars(select(RequestLog)).all()
    length = RequestLog.__table__.c[column].type.length
    assert getattr(row, column) == sent[:length] and row.status_code == status
