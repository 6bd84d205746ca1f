"""The official openai client against the gateway serving the tiny model."""

import json

import httpx
import pytest
from sqlalchemy import select

from alambic.store.schema import RequestLog

MESSAGES = [{"role": "user", "content": "Say something."}]


def logged(store):
    with store.session() as session:
        return session.scalars(select(RequestLog).order_by(RequestLog.id)).all()


def test_chat_completion(gateway):
    client = gateway.client(gateway.key("alice"))
    response = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=12, seed=1)
    [choice] = response.choices
    assert response.object == "chat.completion" and response.model == "tiny"
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    [row] = logged(gateway.store)
    assert row.status_code == 200 and row.response_texts == [choice.message.content]
    assert row.prompt == MESSAGES and row.seed == 1 and row.max_tokens == 12
    assert (row.prompt_tokens, row.completion_tokens) == (
        response.usage.prompt_tokens,
        response.usage.completion_tokens,
    )
    assert row.account_id is not None and row.client_address == "127.0.0.1" and row.latency_ms > 0


def test_streamed_chat_completion_matches_the_whole_one(gateway):
    client = gateway.client(gateway.key("alice"))
    whole = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=16, temperature=0)
    chunks = list(
        client.chat.completions.create(
            model="tiny",
            messages=MESSAGES,
            max_tokens=16,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert streamed == whole.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == whole.choices[0].finish_reason
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens
    rows = logged(gateway.store)
    assert rows[-1].stream and rows[-1].response_texts == [streamed] and rows[-1].status_code == 200


def test_logprobs_with_top_alternatives_and_usage_that_counts_them(gateway):
    client = gateway.client(gateway.key("alice"))
    response = client.chat.completions.create(
        model="tiny", messages=MESSAGES, max_tokens=10, logprobs=True, top_logprobs=5
    )
    content = response.choices[0].logprobs.content
    assert len(content) == response.usage.completion_tokens
    assert "".join(t.token for t in content) == response.choices[0].message.content
    for token in content:
        assert len(token.top_logprobs) == 5 and token.logprob <= 0
        assert token.logprob <= token.top_logprobs[0].logprob + 1e-6
        # bytes are exact, so a token may hold part of a character; its text shows that as U+FFFD
        assert bytes(token.bytes).decode(errors="replace") == token.token


def test_n_choices_and_legacy_completions(gateway):
    client = gateway.client(gateway.key("alice"))
    chat = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=5, n=3, seed=3)
    assert [c.index for c in chat.choices] == [0, 1, 2]
    completion = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, logprobs=2)
    assert completion.object == "text_completion"
    assert len(completion.choices[0].logprobs.tokens) == completion.usage.completion_tokens
    assert all(len(alternatives) == 2 for alternatives in completion.choices[0].logprobs.top_logprobs)
    streamed = client.completions.create(model="tiny", prompt="Once upon a time", max_tokens=6, stream=True)
    assert sum(1 for c in streamed if c.choices[0].finish_reason) == 1


def test_stop_sequences_and_seed_are_honoured(gateway):
    client = gateway.client(gateway.key("alice"))

    def ask(**options):
        return client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=20, **options)

    first, again = ask(seed=42), ask(seed=42)
    assert first.choices[0].message.content == again.choices[0].message.content
    text = first.choices[0].message.content
    stop = text[len(text) // 2 : len(text) // 2 + 3]
    if stop.strip():
        cut = ask(seed=42, stop=[stop])
        assert cut.choices[0].message.content == text[: text.index(stop)]
        assert cut.choices[0].finish_reason == "stop"


def test_models_health_and_metrics(gateway):
    client = gateway.client(gateway.key("alice"))
    assert [m.id for m in client.models.list()] == ["tiny"]
    assert httpx.get(f"{gateway.url}/healthz").json()["status"] == "ok"
    client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=3)
    metrics = httpx.get(f"{gateway.url}/metrics").text
    assert 'alambic_requests_total{endpoint="/v1/chat/completions",status="200"} 1.0' in metrics
    assert "alambic_active_sequences" in metrics


def test_a_row_is_committed_before_the_client_has_the_answer(gateway):
    key = gateway.key("alice")
    body = {"model": "tiny", "messages": MESSAGES, "max_tokens": 4}
    answer = gateway.post("/v1/chat/completions", key, json=body).json()
    assert logged(gateway.store)[-1].response_texts == [answer["choices"][0]["message"]["content"]]
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json={**body, "stream": True}, headers=headers
    ) as r:
        streamed = ""
        for line in r.iter_lines():
            if line == "data: [DONE]":
                rows = logged(gateway.store)  # the stream is still open
                assert len(rows) == 2 and rows[-1].response_texts == [streamed]
                break
            if line.startswith("data: "):
                streamed += json.loads(line[6:])["choices"][0]["delta"].get("content", "")
        else:
            pytest.fail("the stream ended without [DONE]")
