import asyncio
import itertools
import json

import pytest
from fastapi import FastAPI

from alambic.harvest.selfinstruct import InstructionPool, SelfInstructJob, generate_instructions, rouge_l, words
from alambic.serve.server import serve_in_thread


def test_rouge_l_is_the_lcs_f_score():
    assert rouge_l(words("a b c d"), words("a b c d")) == 1.0
    assert rouge_l(words("a b c d"), words("x y z")) == 0.0
    # LCS "a c d" = 3: precision 3/4, recall 3/5
    assert rouge_l(words("a b c d"), words("a x c y d")) == pytest.approx(2 * 0.75 * 0.6 / 1.35)


def test_the_pool_keeps_only_new_suitable_instructions():
    pool = InstructionPool(["Write a poem about the sea."], threshold=0.7)
    assert not pool.offer("Write a poem about the sea")  # a near-duplicate of a seed
    assert not pool.offer("Draw an image of a cat.")  # not for a text model
    assert not pool.offer("Hi")  # too short
    assert pool.offer("List three uses of baking soda in cleaning.")
    assert not pool.offer("List three uses of baking soda for cleaning.")
    assert pool.generated == ["List three uses of baking soda in cleaning."]


def test_generation_parses_numbered_lists_and_removes_near_duplicates():
    app, subjects = FastAPI(), itertools.count()

    @app.post("/v1/chat/completions")
    async def chat(body: dict):
        first = next(subjects)
        # each answer: 4 fresh tasks, one repeat of an earlier answer's, and chatter that is not a list item
        lines = [f"{9 + i}. Explain topic number {first * 4 + i} to a child in simple words." for i in range(4)]
        lines += ["13. Explain topic number 0 to a child in simple words.", "Sure! Here are more."]
        message = {"role": "assistant", "content": "\n".join(lines)}
        return {
            "id": "x", "object": "chat.completion", "created": 0, "model": "m",
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }  # fmt: skip

    seeds = ("Write a haiku about autumn.", "Summarise the plot of Hamlet.", "Translate 'good morning' into French.")
    with serve_in_thread(app) as url:
        job = SelfInstructJob(
            endpoint=f"{url}/v1", api_key="k", model="m", seeds=seeds, count=20, examples_per_request=2, concurrency=2,
            threshold=0.95,
        )  # fmt: skip
        made = asyncio.run(generate_instructions(job))
    assert len(made) == 20 == len(set(made))
    for a, b in itertools.combinations([*seeds, *made], 2):
        assert rouge_l(words(a), words(b)) < 0.95
    assert json.dumps(made)
