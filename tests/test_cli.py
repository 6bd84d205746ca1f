"""The `alambic` command as a person runs it: a real process, its stdout, stderr and exit code."""

import os
import socket
import subprocess
import sys

import httpx
import pytest

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
    ],
)
def test_bad_input_is_one_line_and_exit_code_2(db, args, message):
    alambic("accounts", "create", "alice", db=db)
    result = alambic(*args, db=db, check=False)
    assert result.returncode == 2
    assert message in result.stderr and "Traceback" not in result.stderr


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_and_follows_policy_changes_made_from_the_cli(db):
    port = free_port()
    key = alambic("accounts", "create", "bob", db=db).stdout.strip().splitlines()[-1]
    server = subprocess.Popen(
        [sys.executable, "-m", "alambic", "serve", "--model", "tiny", "--port", str(port)],
        env={**os.environ, "ALAMBIC_DB": db},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_ready(url, timeout_s=120, alive=lambda: server.poll() is None)
        body = {"model": "tiny", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
        headers = {"Authorization": f"Bearer {key}"}
        assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers).status_code == 200
        alambic("accounts", "policy", "bob", "block", "--reason", "extraction", db=db)
        assert httpx.post(f"{url}/v1/chat/completions", json=body, headers=headers).status_code == 403
    finally:
        server.terminate()
        server.wait(timeout=30)
    listing = alambic("accounts", "list", db=db).stdout
    assert "block" in listing
