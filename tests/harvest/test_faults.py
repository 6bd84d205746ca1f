"""The harvester against failures: a flaky server, and being killed with SIGKILL mid-run."""

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from alambic.harvest import HarvestJob, Prompt, RetryPolicy, Sampling, harvest
from alambic.serve.server import serve_in_thread


def flaky_openai_server(seed: int = 0) -> tuple[FastAPI, Counter]:
    """Answers like OpenAI, except: 15% 429 with Retry-After, 15% 500, 10% too slow (a client timeout)."""
    app, outcomes, rng = FastAPI(), Counter(), random.Random(seed)

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await request.json()
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
        question = body["messages"][-1]["content"]
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
                for i in range(body.get("n", 1))
            ],
            "usage": {"prompt_tokens": 10, "completion_tokens": 4, "total_tokens": 14},
        }

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
