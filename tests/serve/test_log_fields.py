"""What the monitor needs from each logged request (issue 23, item 0): the harvest's prompt hash, a conversation
fingerprint shared by follow-ups, admission and completion times, time to first token, the gateway instance,
and the watermark key's id and parameters, never the key."""

import json

import httpx
from sqlalchemy import select

from alambic.harvest import Prompt
from alambic.store.schema import RequestLog
from alambic.watermark import KirchenbauerScheme
from conftest import start_gateway

KEY = "provider-secret-key"


def rows(store) -> list[RequestLog]:
    with store.session() as session:
        return session.scalars(select(RequestLog).order_by(RequestLog.id)).all()


def test_rows_carry_the_prompt_hash_the_conversation_and_their_times(gateway):
    client = gateway.client(gateway.key("alice"))
    system = {"role": "system", "content": "Be brief."}
    first = [system, {"role": "user", "content": "Name a colour."}]
    client.chat.completions.create(model=gateway.model, messages=first, max_tokens=3)
    follow_up = [*first, {"role": "assistant", "content": "Blue."}, {"role": "user", "content": "Another?"}]
    client.chat.completions.create(model=gateway.model, messages=follow_up, max_tokens=3)
    other_answer = [*first, {"role": "assistant", "content": "Red."}, {"role": "user", "content": "Why?"}]
    list(client.chat.completions.create(model=gateway.model, messages=other_answer, max_tokens=3, stream=True))
    opener, second, third = rows(gateway.store)
    assert opener.prompt_hash == Prompt.of(["Name a colour."], "Be brief.").prompt_id  # as the harvest's prompt_id
    assert second.prompt_hash == Prompt.of(["Name a colour.", "Another?"], "Be brief.").prompt_id
    assert opener.conversation is None  # a first turn follows nothing
    assert second.conversation == third.conversation == opener.prompt_hash  # follow-ups of one opener share it
    for row in (opener, second, third):
        assert row.created_at <= row.admitted_at <= row.completed_at
        assert row.gateway_instance and ":" in row.gateway_instance  # host:pid by default
    assert third.first_token_ms is not None and 0 < third.first_token_ms <= third.latency_ms
    assert opener.watermark_key_id is None and opener.watermark_params is None


def test_a_completions_prompt_is_hashed_as_a_one_turn_prompt(gateway):
    gateway.client(gateway.key("bob")).completions.create(model=gateway.model, prompt="Once upon", max_tokens=2)
    [row] = rows(gateway.store)
    assert (row.prompt_hash, row.conversation) == (Prompt.of("Once upon").prompt_id, None)


def test_the_watermark_key_id_and_parameters_are_logged_and_the_key_never(engine, sqlite_store):
    scheme = KirchenbauerScheme(KEY, gamma=0.3, delta=4.0)
    for gateway in start_gateway(engine, sqlite_store, watermark=scheme, instance="eu-1"):
        headers = {"Authorization": f"Bearer {gateway.key('carol')}"}
        body = {"model": gateway.model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
        assert httpx.post(f"{gateway.url}/v1/chat/completions", json=body, headers=headers).status_code == 200
    [row] = rows(sqlite_store)
    assert row.gateway_instance == "eu-1"
    assert row.watermark_key_id == scheme.key_id and KEY not in scheme.key_id
    params = {"scheme": "kgw", "gamma": 0.3, "delta": 4.0, "context_width": 1, "logprobs": "plain"}
    assert row.watermark_params == params
    assert KEY not in json.dumps({c.name: str(getattr(row, c.name)) for c in RequestLog.__table__.columns})
    assert KirchenbauerScheme("another key").key_id != scheme.key_id
