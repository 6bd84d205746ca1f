"""Self-instruct with the real teacher: 200 new prompts from the 175 seed tasks, no two near-duplicates (slow)."""

import asyncio
import itertools

import pytest

from alambic.generation import GenerationEngine
from alambic.generation.backends import load_backend
from alambic.harvest import load_prompts
from alambic.harvest.selfinstruct import SelfInstructJob, generate_instructions, rouge_l, words
from conftest import SHARED_DATA, start_gateway

pytestmark = pytest.mark.slow
pytest.importorskip("llama_cpp")
SEEDS = SHARED_DATA / "alpaca-seed-tasks" / "seed_tasks.jsonl"


def test_200_new_instructions_from_the_seed_tasks(sqlite_store):
    if not SEEDS.exists():
        pytest.skip(f"no seed tasks at {SEEDS}")
    seeds = tuple(p.turns[0] for p in load_prompts(SEEDS, "instruction"))
    assert len(seeds) == 175
    engine = GenerationEngine(load_backend("smollm2", "llamacpp"), max_batch_size=16)
    try:
        for gateway in start_gateway(engine, sqlite_store):
            job = SelfInstructJob(
                endpoint=f"{gateway.url}/v1", api_key=gateway.key("self-instruct"), model="smollm2", seeds=seeds,
                count=200, concurrency=16,
            )  # fmt: skip
            made = asyncio.run(generate_instructions(job))
    finally:
        engine.close()
    assert len(made) == 200
    new, old = [words(text) for text in made], [words(text) for text in seeds]
    among_new = max(rouge_l(a, b) for a, b in itertools.combinations(new, 2))
    against_seeds = max(rouge_l(a, b) for a in new for b in old)
    assert among_new < job.threshold and against_seeds < job.threshold
