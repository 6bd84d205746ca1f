"""The gateway watermarks what it serves; `alambic watermark detect` finds the mark with the right key only."""

import json
import os
import subprocess
import sys

import pytest
from sqlalchemy import select

from alambic.store import set_watermark
from alambic.store.schema import RequestLog
from alambic.watermark import KirchenbauerScheme
from conftest import start_gateway

KEY = "provider-secret"
QUESTION = [{"role": "user", "content": "Tell me a long story."}]


@pytest.fixture
def watermarking_gateway(engine, sqlite_store):
    yield from start_gateway(engine, sqlite_store, watermark=KirchenbauerScheme(KEY, delta=6.0))


def answer_texts(gateway, account, count):
    client = gateway.client(gateway.key(account))
    return [
        client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=120, seed=i)
        .choices[0]
        .message.content
        for i in range(count)
    ]


def test_served_answers_carry_the_mark_unless_the_account_is_exempt(watermarking_gateway, tiny):
    gateway = watermarking_gateway
    marked = answer_texts(gateway, "alice", 2)
    client = gateway.client(gateway.key("bob"))
    set_watermark(gateway.store, "bob", False)  # takes effect on bob's next request
    exempt = client.chat.completions.create(model="tiny", messages=QUESTION, max_tokens=120, seed=0)
    scheme = KirchenbauerScheme(KEY)

    def pvalue(text):
        return scheme.detect(tiny.tokenizer.encode(text, add_special_tokens=False)).pvalue

    assert all(pvalue(text) < 1e-6 for text in marked)
    assert pvalue(exempt.choices[0].message.content) > 1e-3
    with gateway.store.session() as session:
        logged = [r.watermark_scheme for r in session.scalars(select(RequestLog).order_by(RequestLog.id))]
    assert logged == ["kgw", "kgw", None]


def test_detect_command_finds_the_mark_with_the_key_and_not_without(watermarking_gateway, tmp_path):
    answers = answer_texts(watermarking_gateway, "alice", 3)
    dataset = tmp_path / "answers.jsonl"
    dataset.write_text("".join(json.dumps({"answer": text}) + "\n" for text in answers))

    def detect(key):
        result = subprocess.run(
            [sys.executable, "-m", "alambic", "watermark", "detect", "--scheme", "kgw", "--per-document", str(dataset)],
            env={**os.environ, "ALAMBIC_WATERMARK_KEY": key},
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert result.returncode == 0, result.stderr
        *documents, pooled = [json.loads(line) for line in result.stdout.splitlines()]
        assert len(documents) == 3
        return pooled

    right = detect(KEY)
    assert right["verdict"] == "watermarked" and right["pvalue"] < 1e-6 and right["tokens_scored"] > 200
    wrong = detect("a guess")
    assert wrong["verdict"] == "not detected" and wrong["pvalue"] > 1e-3
