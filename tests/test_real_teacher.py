"""The real teacher, SmolLM2-135M-Instruct, through the gateway and the official openai client (slow)."""

import pytest

from alambic.generation import GenerationEngine
from alambic.generation.backends import load_backend
from conftest import start_gateway

pytestmark = pytest.mark.slow
QUESTION = [{"role": "user", "content": "What is the capital of France?"}]


@pytest.fixture(scope="module")
def teacher_engine():
    engine = GenerationEngine(load_backend("smollm2", "transformers"))  # as `alambic serve` has it: its dtype auto
    yield engine
    engine.close()


@pytest.fixture
def teacher_gateway(teacher_engine, sqlite_store):
    yield from start_gateway(teacher_engine, sqlite_store)


def test_real_teacher_answers_streams_and_gives_logprobs(teacher_gateway):
    client = teacher_gateway.client(teacher_gateway.key("alice"))
    answer = client.chat.completions.create(model="smollm2", messages=QUESTION, max_tokens=24, temperature=0)
    assert "Paris" in answer.choices[0].message.content

    streamed = client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=24, temperature=0, stream=True
    )
    text = "".join(c.choices[0].delta.content or "" for c in streamed if c.choices)
    assert text == answer.choices[0].message.content

    scored = client.chat.completions.create(
        model="smollm2", messages=QUESTION, max_tokens=12, temperature=0, logprobs=True, top_logprobs=5
    )
    content = scored.choices[0].logprobs.content
    assert len(content) == scored.usage.completion_tokens
    assert all(len(t.top_logprobs) == 5 and t.token == t.top_logprobs[0].token for t in content)
    # a trained model is confident where a random one is not: the greedy path is likely
    assert sum(t.logprob for t in content) / len(content) > -1.5
