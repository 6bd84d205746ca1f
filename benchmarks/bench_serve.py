"""Gateway throughput vs the same engine in-process, and the latency auth + logging add per request.

Real teacher (SmolLM2-135M-Instruct), ShareGPT first turns, 128 new tokens, greedy, 1/4/16 concurrent
clients. The in-process figure is measured in the same run on the same prompts, so the ratio is the
cost of HTTP, JSON, auth and the request log. Run: `.venv/bin/python benchmarks/bench_serve.py`.
"""

from __future__ import annotations

import asyncio
import re
import tempfile
import time
from pathlib import Path

import httpx
import openai

from alambic.generation import GenerationEngine, GenerationRequest, SamplingParams
from alambic.models import load_model
from alambic.store import Store, create_account
from common import GatewayProcess, sharegpt_first_turns, write_result

MAX_TOKENS = 128
REQUESTS = {1: 3, 4: 8, 16: 32}  # per concurrency level: two rounds where it is batched


async def run_concurrently(concurrency: int, prompts: list, ask) -> tuple[int, float]:
    """`concurrency` workers share `prompts`; returns (completion tokens, seconds)."""
    queue = list(prompts)
    tokens = 0

    async def worker():
        nonlocal tokens
        while queue:
            tokens += await ask(queue.pop())

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tokens, time.perf_counter() - started


async def in_process(engine: GenerationEngine, concurrency: int, prompts: list) -> tuple[int, float]:
    tokenizer = engine.loaded.tokenizer
    params = SamplingParams(max_tokens=MAX_TOKENS, temperature=0)

    async def ask(messages):
        ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
        [completion] = await engine.complete(GenerationRequest(ids, params))
        return len(completion.token_ids)

    return await run_concurrently(concurrency, prompts, ask)


async def through_gateway(url: str, key: str, concurrency: int, prompts: list) -> tuple[int, float]:
    client = openai.AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=600)

    async def ask(messages):
        response = await client.chat.completions.create(
            model="smollm2", messages=messages, max_tokens=MAX_TOKENS, temperature=0
        )
        return response.usage.completion_tokens

    try:
        return await run_concurrently(concurrency, prompts, ask)
    finally:
        await client.close()


def histogram_median_ms(metrics: str, name: str) -> float:
    """The median of a Prometheus histogram, interpolated within its bucket (as histogram_quantile does)."""
    buckets = [
        (float(le), float(count))
        for le, count in re.findall(rf'{name}_bucket{{le="([^"]+)"}} (\S+)', metrics)
        if le != "+Inf"
    ]
    total = float(re.search(rf"{name}_count (\S+)", metrics).group(1))
    lower, below = 0.0, 0.0
    for upper, cumulative in buckets:
        if cumulative >= total / 2:
            return 1000 * (lower + (upper - lower) * (total / 2 - below) / max(cumulative - below, 1e-9))
        lower, below = upper, cumulative
    return float("inf")


async def main() -> None:
    loaded = load_model("smollm2")
    prompts = sharegpt_first_turns(max(REQUESTS.values()), loaded.tokenizer)
    engine = GenerationEngine(loaded)
    rows = {}
    for concurrency, count in REQUESTS.items():
        tokens, seconds = await in_process(engine, concurrency, prompts[:count])
        rows[concurrency] = {"in_process_tok_s": tokens / seconds}
        print(f"in-process  c={concurrency:2d}: {tokens / seconds:6.1f} tok/s")
    engine.close()
    del engine, loaded

    with tempfile.TemporaryDirectory() as scratch:
        db = f"sqlite:///{Path(scratch) / 'bench.db'}"
        key = create_account(Store(db), "bench")
        gateway = GatewayProcess("--model", "smollm2", db=db)
        try:
            for concurrency, count in REQUESTS.items():
                tokens, seconds = await through_gateway(gateway.url, key, concurrency, prompts[:count])
                rows[concurrency]["gateway_tok_s"] = tokens / seconds
                rows[concurrency]["ratio"] = rows[concurrency]["gateway_tok_s"] / rows[concurrency]["in_process_tok_s"]
                print(
                    f"gateway     c={concurrency:2d}: {tokens / seconds:6.1f} tok/s  ratio {rows[concurrency]['ratio']:.3f}"
                )
            metrics = httpx.get(f"{gateway.url}/metrics").text
        finally:
            gateway.close()

    overhead_ms = histogram_median_ms(metrics, "alambic_gateway_overhead_seconds")
    result = {
        "model": "smollm2",
        "max_tokens": MAX_TOKENS,
        "requests": REQUESTS,
        "by_concurrency": rows,
        "ratio_1_client": rows[1]["ratio"],
        "batching_gain_16_vs_1": rows[16]["gateway_tok_s"] / rows[1]["gateway_tok_s"],
        "auth_and_logging_median_ms": overhead_ms,
        "targets": {"ratio_1_client": ">= 0.9", "batching_gain_16_vs_1": "> 1", "auth_and_logging_median_ms": "< 5"},
    }
    print(f"batching gain 16 vs 1: {result['batching_gain_16_vs_1']:.2f}x; auth+logging median {overhead_ms:.2f} ms")
    print("wrote", write_result("serve", result))


if __name__ == "__main__":
    asyncio.run(main())
