"""A harvest job: prompts in, one row per answer out, through any OpenAI-compatible endpoint.

Adaptive concurrency (halved when the teacher is overloaded, back up to `concurrency` as it answers) over a
pool of keys, retries, budgets that stop the job cleanly (counting what earlier runs spent), resume by reading
what the output directory already holds (refused when the answers would be asked with other settings), and a
manifest of what was asked and what it cost.
"""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
import openai

from alambic import __version__
from alambic.errors import ConflictError, InvalidRequestError
from alambic.harvest.client import RequestFailed, RetryPolicy, create_with_retries
from alambic.harvest.completion import Completion
from alambic.harvest.dataset import AnswerRow, HarvestDataset, RowKey, ShardFormat, read_manifest
from alambic.harvest.keys import ApiKey, KeyPool, KeyStrategy, Pacing
from alambic.harvest.limiter import AdaptiveLimit
from alambic.harvest.prompts import Prompt


@dataclass(frozen=True)
class Sampling:
    """Every request setting that changes an answer: a resume into the same directory must keep each one."""

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
    endpoint_moved: bool = False  # the teacher of the answers already in `out` now answers at `endpoint`

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
    prompt_tokens_before: int = 0  # what the rows held before this run cost: budgets count it
    completion_tokens_before: int = 0
    cost_before: float = 0.0
    concurrency_limit: int = 0  # requests allowed in flight now, and the fewest this run came down to
    concurrency_lowest: int = 0

    @property
    def tokens_total(self) -> int:
        return self.prompt_tokens_before + self.completion_tokens_before + self.prompt_tokens + self.completion_tokens

    @property
    def cost_total(self) -> float:
        return self.cost_before + self.cost

    @property
    def tokens_per_second(self) -> float:
        return self.completion_tokens / max(time.time() - self.started, 1e-9)


ProgressCallback = Callable[[HarvestStats], None]


async def run_harvest(job: HarvestJob, on_progress: ProgressCallback | None = None) -> HarvestStats:
    return await HarvestRun(job, on_progress).run()


class HarvestRun:
    """One run of a job, in steps: plan (refuse a resume that would mix answers, count what is held), send each
    conversation's turns, record each answer or failure, finish (the manifest)."""

    dataset: HarvestDataset  # these five from `plan` and `run`
    stats: HarvestStats
    pool: KeyPool
    clients: list[openai.AsyncOpenAI]
    limit: AdaptiveLimit

    def __init__(self, job: HarvestJob, on_progress: ProgressCallback | None = None) -> None:
        self.job = job
        self.on_progress = on_progress
        self.samples = job.sampling.n
        self.rng = random.Random(job.seed)

    async def run(self) -> HarvestStats:
        queue = self.plan()
        self.limit = AdaptiveLimit(self.job.concurrency)
        self.pool = KeyPool(list(self.job.api_keys), self.job.key_strategy, self.job.pacing, seed=self.job.seed)
        http = httpx.AsyncClient(
            limits=httpx.Limits(max_connections=self.job.concurrency, max_keepalive_connections=self.job.concurrency)
        )
        try:
            self.clients = [
                openai.AsyncOpenAI(
                    base_url=self.job.endpoint,
                    api_key=k.secret,
                    max_retries=0,
                    timeout=self.job.retry.timeout_s,
                    http_client=http,
                )
                for k in self.pool.keys
            ]
            await _check_endpoint_and_keys(self.job.endpoint, self.clients)
            self.dataset.write_manifest(self.manifest())
            try:
                await asyncio.gather(*(self.work(queue) for _ in range(self.job.concurrency)))
                if self.stats.status == "running":
                    self.stats.status = "complete" if self.stats.rows_done == self.stats.rows_total else "incomplete"
            finally:
                self.finish()
        finally:
            await http.aclose()
        return self.stats

    def plan(self) -> asyncio.Queue[Prompt]:
        """Check the output directory's settings, read what it holds, and queue the prompts not yet done."""
        _refuse_other_answer_settings(self.job)  # before anything in the directory changes
        self.dataset = HarvestDataset(self.job.out, self.job.shard_format)
        prompt_tokens, completion_tokens = _tokens_held(self.dataset.done.values(), self.job.sampling.max_tokens)
        self.stats = HarvestStats(
            rows_total=sum(len(p.turns) for p in self.job.prompts) * self.samples,
            rows_done=sum(key in self.dataset.done for p in self.job.prompts for key in _row_keys(p, self.samples)),
            prompt_tokens_before=prompt_tokens,
            completion_tokens_before=completion_tokens,
            cost_before=self.job.budget.cost(prompt_tokens, completion_tokens),
            concurrency_limit=self.job.concurrency,
            concurrency_lowest=self.job.concurrency,
        )
        queue: asyncio.Queue[Prompt] = asyncio.Queue()
        for prompt in self.job.prompts:
            if any(key not in self.dataset.done for key in _row_keys(prompt, self.samples)):
                queue.put_nowait(prompt)
        return queue

    async def work(self, queue: asyncio.Queue[Prompt]) -> None:
        while not queue.empty() and self.stats.status == "running":
            await self.converse(queue.get_nowait())

    async def converse(self, prompt: Prompt) -> None:
        """Each turn in order; sample 0's answer is the assistant's reply the next turn is asked after."""
        messages = [{"role": "system", "content": prompt.system}] if prompt.system else []
        for turn, user_text in enumerate(prompt.turns):
            messages.append({"role": "user", "content": user_text})
            missing = self.missing(prompt, turn)
            if missing:
                if self.over_budget():
                    self.stats.status = "budget_exhausted"
                    return
                await self.send(prompt, turn, messages, missing)
            reply = self.dataset.done.get((prompt.prompt_id, turn, 0))
            if reply is None:  # the later turns cannot be asked without it
                for later in range(turn + 1, len(prompt.turns)):
                    self.record_failures(prompt, later, self.missing(prompt, later), "an earlier turn failed", 0)
                return
            messages.append({"role": "assistant", "content": reply.answer})

    def missing(self, prompt: Prompt, turn: int) -> list[int]:
        return [s for s in range(self.samples) if (prompt.prompt_id, turn, s) not in self.dataset.done]

    def over_budget(self) -> bool:
        budget, stats = self.job.budget, self.stats
        return (budget.max_tokens is not None and stats.tokens_total >= budget.max_tokens) or (
            budget.max_cost is not None and stats.cost_total >= budget.max_cost
        )

    async def send(self, prompt: Prompt, turn: int, messages: list[dict], missing: list[int]) -> None:
        key = self.pool.choose(prompt.prompt_id)
        request = {"model": self.job.model, "messages": messages, **self.job.sampling.request_fields()}
        started = time.monotonic()
        try:
            completion, attempts = await create_with_retries(
                self.clients[key.index],
                self.pool,
                key,
                request,
                self.job.retry,
                self.stats.retries,
                self.rng,
                self.limit,
            )
        except RequestFailed as failure:
            self.record_failures(prompt, turn, missing, str(failure), failure.attempts)
        else:
            self.record(prompt, turn, list(messages), missing, completion, key, attempts, time.monotonic() - started)
        self.stats.concurrency_limit, self.stats.concurrency_lowest = self.limit.limit, self.limit.lowest
        if self.on_progress is not None:
            self.on_progress(self.stats)

    def record(
        self,
        prompt: Prompt,
        turn: int,
        messages: list[dict],
        missing: list[int],
        completion: Completion,
        key: ApiKey,
        attempts: int,
        latency: float,
    ) -> None:
        """A row for each missing sample the completion answers; an error for each it does not."""
        stats = self.stats
        stats.prompt_tokens += completion.prompt_tokens
        stats.completion_tokens += completion.completion_tokens
        stats.cost = self.job.budget.cost(stats.prompt_tokens, stats.completion_tokens)
        for sample in missing:
            choice = completion.choices.get(sample)
            if choice is None:
                problem = f"malformed answer: {completion.problems[sample]}"
                self.record_failures(prompt, turn, [sample], problem, attempts)
                continue
            self.dataset.write(
                AnswerRow(
                    prompt_id=prompt.prompt_id,
                    turn=turn,
                    sample=sample,
                    messages=messages,
                    answer=choice.answer,
                    finish_reason=choice.finish_reason,
                    prompt_tokens=completion.prompt_tokens,
                    completion_tokens=choice.completion_tokens,
                    latency_s=latency,
                    attempts=attempts,
                    key_index=key.index,
                    key_sha256=key.sha256,
                    model=completion.model or self.job.model,
                    created_at=time.time(),
                    logprobs=choice.logprobs,
                )
            )
            stats.rows_done += 1
            stats.rows_written += 1

    def record_failures(self, prompt: Prompt, turn: int, samples: list[int], reason: str, attempts: int) -> None:
        self.stats.failed += len(samples)
        for sample in samples:
            self.dataset.record_error((prompt.prompt_id, turn, sample), reason, attempts)

    def finish(self) -> None:
        """The last rows made durable, and the manifest (a run still running here was interrupted)."""
        if self.stats.status == "running":
            self.stats.status = "interrupted"
        self.dataset.close()
        self.dataset.write_manifest(self.manifest())

    def manifest(self) -> dict:
        job, stats = self.job, self.stats
        return {
            "alambic_version": __version__,
            **_answer_settings(job),
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
            "concurrency_limit": stats.concurrency_limit,
            "concurrency_lowest": stats.concurrency_lowest,
            "prompt_tokens_this_run": stats.prompt_tokens,
            "completion_tokens_this_run": stats.completion_tokens,
            "cost_this_run": stats.cost,
            "prompt_tokens_total": stats.prompt_tokens_before + stats.prompt_tokens,
            "completion_tokens_total": stats.completion_tokens_before + stats.completion_tokens,
            "cost_total": stats.cost_total,
            "started": stats.started,
            "updated": time.time(),
        }


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


def _answer_settings(job: HarvestJob) -> dict:
    """Everything the answers depend on, as the manifest holds it: a resume must not change any of it."""
    systems = sorted({p.system for p in job.prompts}, key=lambda system: system or "")
    return {
        "endpoint": job.endpoint,
        "model": job.model,
        "system": systems[0] if len(systems) == 1 else systems,
        "sampling": asdict(job.sampling),
    }


def _refuse_other_answer_settings(job: HarvestJob) -> None:
    """ConflictError when the output directory holds answers asked with other settings: mixed into one dataset,
    they would pass for answers to this job (concurrency, keys, pacing and budgets may change)."""
    manifest = read_manifest(job.out)
    if manifest is None:
        return

    def flat(settings: dict) -> dict:  # as JSON has them: a tuple of stop strings is a list there
        named = {name: settings[name] for name in ("endpoint", "model", "system") if name in settings}
        return json.loads(json.dumps({**named, **(settings.get("sampling") or {})}))

    before, now = flat(manifest), flat(_answer_settings(job))
    if job.endpoint_moved:
        before.pop("endpoint", None)
    changed = [name for name in now if name in before and before[name] != now[name]]
    if changed:
        differences = ", ".join(f"{name} {json.dumps(before[name])} (now {json.dumps(now[name])})" for name in changed)
        moved = " (--endpoint-moved if the same teacher now answers there)" if "endpoint" in changed else ""
        raise ConflictError(
            f"{job.out} holds answers harvested with other settings: {differences}. "
            f"Resume with the same settings{moved}, or harvest into another directory.",
            param="out",
        )


def _tokens_held(rows: Iterable[AnswerRow], max_tokens: int) -> tuple[int, int]:
    """Prompt and completion tokens the rows cost: the prompt once per request (the samples of a turn share
    it), and a sample that cannot say its own count (several samples, no logprobs) at the most it could be."""
    prompt_tokens: dict[tuple[str, int], int] = {}
    completion_tokens = 0
    for row in rows:
        turn = (row.prompt_id, row.turn)
        prompt_tokens[turn] = max(prompt_tokens.get(turn, 0), row.prompt_tokens)
        completion_tokens += row.completion_tokens if row.completion_tokens >= 0 else max_tokens
    return sum(prompt_tokens.values()), completion_tokens
