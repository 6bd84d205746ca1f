"""The `alambic` command as a person runs it: a real process, its stdout, stderr and exit code."""

import os
import socket
import subprocess
import sys
from contextlib import contextmanager

import click
import httpx
import pytest
import torch
import typer
from typer.testing import CliRunner

from alambic.cli import app
from alambic.cli.common import GIL_SWITCH_INTERVAL_S, before_backend_loads
from alambic.generation.backends import load_backend
from alambic.serve.server import wait_until_ready


def alambic(*args, db, check=True):
    result = subprocess.run(
        [sys.executable, "-m", "alambic", *args],
        env={**os.environ, "ALAMBIC_DB": db},
        capture_output=True,
        text=True,
        timeout=120,
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


@pytest.fixture
def db(tmp_path):
    return f"sqlite:///{tmp_path / 'cli.db'}"


def test_accounts_create_prints_the_key_alone_on_the_last_line(db):
    result = alambic("accounts", "create", "alice", db=db)
    key = result.stdout.strip().splitlines()[-1]
    assert key.startswith("alb-") and len(key) > 40 and " " not in key
    listing = alambic("accounts", "list", db=db).stdout
    assert "alice" in listing and key not in listing


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["accounts", "policy", "nobody", "block"], "No account named 'nobody'"),
        (["accounts", "policy", "alice", "throttle"], "needs requests_per_minute"),
        (["accounts", "create", "alice"], "already exists"),
        (["accounts", "policy", "alice", "sometimes"], "Invalid value"),
        (["serve", "--model", "/no/such/model"], "does not exist"),
        (["serve", "--watermark", "kgw", "--watermark-logprobs", "shifted"], "choose plain or marked"),
        (["serve", "--model", "tiny", "--kv-layout", "per-sequence"], "llama.cpp settings"),
        (["serve", "--model", "tiny", "--kv-tokens", "4096"], "llama.cpp settings"),
        (["serve", "--backend", "llamacpp", "--kv-layout", "paged"], "Unknown KV layout 'paged'"),
        (["serve", "--backend", "llamacpp", "--dtype", "bfloat16"], "dtype is a transformers setting"),
        (["serve", "--model", "tiny", "--dtype", "float16"], "Unknown dtype 'float16'"),
        (["serve", "--model", "tiny", "--draft-tokens", "4"], "speculative decoding needs llama.cpp"),
        (
            ["serve", "--watermark", "kgw", "--watermark-key-env", "NO_SUCH_KEY"],
            "another variable with --watermark-key-env",
        ),
        (
            ["prove", "--suspect", "tiny", "--out", "report", "--key-env", "NO_SUCH_KEY"],
            "another variable with --key-env",
        ),
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(db, args, message):
    alambic("accounts", "create", "alice", db=db)
    result = alambic(*args, db=db, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["accounts", "list"],
        ["accounts", "policy", "alice", "block"],
        ["log", "export", "--out", "log.jsonl"],
        ["monitor"],
    ],
)
def test_a_command_that_reads_the_store_refuses_one_that_is_not_there_and_creates_none(tmp_path, args):
    typo = tmp_path / "sub" / "typo.db"
    result = alambic(*args, "--db", f"sqlite:///{typo}", db="", check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"No store at {typo}" in result.stderr and not typo.parent.exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("bogus://nowhere", "not a store URL alambic can open"),
        ("postgresql+nosuchdriver://user@localhost/db", "not a store URL alambic can open"),
        ("postgresql://nobody:secret@127.0.0.1:1/none", "cannot be reached"),
    ],
)
def test_a_store_that_cannot_be_opened_is_one_line_and_exit_code_2(url, message):
    for args in (["accounts", "create", "alice"], ["db", "upgrade"], ["monitor"]):
        result = alambic(*args, "--db", url, db="", check=False)
        assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
        assert message in result.stderr and "secret" not in result.stderr


def test_serve_refuses_a_store_behind_the_schema_until_db_upgrade(db):
    from alambic.store import Store
    from alambic.store.database import newest_revision, upgrade

    upgrade(Store(db, migrate=False).engine, "0002")
    result = alambic("serve", "--model", "tiny", db=db, check=False)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "alambic db upgrade" in result.stderr and len(result.stderr.strip().splitlines()) == 1
    upgraded = alambic("db", "upgrade", db=db)
    assert f"schema revision {newest_revision()} (was 0002)" in upgraded.stderr
    assert Store(db, migrate=False).revision() == newest_revision()


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def serving(db):
    """`alambic serve --model tiny` in its own process; yields (process, base URL)."""
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "alambic", "serve", "--model", "tiny", "--port", str(port)],
        env={**os.environ, "ALAMBIC_DB": db},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, timeout_s=120, alive=lambda: server.poll() is None)
        yield server, url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_serve_answers_and_follows_policy_changes_made_from_the_cli(db):
    key = alambic("accounts", "create", "bob", db=db).stdout.strip().splitlines()[-1]
    with serving(db) as (_, url):
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers).status_code == 200
        alambic("accounts", "policy", "bob", "block", "--reason", "extraction", db=db)
        assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers).status_code == 403
    listing = alambic("accounts", "list", db=db).stdout
    assert "block" in listing


def test_a_gateway_killed_mid_stream_leaves_the_row_in_progress(db):
    from sqlalchemy import select

    from alambic.store import Store
    from alambic.store.schema import RequestLog

    key = alambic("accounts", "create", "bob", db=db).stdout.strip().splitlines()[-1]
    body = {
        "model": "tiny",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 500,
        "min_tokens": 500,
        "stream": True,
    }
    with (
        serving(db) as (server, url),
        httpx.stream(
            "POST", f"{url}/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
        ) as response,
    ):
        lines = response.iter_lines()
        for _ in range(4):
            next(lines)
        server.kill()  # kill -9: no handler runs
        server.wait(timeout=30)
    with Store(db).session() as session:
        [row] = session.scalars(select(RequestLog)).all()
    assert (row.state, row.endpoint, row.method) == ("in_progress", "/v1/chat/completions", "POST")
    assert row.account_id is not None


@pytest.mark.parametrize("args", [["--help"], ["log", "import", "--help"]])
def test_the_command_starts_without_torch_openai_or_alembic(args):
    """`alambic --help` or `log import` never trains a model nor calls a teacher: the CLI must not pay torch's or the
    openai SDK's seconds to start, nor alembic's before it opens a store."""
    script = (
        "import sys\n"
        "from alambic.cli import app\n"
        "try:\n"
        f"    app({args!r})\n"
        "except SystemExit:\n"
        "    pass\n"
        "print(sorted(m for m in ('torch', 'transformers', 'openai', 'alembic') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[-1] == "[]"


def _commands(command: click.Command, path: tuple[str, ...] = ()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_every_default_named_in_words_shows_in_the_help():
    """Rich reads `[default: ...]` in a help text as markup and drops it: such defaults go in `show_default`."""
    root = typer.main.get_command(app)
    in_markup = [
        (" ".join(path), param.name)
        for path, command in _commands(root)
        for param in command.params
        if "[default" in (getattr(param, "help", None) or "")
    ]
    assert in_markup == []
    shown = CliRunner().invoke(app, ["monitor", "--help"], env={"COLUMNS": "1000"}).output
    assert "[default: (the log itself)]" in shown and "[default: (the time the --reference spans" in shown


@pytest.mark.parametrize("backend", ["llamacpp", "transformers"])
def test_serving_llamacpp_hands_the_gil_back_to_the_generation_thread_sooner(backend, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)  # set back after, as the interval and threads are below
    default, threads = sys.getswitchinterval(), torch.get_num_threads()
    try:
        before_backend_loads(backend)
        assert sys.getswitchinterval() == pytest.approx(GIL_SWITCH_INTERVAL_S if backend == "llamacpp" else default)
    finally:
        sys.setswitchinterval(default)
        torch.set_num_threads(threads)


def test_serving_transformers_keeps_the_main_thread_to_one_torch_thread_and_the_engine_s_to_the_default():
    threads = torch.get_num_threads()
    try:
        forward_threads = before_backend_loads("transformers")
        assert (forward_threads, torch.get_num_threads()) == (threads, 1)
        assert load_backend("tiny", "transformers", threads=forward_threads).torch_threads == threads
    finally:
        torch.set_num_threads(threads)
