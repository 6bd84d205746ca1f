"""The `alambic` command: a thin layer over the Python API. Bad input: one line on stderr, exit code 2."""

from __future__ import annotations

import asyncio
import functools
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, TypeVar

import typer
from rich.console import Console
from rich.table import Table

from alambic.errors import AlambicError, InvalidRequestError
from alambic.harvest.dataset import ShardFormat
from alambic.harvest.keys import KeyStrategy
from alambic.store import Policy, Store, create_account, issue_key, list_accounts, set_policy, set_watermark

app = typer.Typer(no_args_is_help=True, help="Serve, distill, detect and prove distillation between LMs.")
accounts_app = typer.Typer(no_args_is_help=True, help="Accounts, API keys and policies.")
app.add_typer(accounts_app, name="accounts")
prompts_app = typer.Typer(no_args_is_help=True, help="Prompt sets: generate new ones from seeds.")
app.add_typer(prompts_app, name="prompts")
watermark_app = typer.Typer(no_args_is_help=True, help="Watermarks: detect a key's mark in text.")
app.add_typer(watermark_app, name="watermark")
console = Console(stderr=True)

F = TypeVar("F", bound=Callable)

DatabaseOption = Annotated[
    str | None,
    typer.Option("--db", envvar="ALAMBIC_DB", help="SQLAlchemy URL of the store [default: SQLite in the data dir]."),
]
RpmOption = Annotated[int | None, typer.Option("--rpm", min=1, help="Requests per minute (throttle).")]
TpmOption = Annotated[int | None, typer.Option("--tpm", min=1, help="Tokens per minute (throttle).")]
EndpointOption = Annotated[
    str, typer.Option(help="Base URL of the teacher's OpenAI-compatible API, e.g. http://127.0.0.1:8000/v1.")
]
ModelOption = Annotated[str, typer.Option(help="The teacher's model id at that endpoint.")]


def one_line_errors(command: F) -> F:
    """AlambicError becomes `error: message` on stderr and exit code 2, never a traceback."""

    @functools.wraps(command)
    def run(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except AlambicError as error:
            console.print(f"[red]error:[/red] {error.message}", highlight=False, soft_wrap=True)
            raise typer.Exit(2) from None

    return run  # type: ignore[return-value]


@app.command()
@one_line_errors
def serve(
    model: Annotated[
        str, typer.Option(help="smollm2 (the real teacher), tiny, a model directory, or a .gguf file (llamacpp).")
    ] = "smollm2",
    backend: Annotated[str, typer.Option(help="transformers or llamacpp (GGUF models, fastest on CPU).")] = (
        "transformers"
    ),
    gguf_type: Annotated[
        str, typer.Option(help="llamacpp: the teacher's encoding, bf16, f16, q8_0 or q4_1 (as shipped).")
    ] = "bf16",
    db: DatabaseOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    admin_key: Annotated[
        str | None, typer.Option(envvar="ALAMBIC_ADMIN_KEY", help="Enables the /admin API with this key.")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Sequences generated together.")] = 32,
    default_max_tokens: Annotated[int, typer.Option(min=1)] = 256,
    max_tokens_limit: Annotated[int, typer.Option(min=1)] = 4096,
    watermark: Annotated[str | None, typer.Option(help="Watermark answers: kgw or gumbel.")] = None,
    watermark_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the secret watermark key (never logged).")
    ] = "ALAMBIC_WATERMARK_KEY",
    watermark_gamma: Annotated[float, typer.Option(min=0.01, max=0.99, help="kgw: green fraction.")] = 0.25,
    watermark_delta: Annotated[float, typer.Option(min=0.0, help="kgw: bias added to green logits.")] = 2.0,
    watermark_context: Annotated[int, typer.Option(min=1, help="Tokens of context seeding the hash.")] = 1,
) -> None:
    """Serve a model behind an OpenAI-compatible API with accounts, policies and a request log."""
    if backend == "llamacpp":
        # torch's OpenMP workers, left spinning after the sampler's small ops, take the core that llama.cpp's
        # own worker needs: 65 vs 115 tok/s for one stream, measured. Must be set before torch loads.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    import uvicorn

    from alambic.generation import GenerationEngine
    from alambic.generation.backends import load_backend
    from alambic.serve import GatewaySettings, create_app

    with console.status(f"Loading {model} on {backend} (the first load of smollm2 converts its GGUF once)…"):
        model_backend = load_backend(model, backend, gguf_type=gguf_type, max_sequences=max_batch_size)
    scheme = (
        watermark_scheme(watermark, watermark_key_env, watermark_gamma, watermark_delta, watermark_context)
        if watermark
        else None
    )
    store = Store(db)
    engine = GenerationEngine(model_backend, max_batch_size=max_batch_size)
    settings = GatewaySettings(
        admin_key=admin_key,
        default_max_tokens=default_max_tokens,
        max_tokens_limit=max_tokens_limit,
        watermark=scheme,
    )
    console.print(f"Serving [bold]{model_backend.name}[/bold] on http://{host}:{port}/v1 (log: {store.url})")
    try:
        uvicorn.run(create_app(engine, store, settings), host=host, port=port, access_log=False)
    finally:
        engine.close()


def watermark_scheme(name: str, key_env: str, gamma: float, delta: float, context: int):
    """A scheme keyed from the environment: the key never appears on a command line or in a log."""
    from alambic.watermark import AaronsonScheme, KirchenbauerScheme

    key = os.environ.get(key_env)
    if not key:
        raise InvalidRequestError(f"Set the watermark key in ${key_env} (or name another with --watermark-key-env).")
    if name == KirchenbauerScheme.name:
        return KirchenbauerScheme(key, gamma=gamma, delta=delta, context_width=context)
    if name == AaronsonScheme.name:
        return AaronsonScheme(key, context_width=context)
    raise InvalidRequestError(f"Unknown watermark scheme '{name}'; choose kgw or gumbel.")


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
    concurrency: Annotated[int, typer.Option(min=1)] = 16,
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


@watermark_app.command("detect")
@one_line_errors
def watermark_detect(
    files: Annotated[list[Path], typer.Argument(help="Text files (one document each) or JSONL (one per line).")],
    scheme: Annotated[str, typer.Option(help="kgw or gumbel.")] = "kgw",
    key_env: Annotated[str, typer.Option(help="Environment variable holding the key.")] = "ALAMBIC_WATERMARK_KEY",
    gamma: Annotated[float, typer.Option(min=0.01, max=0.99, help="kgw: green fraction.")] = 0.25,
    context: Annotated[int, typer.Option(min=1, help="Tokens of context seeding the hash.")] = 1,
    field: Annotated[str, typer.Option(help="JSONL: the field holding the text.")] = "answer",
    tokenizer: Annotated[str, typer.Option(help="The watermarking model's tokenizer: smollm2 or a directory.")] = (
        "smollm2"
    ),
    fpr: Annotated[float, typer.Option(min=0.0, max=1.0, help="False-positive rate of the verdict.")] = 1e-6,
    per_document: Annotated[bool, typer.Option(help="Also print one JSON line per document.")] = False,
) -> None:
    """Score FILES for a key's watermark; the last line is the pooled result, as JSON."""
    from transformers import AutoTokenizer

    from alambic.models import smollm2_directory
    from alambic.watermark.detect import detect_documents, read_documents

    watermark = watermark_scheme(scheme, key_env, gamma, 0.0, context)
    text_tokenizer = AutoTokenizer.from_pretrained(smollm2_directory() if tokenizer == "smollm2" else tokenizer)
    documents, pooled = detect_documents(watermark, read_documents(files, field), text_tokenizer, fpr)
    if per_document:
        for document in documents:
            print(json.dumps(vars(document)))
    print(pooled.to_json())


@accounts_app.command("watermark")
@one_line_errors
def accounts_watermark(
    name: str,
    setting: Annotated[str, typer.Argument(help="on, off, or default (as the server is configured).")],
    db: DatabaseOption = None,
) -> None:
    """Watermark an account's answers, exempt it, or follow the server's setting."""
    choices = {"on": True, "off": False, "default": None}
    if setting not in choices:
        raise InvalidRequestError("The setting is on, off or default.")
    set_watermark(Store(db), name, choices[setting])
    console.print(f"{name}: watermark {setting}", highlight=False)


@accounts_app.command("create")
@one_line_errors
def accounts_create(
    name: str,
    db: DatabaseOption = None,
    policy: Annotated[Policy, typer.Option(help="allow, throttle or block.")] = Policy.ALLOW,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
) -> None:
    """Create an account; its API key is printed once, alone on the last line."""
    key = create_account(Store(db), name, policy=policy, requests_per_minute=rpm, tokens_per_minute=tpm)
    console.print(f"Created account [bold]{name}[/bold]. Its API key is shown once:")
    print(key)


@accounts_app.command("new-key")
@one_line_errors
def accounts_new_key(name: str, db: DatabaseOption = None) -> None:
    """Issue another API key for an account (printed alone on the last line)."""
    print(issue_key(Store(db), name))


@accounts_app.command("policy")
@one_line_errors
def accounts_policy(
    name: str,
    policy: Policy,
    db: DatabaseOption = None,
    rpm: RpmOption = None,
    tpm: TpmOption = None,
    reason: Annotated[str | None, typer.Option(help="Why, kept with the change.")] = None,
) -> None:
    """Set an account's policy; a running gateway applies it from the next request."""
    changed = set_policy(
        Store(db), name, policy, requests_per_minute=rpm, tokens_per_minute=tpm, actor="cli", reason=reason
    )
    console.print(f"{changed.name}: {changed.policy.value}", highlight=False)


@accounts_app.command("list")
@one_line_errors
def accounts_list(db: DatabaseOption = None) -> None:
    """Accounts with their policy, limits, keys and logged requests."""
    table = Table("name", "policy", "rpm", "tpm", "keys", "requests", "created")
    for a in list_accounts(Store(db)):
        table.add_row(
            a.name,
            a.policy.value,
            str(a.requests_per_minute or ""),
            str(a.tokens_per_minute or ""),
            str(a.active_keys),
            str(a.requests_logged),
            f"{a.created_at:%Y-%m-%d %H:%M}",
        )
    Console().print(table)
