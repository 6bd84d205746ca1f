"""What every command shares: the Typer app and its sub-apps, the console, common options, and one-line errors."""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Annotated, TypeVar

import typer
from rich.console import Console

from alambic.errors import AlambicError, InvalidRequestError

app = typer.Typer(no_args_is_help=True, help="Serve, distill, detect and prove distillation between LMs.")
accounts_app = typer.Typer(no_args_is_help=True, help="Accounts, API keys and policies.")
app.add_typer(accounts_app, name="accounts")
db_app = typer.Typer(no_args_is_help=True, help="The store's schema: migrations.")
app.add_typer(db_app, name="db")
prompts_app = typer.Typer(no_args_is_help=True, help="Prompt sets: generate new ones from seeds.")
app.add_typer(prompts_app, name="prompts")
watermark_app = typer.Typer(no_args_is_help=True, help="Watermarks: detect a key's mark in text.")
app.add_typer(watermark_app, name="watermark")
console = Console(stderr=True)

F = TypeVar("F", bound=Callable)

DatabaseOption = Annotated[
    str | None,
    typer.Option(
        "--db", envvar="ALAMBIC_DB", help="SQLAlchemy URL of the store.", show_default="SQLite in the data dir"
    ),
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


def moment(option: str, value: str | None) -> datetime | None:
    """An ISO 8601 time; without an offset it is UTC."""
    if value is None:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidRequestError(f"{option}: {value!r} is not an ISO 8601 time, e.g. 2026-12-01T00:00:00Z.") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def duration(option: str, value: str) -> timedelta:
    """`90s`, `10m`, `1h` or `2d` as a positive duration."""
    units = {"s": "seconds", "m": "minutes", "h": "hours", "d": "days"}
    number, unit = value[:-1], value[-1:]
    try:
        amount = float(number)
    except ValueError:
        amount = -1
    if unit not in units or not amount > 0:
        raise InvalidRequestError(f"{option}: {value!r} is not a duration such as 90s, 10m, 1h or 2d.")
    return timedelta(**{units[unit]: amount})


# The generation thread comes back from each C call (llama_decode, every torch op of the sampler) needing the GIL,
# which the event loop's thread holds while it sends a token on; at Python's default 5 ms switch interval the
# generation thread waits out the loop's whole burst, a step's Python held up each time. Measured through the gateway
# (benchmarks/README.md): one stream 89.7 -> 94.8 tok/s streamed, 95.7 -> 106.6 whole; 16 streams 365 -> 381 and 450.
GIL_SWITCH_INTERVAL_S = 0.0002


def before_backend_loads(backend: str) -> int | None:
    """Settings of the serving process that a backend needs, some before torch loads; the threads its forward
    passes are to use (None: the backend's default)."""
    if backend == "llamacpp":
        # torch's OpenMP workers, left spinning after the sampler's small ops, take the core that llama.cpp's
        # own worker needs: 65 vs 115 tok/s for one stream, measured.
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
        sys.setswitchinterval(GIL_SWITCH_INTERVAL_S)
        return None
    # transformers: the engine's thread runs the forward passes. Once the main thread has an OpenMP team of its own
    # (a parallel op there, as loading the weights makes), more OpenMP threads exist than CPUs and libgomp stops its
    # workers spinning between ops: every op of a step then waits for a sleeping worker (a one-row step of the teacher
    # in bf16 33 against 21 ms, measured). The main thread keeps to one thread, the engine's gets torch's default.
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    return threads


def watermark_key(key_env: str, option: str = "--key-env") -> str:
    """The key from the environment variable `key_env`, which the command's `option` names."""
    key = os.environ.get(key_env)
    if not key:
        raise InvalidRequestError(f"Set the watermark key in ${key_env} (or name another variable with {option}).")
    return key


def watermark_scheme(
    name: str,
    key_env: str,
    gamma: float,
    delta: float,
    context: int,
    logprobs: str = "plain",
    key_option: str = "--key-env",
):
    """A scheme keyed from the environment (`key_env`, named by the command's `key_option`): the key never appears on
    a command line or in a log."""
    from alambic.watermark import AaronsonScheme, KirchenbauerScheme
    from alambic.watermark.schemes import LOGPROB_MODES

    if logprobs not in LOGPROB_MODES:
        raise InvalidRequestError(f"Unknown watermark logprobs '{logprobs}'; choose plain or marked.")
    key = watermark_key(key_env, key_option)
    if name == KirchenbauerScheme.name:
        return KirchenbauerScheme(key, gamma=gamma, delta=delta, context_width=context, logprobs=logprobs)
    if name == AaronsonScheme.name:
        return AaronsonScheme(key, context_width=context, logprobs=logprobs)
    raise InvalidRequestError(f"Unknown watermark scheme '{name}'; choose kgw or gumbel.")
