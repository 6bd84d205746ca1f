"""The official openai client against the gateway serving the tiny model."""

import json
import time

import httpx
import openai
import pytest
from sqlalchemy import select

from alambic.generation import GenerationEngine, GenerationRequest, SamplingParams
from alambic.generation.backends import TransformersBackend
from alambic.store.schema import RequestLog
from conftest import start_gateway

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
    health = httpx.get(f"{gateway.url}/healthz").json()
    assert health["status"] == "ok" and health["gguf_type"] is None  # transformers: no GGUF
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


REFUSED = {
    "response_format": {"response_format": {"type": "json_object"}},
    "response_format schema": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "answer", "schema": {"type": "object"}}}
    },
    "min_p": {"extra_body": {"min_p": 0.1}},
    "repetition_penalty": {"extra_body": {"repetition_penalty": 1.2}},
    "logit_bias": {"logit_bias": {"42": 5}},
    "frequency_penalty": {"frequency_penalty": 0.5},
    "tool_choice": {"tool_choice": "required"},
}


@pytest.mark.parametrize(("field", "options"), REFUSED.items(), ids=REFUSED.keys())
def test_a_field_the_server_does_not_implement_is_refused_by_name(gateway, field, options):
    client = gateway.client(gateway.key("alice"))
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, **options)
    field = field.split()[0]
    assert (refused.value.param, refused.value.type) == (field, "invalid_request_error")
    assert field in refused.value.message


def test_best_of_is_refused_on_legacy_completions(gateway):
    client = gateway.client(gateway.key("alice"))
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model="tiny", prompt="Once", max_tokens=2, best_of=3)
    assert refused.value.param == "best_of"
    assert client.completions.create(model="tiny", prompt="Once", max_tokens=2, best_of=1).choices


def test_fields_that_change_no_answer_are_accepted(gateway):
    client = gateway.client(gateway.key("alice"))
    response = client.chat.completions.create(
        model="tiny",
        messages=MESSAGES,
        max_tokens=2,
        user="u-1",
        metadata={"team": "a"},
        store=False,
        service_tier="auto",
        parallel_tool_calls=False,
        response_format={"type": "text"},
        presence_penalty=0,
        logit_bias={},
        extra_body={"safety_identifier": "u-1", "prompt_cache_key": "k"},
    )
    assert response.choices[0].finish_reason in ("stop", "length")


def test_a_field_of_the_wrong_type_is_a_400_as_openai_answers(gateway):
    client = gateway.client(gateway.key("alice"))
    with pytest.raises(openai.BadRequestError) as refused:
        client.chat.completions.create(model="tiny", messages=MESSAGES, temperature="hot")
    assert (refused.value.param, refused.value.type) == ("temperature", "invalid_request_error")


def test_the_developer_role_is_the_system_role(gateway):
    client = gateway.client(gateway.key("alice"))

    def prompt_tokens(role: str) -> int:
        messages = [{"role": role, "content": "Answer briefly."}, *MESSAGES]
        return client.chat.completions.create(model="tiny", messages=messages, max_tokens=1).usage.prompt_tokens

    assert prompt_tokens("developer") == prompt_tokens("system")
    assert logged(gateway.store)[0].prompt[0]["role"] == "developer"  # the log keeps what the client sent


def test_retrieving_a_model(gateway):
    client = gateway.client(gateway.key("alice"))
    model = client.models.retrieve("tiny")
    assert (model.id, model.object, model.owned_by) == ("tiny", "model", "alambic")
    with pytest.raises(openai.NotFoundError) as missing:
        client.models.retrieve("gpt-9")
    assert (missing.value.code, missing.value.param) == ("model_not_found", "model")


@pytest.fixture
def one_slot(tiny, sqlite_store):
    """A gateway on an engine with one batch slot and one queue place, both taken by long requests."""
    engine = GenerationEngine(TransformersBackend(tiny), max_batch_size=1, max_queue=1)
    long = GenerationRequest(
        tiny.tokenizer.encode("Once upon a time"), SamplingParams(max_tokens=2000, min_tokens=2000)
    )
    running = engine.submit(long, lambda event: None)
    deadline = time.monotonic() + 30
    while engine.active_sequences == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    waiting = engine.submit(long, lambda event: None)
    try:
        yield from start_gateway(engine, sqlite_store)
    finally:
        running.cancel()
        waiting.cancel()
        engine.close()


@pytest.mark.parametrize("stream", [False, True], ids=["whole", "streamed"])
def test_refusals_by_the_engine_have_the_same_status_streamed_or_not(one_slot, stream):
    client = one_slot.client(one_slot.key("alice"))

    def ask(**options):
        answer = client.chat.completions.create(model="tiny", messages=MESSAGES, max_tokens=2, stream=stream, **options)
        return list(answer) if stream else answer

    with pytest.raises(openai.BadRequestError) as too_many:
        ask(n=2)  # more samples than the batch holds
    assert too_many.value.param == "n"
    with pytest.raises(openai.InternalServerError) as busy:
        ask()  # the queue is full
    assert busy.value.status_code == 503
    assert [row.status_code for row in logged(one_slot.store)] == [400, 503]
