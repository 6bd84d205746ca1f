"""Many clients at once: every request answered, batched together, logged once, with exact usage."""

import asyncio
import json
import time

import httpx
import pytest
from sqlalchemy import func, select

from alambic.store.schema import RequestLog

CLIENTS, REQUESTS_EACH = 50, 4


async def test_50_concurrent_clients_each_sending_4_requests(gateway, engine):
    keys = [gateway.key(f"client-{i}") for i in range(CLIENTS)]
    engine.largest_batch = 0

    async def client_session(i):
        client = gateway.async_client(keys[i])
        answers = []
        for j in range(REQUESTS_EACH):
            answers.append(
                await client.chat.completions.create(
                    model="tiny",
                    messages=[{"role": "user", "content": f"Question {j} from client {i}"}],
                    max_tokens=8,
                    logprobs=True,
                )
            )
        await client.close()
        return answers

    sessions = await asyncio.gather(*(client_session(i) for i in range(CLIENTS)))
    answers = [a for session in sessions for a in session]
    assert len(answers) == CLIENTS * REQUESTS_EACH
    for answer in answers:
        assert answer.usage.completion_tokens == len(answer.choices[0].logprobs.content) > 0
    assert engine.largest_batch > 1

    with gateway.store.session() as session:
        rows = session.scalars(select(RequestLog)).all()
        per_account = session.execute(select(RequestLog.account_id, func.count()).group_by(RequestLog.account_id)).all()
    assert len(rows) == CLIENTS * REQUESTS_EACH and all(r.status_code == 200 for r in rows)
    assert sorted(count for _, count in per_account) == [REQUESTS_EACH] * CLIENTS
    assert sum(r.completion_tokens for r in rows) == sum(a.usage.completion_tokens for a in answers)
    assert sum(r.prompt_tokens for r in rows) == sum(a.usage.prompt_tokens for a in answers)


def settled_log(gateway, engine) -> list[RequestLog]:
    """The log once the engine has no sequence left running and every row is final (a leaving client's row is
    made final last)."""
    deadline = time.monotonic() + 30
    rows = []
    while time.monotonic() < deadline:
        with gateway.store.session() as session:
            rows = session.scalars(select(RequestLog)).all()
        if rows and all(r.state == "complete" for r in rows) and engine.active_sequences == 0:
            break
        time.sleep(0.05)
    return rows


def test_a_client_leaving_mid_stream_is_logged_and_frees_its_slot(gateway, engine):
    key = gateway.key("leaver")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500, "stream": True}
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    ) as response:
        events = (json.loads(line[6:]) for line in response.iter_lines() if line.startswith("data: "))
        received = "".join(next(events)["choices"][0]["delta"].get("content", "") for _ in range(6))
    [row] = settled_log(gateway, engine)
    assert (row.status_code, row.error_type, row.state) == (499, "client_disconnected", "complete")
    # The row holds the text sent: what the client read, and at most what was in flight to it.
    assert 0 < row.completion_tokens < 500 and row.response_texts[0].startswith(received) and received
    assert engine.active_sequences == 0


def test_a_client_timing_out_before_its_answer_cancels_the_generation(gateway, engine):
    key = gateway.key("impatient")
    body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 500, "min_tokens": 500}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(
            f"{gateway.url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}, timeout=0.2
        )
    [row] = settled_log(gateway, engine)
    assert (row.status_code, row.error_type) == (499, "client_disconnected")
    assert engine.active_sequences == 0
