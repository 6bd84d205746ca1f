"""`alambic harvest` and `alambic prompts`: collect a teacher's answers, and make prompts to ask."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Annotated

import typer

from alambic.cli.common import EndpointOption, ModelOption, app, console, one_line_errors, prompts_app
from alambic.harvest.dataset import ShardFormat
from alambic.harvest.keys import KeyStrategy


@app.command()
@one_line_errors
def harvest(
    endpoint: EndpointOption,
    model: ModelOption,
    prompts: Annotated[Path, typer.Option(help="JSONL, JSON, CSV, Parquet or text file of prompts.")],
    out: Annotated[Path, typer.Option(help="Dataset directory; run again with the same one to resume.")],
    api_key: Annotated[
        list[str], typer.Option("--api-key", envvar="ALAMBIC_API_KEY", help="Repeat to rotate over several keys.")
    ],
    field: Annotated[str | None, typer.Option(help="The prompt's field (a list of strings is a conversation).")] = None,
    system: Annotated[str | None, typer.Option(help="A system message sent before every prompt.")] = None,
    concurrency: Annotated[
        int, typer.Option(min=1, help="Most requests in flight; halved when the teacher is overloaded.")
    ] = 16,
    max_tokens: Annotated[int, typer.Option(min=1)] = 256,
    temperature: Annotated[float, typer.Option(min=0.0, max=2.0)] = 1.0,
    top_p: Annotated[float, typer.Option(min=0.0, max=1.0)] = 1.0,
    n: Annotated[int, typer.Option(min=1, max=32, help="Samples per prompt.")] = 1,
    seed: Annotated[int | None, typer.Option(help="Sampling seed sent with every request.")] = None,
    top_logprobs: Annotated[
        int | None, typer.Option(min=0, max=20, help="Ask for logprobs with this many alternatives.")
    ] = None,
    key_strategy: Annotated[KeyStrategy, typer.Option(help="How requests are spread over the keys.")] = (
        KeyStrategy.ROUND_ROBIN
    ),
    rpm_per_key: Annotated[float | None, typer.Option(help="Requests per minute per key.")] = None,
    jitter: Annotated[float, typer.Option(min=0.0, max=0.99, help="Random spread of each gap, as a fraction.")] = 0.0,
    pause_every: Annotated[int | None, typer.Option(min=1, help="Rest a key after this many requests.")] = None,
    pause_seconds: Annotated[float, typer.Option(min=0.0)] = 0.0,
    max_attempts: Annotated[int, typer.Option(min=1)] = 8,
    timeout: Annotated[float, typer.Option(min=0.1, help="Seconds per request.")] = 120.0,
    token_budget: Annotated[int | None, typer.Option(min=1, help="Stop after this many tokens.")] = None,
    cost_budget: Annotated[float | None, typer.Option(min=0.0, help="Stop after this much money.")] = None,
    price_per_1k_prompt: Annotated[float, typer.Option(min=0.0)] = 0.0,
    price_per_1k_completion: Annotated[float, typer.Option(min=0.0)] = 0.0,
    shard_format: Annotated[ShardFormat, typer.Option("--format", help="Shards as JSONL or Parquet.")] = (
        ShardFormat.JSONL
    ),
    endpoint_moved: Annotated[
        bool, typer.Option(help="Resume although --endpoint changed: the same teacher answers at a new address.")
    ] = False,
) -> None:
    """Collect a teacher's answers to PROMPTS into a dataset directory, resumably."""
    from alambic.harvest import Budget, HarvestJob, Pacing, RetryPolicy, Sampling, load_prompts, run_harvest
    from alambic.harvest.progress import HarvestProgress

    job = HarvestJob(
        endpoint=endpoint,
        model=model,
        api_keys=tuple(api_key),
        prompts=tuple(load_prompts(prompts, field, system=system)),
        out=out,
        concurrency=concurrency,
        sampling=Sampling(max_tokens, temperature, top_p, n, seed, (), top_logprobs),
        key_strategy=key_strategy,
        pacing=Pacing(rpm_per_key, jitter, pause_every, pause_seconds),
        retry=RetryPolicy(max_attempts=max_attempts, timeout_s=timeout),
        budget=Budget(token_budget, cost_budget, price_per_1k_prompt, price_per_1k_completion),
        shard_format=shard_format,
        endpoint_moved=endpoint_moved,
    )
    with HarvestProgress(console) as progress:
        stats = asyncio.run(run_harvest(job, progress.update))
    progress.summarise(stats, out)
    if stats.status not in ("complete", "budget_exhausted"):
        raise typer.Exit(1)


@prompts_app.command("generate")
@one_line_errors
def prompts_generate(
    endpoint: EndpointOption,
    model: ModelOption,
    seeds: Annotated[Path, typer.Option(help="Seed tasks (any prompt file, e.g. self-instruct's seed_tasks.jsonl).")],
    out: Annotated[Path, typer.Option(help="JSONL file of new instructions ({'instruction': ...} a line).")],
    api_key: Annotated[str, typer.Option(envvar="ALAMBIC_API_KEY")],
    field: Annotated[str | None, typer.Option(help="The seed's field.")] = None,
    count: Annotated[int, typer.Option(min=1)] = 200,
    threshold: Annotated[float, typer.Option(min=0.0, max=1.0, help="Keep only ROUGE-L below this.")] = 0.7,
    concurrency: Annotated[int, typer.Option(min=1)] = 8,
    seed: int = 0,
) -> None:
    """Have the teacher write COUNT new instructions from seed tasks, near-duplicates removed (self-instruct)."""
    from rich.progress import Progress

    from alambic.harvest import load_prompts
    from alambic.harvest.selfinstruct import SelfInstructJob, generate_instructions, write_instructions

    job = SelfInstructJob(
        endpoint=endpoint,
        api_key=api_key,
        model=model,
        seeds=tuple(p.turns[0] for p in load_prompts(seeds, field)),
        count=count,
        threshold=threshold,
        concurrency=concurrency,
        seed=seed,
    )
    with Progress(console=console) as progress:
        task = progress.add_task("instructions", total=count)
        made = asyncio.run(generate_instructions(job, lambda done: progress.update(task, completed=done)))
    write_instructions(made, out)
    console.print(f"{len(made)} new instructions in {out}", highlight=False)
    if len(made) < count:
        raise typer.Exit(1)
