"""A harvest job: prompts in, one row per answer out, through any OpenAI-compatible endpoint.

Bounded concurrency over a pool of keys, retries, budgets that stop the job cleanly, resume by reading
what the output directory already holds, and a manifest of what was asked and what it cost.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import openai

from alambic import __version__
from alambic.errors import InvalidRequestError
from alambic.harvest.client import RequestFailed, RetryPolicy, create_with_retries
from alambic.harvest.dataset import AnswerRow, HarvestDataset, RowKey, ShardFormat
from alambic.harvest.keys import KeyPool, KeyStrategy, Pacing
from alambic.harvest.prompts import Prompt


@dataclass(frozen=True)
class Sampling:
    max_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    n: int = 1
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int | None = None  # None: no logprobs; 0..20: the chosen token's, with k alternatives

    def request_fields(self) -> dict:
        fields = {"max_tokens": self.max_tokens, "temperature": self.temperature, "top_p": self.top_p, "n": self.n}
        if self.seed is not None:
            fields["seed"] = self.seed
        if self.stop:
            fields["stop"] = list(self.stop)
        if self.top_logprobs is not None:
            fields.update(logprobs=True, top_logprobs=self.top_logprobs)
        return fields


@dataclass(frozen=True)
class Budget:
    """Stop starting requests once either limit is reached (requests in flight still finish and count)."""

    max_tokens: int | None = None
    max_cost: float | None = None
    price_per_1k_prompt_tokens: float = 0.0
    price_per_1k_completion_tokens: float = 0.0

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return (
            prompt_tokens * self.price_per_1k_prompt_tokens + completion_tokens * self.price_per_1k_completion_tokens
        ) / 1000


@dataclass(frozen=True)
class HarvestJob:
    endpoint: str
    model: str
    api_keys: tuple[str, ...]
    prompts: tuple[Prompt, ...]
    out: Path
    concurrency: int = 16
    sampling: Sampling = field(default_factory=Sampling)
    key_strategy: KeyStrategy = KeyStrategy.ROUND_ROBIN
    pacing: Pacing = field(default_factory=Pacing)
    retry: RetryPolicy = field(default_factory=RetryPolicy)
    budget: Budget = field(default_factory=Budget)
    seed: int | None = None  # for key choice and backoff jitter
    shard_format: ShardFormat = ShardFormat.JSONL

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise InvalidRequestError("concurrency must be at least 1.", param="concurrency")
        if not 1 <= self.sampling.n <= 32:
            raise InvalidRequestError("n must be between 1 and 32.", param="n")


@dataclass
class HarvestStats:
    rows_total: int
    rows_done: int
    rows_written: int = 0  # by this run
    failed: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost: float = 0.0
    retries: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.time)
    status: str = "running"

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / max(time.time() - self.started, 1e-9)


ProgressCallback = Callable[[HarvestStats], None]


async def run_harvest(job: HarvestJob, on_progress: ProgressCallback | None = None) -> HarvestStats:
    dataset = HarvestDataset(job.out, job.shard_format)
    samples = job.sampling.n
    stats = HarvestStats(
        rows_total=sum(len(p.turns) for p in job.prompts) * samples,
        rows_done=sum(key in dataset.done for p in job.prompts for key in _row_keys(p, samples)),
    )
    pool = KeyPool(list(job.api_keys), job.key_strategy, job.pacing, seed=job.seed)
    http = httpx.AsyncClient(
        limits=httpx.Limits(max_connections=job.concurrency, max_keepalive_connections=job.concurrency)
    )
    clients = [
        openai.AsyncOpenAI(
            base_url=job.endpoint, api_key=k.secret, max_retries=0, timeout=job.retry.timeout_s, http_client=http
        )
        for k in pool.keys
    ]
    await _check_endpoint_and_keys(job.endpoint, clients)
    rng = random.Random(job.seed)
    queue: asyncio.Queue[Prompt] = asyncio.Queue()
    for prompt in job.prompts:
        if any(key not in dataset.done for key in _row_keys(prompt, samples)):
            queue.put_nowait(prompt)
    dataset.write_manifest(_manifest(job, stats))

    def over_budget() -> bool:
        budget = job.budget
        spent_tokens = stats.prompt_tokens + stats.completion_tokens
        return (budget.max_tokens is not None and spent_tokens >= budget.max_tokens) or (
            budget.max_cost is not None and stats.cost >= budget.max_cost
        )

    async def harvest_conversation(prompt: Prompt) -> None:
        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        for turn, user_text in enumerate(prompt.turns):
            messages.append({"role": "user", "content": user_text})
            missing = [s for s in range(samples) if (prompt.prompt_id, turn, s) not in dataset.done]
            if missing:
                if over_budget():
                    stats.status = "budget_exhausted"
                    return
                key = pool.choose(prompt.prompt_id)
                request = {"model": job.model, "messages": messages, **job.sampling.request_fields()}
                started = time.monotonic()
                try:
                    response, attempts = await create_with_retries(
                        clients[key.index], pool, key, request, job.retry, stats.retries, rng
                    )
                except RequestFailed as failure:
                    stats.failed += len(missing)
                    for sample in missing:
                        dataset.record_error((prompt.prompt_id, turn, sample), str(failure), failure.attempts)
                    return  # later turns need this turn's answer
                latency = time.monotonic() - started
                usage = response.get("usage") or {}
                stats.prompt_tokens += usage.get("prompt_tokens", 0)
                stats.completion_tokens += usage.get("completion_tokens", 0)
                stats.cost = job.budget.cost(stats.prompt_tokens, stats.completion_tokens)
                for choice in response["choices"]:
                    if choice["index"] not in missing:
                        continue
                    dataset.write(
                        AnswerRow(
                            prompt_id=prompt.prompt_id,
                            turn=turn,
                            sample=choice["index"],
                            messages=list(messages),
                            answer=choice["message"].get("content") or "",
                            finish_reason=choice.get("finish_reason") or "",
                            prompt_tokens=usage.get("prompt_tokens", 0),
                            completion_tokens=_completion_tokens(choice, usage, samples),
                            latency_s=latency,
                            attempts=attempts,
                            key_index=key.index,
                            key_sha256=key.sha256,
                            model=response.get("model", job.model),
                            created_at=time.time(),
                            logprobs=_logprobs(choice),
                        )
                    )
                    stats.rows_done += 1
                    stats.rows_written += 1
                if on_progress is not None:
                    on_progress(stats)
            messages.append({"role": "assistant", "content": dataset.done[(prompt.prompt_id, turn, 0)].answer})

    async def worker() -> None:
        while not queue.empty() and stats.status == "running":
            await harvest_conversation(queue.get_nowait())

    try:
        await asyncio.gather(*(worker() for _ in range(job.concurrency)))
        if stats.status == "running":
            stats.status = "complete" if stats.rows_done == stats.rows_total else "incomplete"
    finally:
        if stats.status == "running":
            stats.status = "interrupted"
        dataset.close()
        dataset.write_manifest(_manifest(job, stats))
        await http.aclose()
    return stats


async def _check_endpoint_and_keys(endpoint: str, clients: list[openai.AsyncOpenAI]) -> None:
    """Fail at once, clearly, on an endpoint that does not answer or a key it refuses (not after retries)."""
    for index, client in enumerate(clients):
        try:
            await client.models.list()
        except openai.APIConnectionError:
            raise InvalidRequestError(f"Cannot reach {endpoint}.", param="endpoint") from None
        except openai.AuthenticationError:
            raise InvalidRequestError(f"{endpoint} refused API key #{index + 1}.", param="api_key") from None
        except openai.APIStatusError:
            pass  # some servers have no /models: what matters is that they answer


def harvest(job: HarvestJob, on_progress: ProgressCallback | None = None) -> HarvestStats:
    """Run a harvest job to its end (blocking); run it again with the same output to resume."""
    return asyncio.run(run_harvest(job, on_progress))


def _row_keys(prompt: Prompt, samples: int) -> list[RowKey]:
    """Every (prompt_id, turn, sample) a prompt must end up with a row for."""
    return [(prompt.prompt_id, turn, sample) for turn in range(len(prompt.turns)) for sample in range(samples)]


def _completion_tokens(choice: dict, usage: dict, samples: int) -> int:
    tokens = (choice.get("logprobs") or {}).get("content")
    if tokens is not None:
        return len(tokens)
    return usage.get("completion_tokens", 0) if samples == 1 else -1  # unknown per sample without logprobs


def _logprobs(choice: dict) -> list[dict] | None:
    """Each token's text, exact bytes (when the endpoint gives them: they map back to token ids) and logprob,
    with its alternatives."""
    tokens = (choice.get("logprobs") or {}).get("content")
    if tokens is None:
        return None

    def entry(token: dict) -> dict:
        kept = {"token": token["token"], "logprob": token["logprob"]}
        if token.get("bytes") is not None:
            kept["bytes"] = token["bytes"]
        return kept

    return [{**entry(t), "top_logprobs": [entry(a) for a in t.get("top_logprobs") or []]} for t in tokens]


def _manifest(job: HarvestJob, stats: HarvestStats) -> dict:
    return {
        "alambic_version": __version__,
        "endpoint": job.endpoint,
        "model": job.model,
        "sampling": asdict(job.sampling),
        "keys": len(job.api_keys),
        "key_strategy": job.key_strategy.value,
        "pacing": asdict(job.pacing),
        "concurrency": job.concurrency,
        "shard_format": job.shard_format.value,
        "prompts": len(job.prompts),
        "budget": asdict(job.budget),
        "status": stats.status,
        "rows_total": stats.rows_total,
        "rows_done": stats.rows_done,
        "rows_written_this_run": stats.rows_written,
        "failed_this_run": stats.failed,
        "retries_this_run": dict(stats.retries),
        "prompt_tokens_this_run": stats.prompt_tokens,
        "completion_tokens_this_run": stats.completion_tokens,
        "cost_this_run": stats.cost,
        "started": stats.started,
        "updated": time.time(),
    }
