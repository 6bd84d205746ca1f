"""Is the harvester ever the bottleneck? Its request rate against the gateway's capacity, in one run.

The gateway serves the tiny model in its own process on loopback. Capacity is what a bare load generator
(httpx, reading each answer, no retries, no bookkeeping) gets at the same concurrency on the same requests;
then the harvester runs the same requests. Also: the harvester's own CPU time per 1,000 requests.
Run: `.venv/bin/python benchmarks/bench_harvest.py`.
"""

from __future__ import annotations

import asyncio
import tempfile
import time
from pathlib import Path

import httpx

from alambic.harvest import HarvestJob, Prompt, Sampling, run_harvest
from alambic.store import Store, create_account
from common import GatewayProcess, write_result

REQUESTS = 1000
CONCURRENCY = 32
MAX_TOKENS = 16


def prompts(tag: str) -> list[Prompt]:
    return [Prompt.of(f"{tag} request {i}: say something about the number {i}.") for i in range(REQUESTS)]


async def load_generator(url: str, key: str, items: list[Prompt]) -> float:
    """Requests per second with nothing but the HTTP calls."""
    queue = list(items)
    async with httpx.AsyncClient(
        base_url=url,
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
        limits=httpx.Limits(max_connections=CONCURRENCY),
    ) as client:

        async def worker():
            while queue:
                prompt = queue.pop()
                body = {
                    "model": "tiny",
                    "messages": [{"role": "user", "content": prompt.turns[0]}],
                    "max_tokens": MAX_TOKENS,
                    "seed": 1,
                }
                response = await client.post("/v1/chat/completions", json=body)
                response.raise_for_status()
                response.json()  # any client reads the answer

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        return len(items) / (time.perf_counter() - started)


async def harvester(url: str, key: str, items: list[Prompt], out: Path) -> tuple[float, float]:
    """Requests per second through the harvester, and its CPU seconds per 1,000 requests."""
    job = HarvestJob(
        endpoint=f"{url}/v1",
        model="tiny",
        api_keys=(key,),
        prompts=tuple(items),
        out=out,
        concurrency=CONCURRENCY,
        sampling=Sampling(max_tokens=MAX_TOKENS, seed=1),
    )
    cpu, started = time.process_time(), time.perf_counter()
    stats = await run_harvest(job)
    seconds, cpu = time.perf_counter() - started, time.process_time() - cpu
    assert stats.status == "complete", stats.status
    return len(items) / seconds, cpu / len(items) * 1000


async def main() -> None:
    with tempfile.TemporaryDirectory() as scratch:
        db = f"sqlite:///{Path(scratch) / 'bench.db'}"
        key = create_account(Store(db), "bench")
        gateway = GatewayProcess("--model", "tiny", db=db)
        try:
            await load_generator(gateway.url, key, prompts("warm-up")[:100])
            capacity = await load_generator(gateway.url, key, prompts("load"))
            rate, cpu_per_1000 = await harvester(gateway.url, key, prompts("harvest"), Path(scratch) / "out")
            capacity_after = await load_generator(gateway.url, key, prompts("again"))
        finally:
            gateway.close()
    baseline = (capacity + capacity_after) / 2  # measured before and after, against drift
    result = {
        "model": "tiny",
        "requests": REQUESTS,
        "concurrency": CONCURRENCY,
        "max_tokens": MAX_TOKENS,
        "gateway_capacity_req_s": baseline,
        "harvester_req_s": rate,
        "ratio": rate / baseline,
        "harvester_cpu_s_per_1000_requests": cpu_per_1000,
        "targets": {"ratio": ">= 0.95"},
    }
    print(
        f"capacity {baseline:.1f} req/s, harvester {rate:.1f} req/s: ratio {result['ratio']:.3f}; "
        f"harvester CPU {cpu_per_1000:.2f} s per 1000 requests"
    )
    print("wrote", write_result("harvest", result))


if __name__ == "__main__":
    asyncio.run(main())
