"""`alambic serve`, `alambic accounts` and `alambic db`: the teacher behind the gateway, who may call it, and
the store's schema."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from alambic.cli.common import (
    DatabaseOption,
    RpmOption,
    TpmOption,
    accounts_app,
    app,
    before_backend_loads,
    console,
    db_app,
    one_line_errors,
    watermark_scheme,
)
from alambic.errors import InvalidRequestError
from alambic.store import (
    Policy,
    Store,
    create_account,
    issue_key,
    list_accounts,
    open_for_serving,
    set_policy,
    set_watermark,
)


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
        str,
        typer.Option(
            help="llamacpp: the teacher's encoding, bf16, f16, q8_0, q4_1 (as shipped), or auto: bf16 where the "
            "CPU has AVX512_BF16 or AMX, else f16."
        ),
    ] = "auto",
    dtype: Annotated[
        str,
        typer.Option(
            help="transformers: the weights' precision, float32, bfloat16, or auto: bfloat16 where the CPU has "
            "AVX512_BF16 or AMX, else float32."
        ),
    ] = "auto",
    db: DatabaseOption = None,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(min=1, max=65535)] = 8000,
    admin_key: Annotated[
        str | None, typer.Option(envvar="ALAMBIC_ADMIN_KEY", help="Enables the /admin API with this key.")
    ] = None,
    max_batch_size: Annotated[int, typer.Option(min=1, help="Sequences generated together.")] = 32,
    kv_layout: Annotated[
        str,
        typer.Option(
            help="llamacpp: shared (one pool of KV cells: any row up to the model's context) or per-sequence "
            "(each row kv-tokens / max-batch-size cells of its own: faster attention with many rows)."
        ),
    ] = "shared",
    kv_tokens: Annotated[
        int | None, typer.Option(min=1, help="llamacpp: KV cells for all rows together.", show_default="32768")
    ] = None,
    draft_tokens: Annotated[
        int | None,
        typer.Option(
            min=0,
            help="llamacpp: tokens drafted from a sequence's own past and fed with its latest, while it runs alone; "
            "each kept only when sampled, so the text is the same, from fewer forward passes. 0: none.",
            show_default="4 with llamacpp, else 0",
        ),
    ] = None,
    default_max_tokens: Annotated[int, typer.Option(min=1)] = 256,
    max_tokens_limit: Annotated[int, typer.Option(min=1)] = 4096,
    instance: Annotated[
        str | None, typer.Option(help="This gateway's name in the request log.", show_default="host:pid")
    ] = None,
    watermark: Annotated[str | None, typer.Option(help="Watermark answers: kgw or gumbel.")] = None,
    watermark_key_env: Annotated[
        str, typer.Option(help="Environment variable holding the secret watermark key (never logged).")
    ] = "ALAMBIC_WATERMARK_KEY",
    watermark_gamma: Annotated[float, typer.Option(min=0.01, max=0.99, help="kgw: green fraction.")] = 0.25,
    watermark_delta: Annotated[float, typer.Option(min=0.0, help="kgw: bias added to green logits.")] = 2.0,
    watermark_context: Annotated[int, typer.Option(min=1, help="Tokens of context seeding the hash.")] = 1,
    watermark_logprobs: Annotated[
        str,
        typer.Option(
            help="Logprobs served with marked text: plain (the model's own, before the watermark: nothing of the "
            "key shows) or marked (the watermarked distribution: a kgw green list shows)."
        ),
    ] = "plain",
) -> None:
    """Serve a model behind an OpenAI-compatible API with accounts, policies and a request log."""
    threads = before_backend_loads(backend)
    store = open_for_serving(db)  # before the model loads: a store to upgrade first fails in a second
    import uvicorn

    from alambic.generation import GenerationEngine
    from alambic.generation.backends import load_backend
    from alambic.generation.speculation import DRAFT_TOKENS
    from alambic.serve import GatewaySettings, create_app

    scheme = (
        watermark_scheme(
            watermark,
            watermark_key_env,
            watermark_gamma,
            watermark_delta,
            watermark_context,
            watermark_logprobs,
            key_option="--watermark-key-env",
        )
        if watermark
        else None
    )
    with console.status(f"Loading {model} on {backend} (the first load of smollm2 converts its GGUF once)…"):
        model_backend = load_backend(
            model,
            backend,
            gguf_type=gguf_type,
            dtype=dtype,
            max_sequences=max_batch_size,
            kv_tokens=kv_tokens,
            kv_layout=kv_layout,
            threads=threads,
        )
    if draft_tokens is None:
        draft_tokens = DRAFT_TOKENS if backend == "llamacpp" else 0
    engine = GenerationEngine(model_backend, max_batch_size=max_batch_size, draft_tokens=draft_tokens)
    settings = GatewaySettings(
        admin_key=admin_key,
        default_max_tokens=default_max_tokens,
        max_tokens_limit=max_tokens_limit,
        watermark=scheme,
        instance=instance,
    )
    if backend == "llamacpp":  # the weights' encoding: a GGUF type (None: a .gguf file's own), or a torch dtype
        encoding, asked = model_backend.encoding and f"GGUF {model_backend.encoding}", gguf_type
    else:
        encoding, asked = str(model_backend.model.dtype).removeprefix("torch."), dtype
    weights = f", {encoding}" + (" chosen for this CPU" if asked == "auto" else "") if encoding else ""
    console.print(f"Serving [bold]{model_backend.name}[/bold]{weights} on http://{host}:{port}/v1 (log: {store.url})")
    try:
        uvicorn.run(create_app(engine, store, settings), host=host, port=port, access_log=False)
    finally:
        engine.close()


@db_app.command("upgrade")
@one_line_errors
def db_upgrade(db: DatabaseOption = None) -> None:
    """Apply the store's migrations: once per database, before its gateways start (they only check)."""
    store = Store(db, migrate=False)
    before = store.revision()
    after = store.upgrade()
    console.print(
        f"{store.engine.url}: schema revision {after} (was {before or 'empty'})", highlight=False, soft_wrap=True
    )


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
    print(issue_key(Store(db, create=False), name))


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
    store = Store(db, create=False)
    changed = set_policy(
        store, name, policy, requests_per_minute=rpm, tokens_per_minute=tpm, actor="cli", reason=reason
    )
    console.print(f"{changed.name}: {changed.policy.value}", highlight=False)


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
    set_watermark(Store(db, create=False), name, choices[setting])
    console.print(f"{name}: watermark {setting}", highlight=False)


@accounts_app.command("list")
@one_line_errors
def accounts_list(db: DatabaseOption = None) -> None:
    """Accounts with their policy, limits, keys and logged requests."""
    table = Table("name", "policy", "rpm", "tpm", "keys", "requests", "created")
    for a in list_accounts(Store(db, create=False)):
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
