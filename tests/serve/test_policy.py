"""Keys, accounts and policies at the gateway: 401, 403, 429 with Retry-After, each in the log."""

import asyncio

import httpx
import openai
import pytest
from sqlalchemy import select

from alambic.store import Policy, set_policy
from alambic.store.schema import PolicyChange, RequestLog
from conftest import ADMIN_KEY

CHAT = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def statuses(store):
    with store.session() as session:
        return [(r.status_code, r.error_type) for r in session.scalars(select(RequestLog).order_by(RequestLog.id))]


@pytest.mark.parametrize(
    ("headers", "code"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Bearer alb-wrong"}, "invalid_api_key"),
        ({"Authorization": "Basic x"}, "missing_api_key"),
    ],
)
def test_missing_or_wrong_key_is_401_and_logged(gateway, headers, code):
    response = gateway.post("/v1/chat/completions", json=CHAT, headers=headers)
    assert response.status_code == 401
    assert response.json()["error"]["code"] == code
    assert statuses(gateway.store) == [(401, code)]


def test_blocked_account_is_403_and_logged(gateway):
    key = gateway.key("mallory", Policy.BLOCK)
    with pytest.raises(openai.PermissionDeniedError) as refused:
        gateway.client(key).chat.completions.create(**CHAT)
    assert refused.value.status_code == 403
    assert statuses(gateway.store) == [(403, "account_blocked")]


def test_throttled_account_gets_429_with_retry_after_once_over_its_limit(gateway):
    key = gateway.key("eve", Policy.THROTTLE, requests_per_minute=3)
    codes = [gateway.post("/v1/chat/completions", key, json=CHAT) for _ in range(5)]
    assert [r.status_code for r in codes] == [200, 200, 200, 429, 429]
    assert 1 <= int(codes[3].headers["Retry-After"]) <= 60
    assert codes[3].json()["error"]["type"] == "rate_limit_error"
    assert statuses(gateway.store) == [(200, None)] * 3 + [(429, "rate_limit_exceeded")] * 2


def test_token_limit_throttles_too(gateway):
    key = gateway.key("eve", Policy.THROTTLE, tokens_per_minute=10)
    first = gateway.post("/v1/chat/completions", key, json=CHAT)
    assert first.json()["usage"]["total_tokens"] > 10
    assert gateway.post("/v1/chat/completions", key, json=CHAT).status_code == 429


def test_policy_changes_take_effect_on_the_next_request(gateway):
    key = gateway.key("trudy")
    assert gateway.post("/v1/chat/completions", key, json=CHAT).status_code == 200
    set_policy(gateway.store, "trudy", Policy.BLOCK)  # as `alambic accounts policy` does, from another process
    assert gateway.post("/v1/chat/completions", key, json=CHAT).status_code == 403
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    changed = httpx.put(
        f"{gateway.url}/admin/accounts/trudy/policy", json={"policy": "allow", "reason": "appeal"}, headers=admin
    )
    assert changed.status_code == 200 and changed.json()["policy"] == "allow"
    assert gateway.post("/v1/chat/completions", key, json=CHAT).status_code == 200
    with gateway.store.session() as session:
        assert [c.actor for c in session.scalars(select(PolicyChange).order_by(PolicyChange.id))] == [
            "cli",
            "admin-api",
        ]


def test_admin_api_creates_accounts_and_refuses_other_keys(gateway):
    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    created = httpx.post(f"{gateway.url}/admin/accounts", json={"name": "carol"}, headers=admin)
    assert created.status_code == 201
    assert gateway.post("/v1/chat/completions", created.json()["api_key"], json=CHAT).status_code == 200
    listed = httpx.get(f"{gateway.url}/admin/accounts", headers=admin).json()["data"]
    assert [(a["name"], a["requests_logged"]) for a in listed] == [("carol", 1)]
    user_key = {"Authorization": f"Bearer {created.json()['api_key']}"}
    refused = httpx.get(f"{gateway.url}/admin/accounts", headers=user_key)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "not_admin"
    duplicate = httpx.post(f"{gateway.url}/admin/accounts", json={"name": "carol"}, headers=admin)
    assert duplicate.status_code == 409
    unknown = httpx.put(f"{gateway.url}/admin/accounts/nobody/policy", json={"policy": "block"}, headers=admin)
    assert unknown.status_code == 404


async def test_concurrent_requests_cannot_spend_more_tokens_than_the_limit_together(gateway):
    # Each asks for prompt + 200 tokens, over the 100-token limit alone: whatever the timing, once one is
    # admitted its tokens are held (in flight) or logged (done), so every other is refused.
    key = gateway.key("eve", Policy.THROTTLE, tokens_per_minute=100)
    client = gateway.async_client(key)

    async def ask():
        try:
            await client.chat.completions.create(**{**CHAT, "max_tokens": 200}, extra_body={"min_tokens": 200})
        except openai.RateLimitError:
            return 429
        return 200

    statuses_seen = await asyncio.gather(*(ask() for _ in range(8)))
    await client.close()
    assert sorted(statuses_seen) == [200] + [429] * 7
    gatekeeper = gateway.app.state.gatekeeper
    assert sum(gatekeeper.in_flight.values()) == sum(gatekeeper.held_tokens.values()) == 0
