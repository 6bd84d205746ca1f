"""The harvester against failures: a flaky server, malformed answers, a failed turn in a conversation, being
killed with SIGKILL mid-run, and resumes that would mix settings or overspend a budget."""

import asyncio
import dataclasses
import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from rich.console import Console

from alambic.errors import AlambicError
from alambic.harvest import Budget, HarvestJob, Prompt, RetryPolicy, Sampling, harvest
from alambic.harvest.progress import HarvestProgress
from alambic.serve.server import serve_in_thread

Fault = Callable[[dict], Awaitable[Response | dict | list | None]]


def fake_openai_server(fault: Fault | None = None) -> tuple[FastAPI, list[dict]]:
    """Answers like OpenAI (10 prompt tokens, 4 per sample), unless `fault(body)` returns something else to
    answer; also returns the list of request bodies it was sent."""
    app, requests = FastAPI(), []

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
        requests.append(body)
        answer = await fault(body) if fault is not None else None
        return answer if answer is not None else completion(body)

    return app, requests


def completion(body: dict) -> dict:
    question, samples = body["messages"][-1]["content"], body.get("n", 1)
    return {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": body["model"],
        "choices": [
            {
                "index": i,
                "message": {"role": "assistant", "content": f"answer {i} to {question}"},
                "finish_reason": "stop",
            }
            for i in range(samples)
        ],
        "usage": {"prompt_tokens": 10, "completion_tokens": 4 * samples, "total_tokens": 10 + 4 * samples},
    }


def fake_job(url: str, out: Path, items: tuple[Prompt, ...], **options) -> HarvestJob:
    defaults = {
        "endpoint": f"{url}/v1",
        "model": "m",
        "api_keys": ("k",),
        "sampling": Sampling(max_tokens=4),
        "retry": RetryPolicy(max_attempts=2, base_delay_s=0.01, max_delay_s=0.05, timeout_s=5),
    }
    return HarvestJob(prompts=items, out=out, **{**defaults, **options})


def shard_rows(out: Path) -> list[dict]:
    return [json.loads(line) for shard in sorted(out.glob("part-*.jsonl")) for line in shard.open()]


def error_rows(out: Path) -> list[dict]:
    path = out / "errors.log"
    return [json.loads(line) for line in path.open()] if path.exists() else []


def flaky_openai_server(seed: int = 0) -> tuple[FastAPI, Counter]:
    """Answers like OpenAI, except: 15% 429 with Retry-After, 15% 500, 10% too slow (a client timeout)."""
    outcomes, rng = Counter(), random.Random(seed)

    async def flaky(body: dict) -> Response | None:
        draw = rng.random()
        if draw < 0.15:
            outcomes["429"] += 1
            return JSONResponse({"error": {"message": "slow down"}}, 429, headers={"Retry-After": "0.05"})
        if draw < 0.30:
            outcomes["500"] += 1
            return JSONResponse({"error": {"message": "boom"}}, 500)
        if draw < 0.40:
            outcomes["slow"] += 1
            await asyncio.sleep(2)
        outcomes["ok"] += 1
        return None

    app, _ = fake_openai_server(flaky)
    return app, outcomes


def test_harvest_completes_through_429s_500s_and_timeouts(tmp_path):
    app, outcomes = flaky_openai_server()
    items = tuple(Prompt.of(f"question {i}") for i in range(200))
    with serve_in_thread(app) as url:
        stats = harvest(
            HarvestJob(
                endpoint=f"{url}/v1",
                model="m",
                api_keys=("k",),
                prompts=items,
                out=tmp_path / "out",
                concurrency=16,
                sampling=Sampling(max_tokens=4, n=2),
                retry=RetryPolicy(max_attempts=30, base_delay_s=0.01, max_delay_s=0.05, timeout_s=0.5),
                seed=0,
            )
        )
    assert stats.status == "complete" and stats.failed == 0
    written = [json.loads(line) for shard in Path(tmp_path / "out").glob("part-*.jsonl") for line in shard.open()]
    keys = Counter((r["prompt_id"], r["sample"]) for r in written)
    assert set(keys) == {(p.prompt_id, s) for p in items for s in (0, 1)} and max(keys.values()) == 1
    assert stats.retries["429"] == outcomes["429"] and stats.retries["5xx"] == outcomes["500"]
    assert stats.retries["timeout"] >= 1 and outcomes["slow"] >= 1
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["retries_this_run"] == dict(stats.retries)
    assert any(r["attempts"] > 1 for r in written)


def test_killed_three_times_then_resumed_every_prompt_is_answered_exactly_once(gateway, tmp_path):
    key = gateway.key("harvester")
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Prompt {i}, tell me something."}) + "\n" for i in range(600)))
    out = tmp_path / "out"
    command = [
        sys.executable, "-m", "alambic", "harvest", "--endpoint", f"{gateway.url}/v1", "--api-key", key,
        "--model", "tiny", "--prompts", str(prompts), "--out", str(out), "--concurrency", "8", "--max-tokens", "32",
    ]  # fmt: skip
    rng = random.Random(7)
    for _ in range(3):
        process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(1.5, 3.0))
        os.kill(process.pid, signal.SIGKILL)
        process.wait()
    partial = sum(1 for shard in out.glob("part-*.jsonl") for _ in shard.open())
    assert partial < 600  # the kills landed mid-harvest

    finished = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    lines = [line for shard in out.glob("part-*.jsonl") for line in shard.read_text().splitlines()]
    written = [json.loads(line) for line in lines]  # every line whole
    ids = Counter(r["prompt_id"] for r in written)
    assert len(ids) == 600 and set(ids.values()) == {1}
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"


def questions(count: int, prefix: str = "question") -> tuple[Prompt, ...]:
    return tuple(Prompt.of(f"{prefix} {i}") for i in range(count))


MALFORMED = {
    "no choices": {"id": "x", "object": "chat.completion", "model": "m"},
    "an empty list of choices": {"choices": [], "model": "m"},
    "a choice without content": {"choices": [{"index": 0, "message": {"role": "assistant"}, "finish_reason": "stop"}]},
    "a choice that is not an object": {"choices": ["hello"]},
    "an error in a 200": {"error": {"message": "upstream overloaded"}},
    "a list, not an object": [1, 2, 3],
    "not JSON": PlainTextResponse("<html>gateway hiccup</html>"),
}


def test_malformed_answers_are_recorded_as_errors_and_the_rest_complete(tmp_path):
    faults = dict(MALFORMED)

    async def malformed(body: dict) -> Response | dict | list | None:
        return faults.get(body["messages"][-1]["content"])

    good = questions(5)
    bad = tuple(Prompt.of(question) for question in MALFORMED)
    app, _ = fake_openai_server(malformed)
    out = tmp_path / "out"
    with serve_in_thread(app) as url:
        stats = harvest(fake_job(url, out, good + bad, concurrency=4))
        answered = sorted(r["prompt_id"] for r in shard_rows(out))
        faults.clear()  # the server mended: the failed rows are asked again on resume
        resumed = harvest(fake_job(url, out, good + bad))
    assert stats.status == "incomplete" and stats.rows_done == 5 and stats.failed == len(MALFORMED)
    assert answered == sorted(p.prompt_id for p in good)
    errors = {e["prompt_id"]: e for e in error_rows(out)}
    assert set(errors) == {p.prompt_id for p in bad}
    assert all(e["error"].startswith("malformed answer") and e["attempts"] == 1 for e in errors.values())
    assert "upstream overloaded" in errors[Prompt.of("an error in a 200").prompt_id]["error"]
    assert resumed.status == "complete" and resumed.rows_written == len(MALFORMED)


def test_a_missing_sample_0_fails_the_later_turns_of_its_conversation_not_the_harvest(tmp_path):
    async def drop_sample_0(body: dict) -> Response | dict | None:
        question = body["messages"][-1]["content"]
        if question == "refused":
            return JSONResponse({"error": {"message": "no"}}, 400)
        if question != "first":
            return None
        answer = completion(body)
        answer["choices"] = answer["choices"][1:]  # sample 1 answered, sample 0 never came
        return answer

    broken, refused = Prompt.of(["first", "second", "third"]), Prompt.of(["refused", "next"])
    whole = Prompt.of(["hello", "and then?"])
    app, requests = fake_openai_server(drop_sample_0)
    out = tmp_path / "out"
    with serve_in_thread(app) as url:
        stats = harvest(fake_job(url, out, (broken, refused, whole), sampling=Sampling(max_tokens=4, n=2)))
    assert stats.status == "incomplete" and stats.failed == 5 + 4
    written = {(r["prompt_id"], r["turn"], r["sample"]) for r in shard_rows(out)}
    assert written == {(broken.prompt_id, 0, 1)} | {(whole.prompt_id, t, s) for t in (0, 1) for s in (0, 1)}
    reasons = {(e["prompt_id"], e["turn"], e["sample"]): e["error"] for e in error_rows(out)}
    later = {(broken.prompt_id, t, s) for t in (1, 2) for s in (0, 1)} | {(refused.prompt_id, 1, s) for s in (0, 1)}
    assert set(reasons) == {(broken.prompt_id, 0, 0), (refused.prompt_id, 0, 0), (refused.prompt_id, 0, 1)} | later
    assert "no choice for sample 0" in reasons[(broken.prompt_id, 0, 0)]
    assert reasons[(refused.prompt_id, 0, 1)].startswith("HTTP 400")
    assert all(reasons[key] == "an earlier turn failed" for key in later)
    assert not any(r["messages"][-1]["content"] in ("second", "third", "next") for r in requests)


CHANGED_SAMPLING = {
    "max_tokens": 8,
    "temperature": 0.5,
    "top_p": 0.9,
    "n": 2,
    "seed": 3,
    "stop": ("x",),
    "top_logprobs": 2,
}


@pytest.mark.parametrize(
    ("setting", "change"),
    [
        *((name, {"sampling": Sampling(**{"max_tokens": 4, name: value})}) for name, value in CHANGED_SAMPLING.items()),
        ("model", {"model": "another"}),
        ("endpoint", {"endpoint": "http://127.0.0.1:9/v1"}),  # refused before it is even reached
        ("system", {"system": "You are terse."}),
    ],
)
def test_a_resume_that_would_change_the_answers_is_refused_naming_the_setting(tmp_path, setting, change):
    assert set(CHANGED_SAMPLING) == {f.name for f in dataclasses.fields(Sampling)}  # every sampling setting
    app, requests = fake_openai_server()
    out = tmp_path / "out"
    with serve_in_thread(app) as url:
        harvest(fake_job(url, out, questions(3)))
        before, sent = sorted(out.iterdir()), len(requests)
        system = change.pop("system", None)
        items = tuple(Prompt.of(p.turns, system) for p in questions(4))
        with pytest.raises(AlambicError) as refused:
            harvest(fake_job(url, out, items, **change))
    message = refused.value.message
    assert "\n" not in message and set(re.findall(r"(\w+) \S+ \(now ", message)) == {setting}
    assert len(requests) == sent and sorted(out.iterdir()) == before


def test_a_resume_may_change_what_does_not_change_the_answers(tmp_path):
    app, _ = fake_openai_server()
    out = tmp_path / "out"
    with serve_in_thread(app) as url:
        harvest(fake_job(url, out, questions(3)))
        resumed = harvest(
            fake_job(url, out, questions(5), concurrency=2, api_keys=("k1", "k2"), budget=Budget(max_tokens=10**6))
        )
    assert resumed.status == "complete" and resumed.rows_written == 2


def test_a_resume_from_a_teacher_at_a_new_address_needs_endpoint_moved(tmp_path):
    first, _ = fake_openai_server()
    moved, requests = fake_openai_server()
    out = tmp_path / "out"
    with serve_in_thread(first) as url:
        harvest(fake_job(url, out, questions(3)))
    with serve_in_thread(moved) as url:
        with pytest.raises(AlambicError, match="--endpoint-moved"):
            harvest(fake_job(url, out, questions(5)))
        resumed = harvest(fake_job(url, out, questions(5), endpoint_moved=True))
    assert resumed.status == "complete" and resumed.rows_written == 2 and len(requests) == 2
    assert json.loads((out / "manifest.json").read_text())["endpoint"] == f"{url}/v1"
    with pytest.raises(AlambicError, match="temperature"):  # only the endpoint may move
        harvest(fake_job(url, out, questions(5), endpoint_moved=True, sampling=Sampling(max_tokens=4, temperature=0)))


def test_the_cli_refuses_a_resume_with_another_temperature_in_one_line(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("one\ntwo\n")
    app, _ = fake_openai_server()
    with serve_in_thread(app) as url:
        command = [
            sys.executable, "-m", "alambic", "harvest", "--endpoint", f"{url}/v1", "--api-key", "k", "--model", "m",
            "--prompts", str(prompts), "--out", str(tmp_path / "out"), "--max-tokens", "4",
        ]  # fmt: skip
        subprocess.run(command, capture_output=True, check=True, timeout=120)
        refused = subprocess.run([*command, "--temperature", "0.5"], capture_output=True, text=True, timeout=120)
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    [line] = refused.stderr.strip().splitlines()
    assert line.startswith("error:") and "temperature 1.0 (now 0.5)" in line


@pytest.mark.parametrize(
    "budget",
    [
        Budget(max_tokens=70),  # 14 tokens a request: 5 requests
        Budget(max_cost=0.1, price_per_1k_prompt_tokens=1.0, price_per_1k_completion_tokens=2.5),  # $0.02 each
    ],
    ids=["tokens", "cost"],
)
def test_a_resumed_harvest_counts_what_the_dataset_holds_toward_its_budget(tmp_path, budget):
    app, requests = fake_openai_server()
    out = tmp_path / "out"
    with serve_in_thread(app) as url:
        first = harvest(fake_job(url, out, questions(20), concurrency=1, budget=budget))
        assert first.status == "budget_exhausted" and first.rows_written == 5
        again = harvest(fake_job(url, out, questions(20), concurrency=1, budget=budget))
    assert again.status == "budget_exhausted" and again.rows_written == 0 and len(requests) == 5
    assert len(shard_rows(out)) == 5
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["prompt_tokens_total"] == 50 and manifest["completion_tokens_total"] == 20


def test_a_resume_counts_samples_without_their_own_token_count_at_max_tokens(tmp_path):
    app, requests = fake_openai_server()  # n=2 without logprobs: a row cannot say its own completion tokens
    out = tmp_path / "out"
    settings = {"concurrency": 1, "sampling": Sampling(max_tokens=4, n=2), "budget": Budget(max_tokens=54)}
    with serve_in_thread(app) as url:
        harvest(fake_job(url, out, questions(3), **settings))
        again = harvest(fake_job(url, out, questions(6), **settings))
    assert len(requests) == 3 and again.status == "budget_exhausted"  # 3 x (10 + 2 x 4) = 54 held


def test_a_teacher_slower_than_the_concurrency_assumes_is_answered_at_a_lower_limit(tmp_path):
    """The teacher answers at once while at most 3 requests are in flight; beyond that it is too slow, as a CPU
    shared by too many sequences is, and drops the work when the client gives up (the gateway's 499). Sent 16
    at a time, most requests would time out on every retry; the harvest must bring its concurrency down and
    answer every prompt exactly once."""
    timeout, most = 0.3, 3
    in_flight, seen, app = 0, Counter(), FastAPI()

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        nonlocal in_flight
        body = await request.json()
        in_flight += 1
        try:
            if in_flight <= most:
                seen["answered"] += 1
                await asyncio.sleep(0.02)
                return completion(body)
            seen["crowded"] += 1
            for _ in range(500):  # until the client gives up (5 s at most)
                if await request.is_disconnected():
                    break
                await asyncio.sleep(0.01)
            return Response(status_code=499)
        finally:
            in_flight -= 1

    items, out = questions(40), tmp_path / "out"
    retry = RetryPolicy(max_attempts=10, base_delay_s=0.01, max_delay_s=0.05, timeout_s=timeout)
    with serve_in_thread(app) as url:
        stats = harvest(fake_job(url, out, items, concurrency=16, retry=retry, seed=0))
    assert stats.status == "complete" and stats.failed == 0 and seen["crowded"] >= 1
    written = shard_rows(out)
    assert sorted(r["prompt_id"] for r in written) == sorted(p.prompt_id for p in items)
    assert all(r["attempts"] <= 10 for r in written) and stats.retries["timeout"] >= 1
    assert stats.concurrency_lowest <= most and 1 <= stats.concurrency_limit <= 16
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["concurrency_lowest"] == stats.concurrency_lowest
    console = Console(record=True, width=400)
    HarvestProgress(console).summarise(stats, out)
    assert f"{stats.concurrency_lowest} at the lowest" in console.export_text()


@pytest.mark.parametrize(("headers", "cut"), [({"Retry-After": "0.01"}, False), ({}, True)])
def test_a_429_that_names_its_wait_is_waited_out_and_one_that_does_not_cuts_the_concurrency(tmp_path, headers, cut):
    """A rate limit says when to come back: the harvest waits, and sending fewer at once would not help. A 429
    without Retry-After is a server shedding load, as a 503 is."""
    refused = Counter()

    async def first_refused(body: dict) -> Response | None:
        prompt = body["messages"][-1]["content"]
        if not refused[prompt]:
            refused[prompt] += 1
            return JSONResponse({"error": {"message": "slow down"}}, 429, headers=headers)
        return None

    app, _ = fake_openai_server(first_refused)
    retry = RetryPolicy(max_attempts=5, base_delay_s=0.01, max_delay_s=0.02)
    with serve_in_thread(app) as url:
        stats = harvest(fake_job(url, tmp_path / "out", questions(32), concurrency=8, retry=retry, seed=0))
    assert stats.status == "complete" and stats.retries["429"] == 32
    assert (stats.concurrency_lowest < 8) is cut
