"""Generated prompts, self-instruct style (Wang et al. 2023, *Self-Instruct*): the teacher writes new
instructions from a few seed tasks, and a candidate is kept only if its ROUGE-L F-score against every
instruction kept so far (seeds included) is below a threshold (0.7 in the paper).
"""

from __future__ import annotations

import asyncio
import json
import random
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import openai

from alambic.errors import InvalidRequestError

PROMPT = (
    "Come up with a series of new tasks. Each is one instruction a user could give an AI assistant. "
    "Make them diverse: different topics, verbs and formats.\n\n{examples}\n"
    "Continue the list with {count} new tasks, one per line, numbered from {start}."
)
NUMBERED = re.compile(r"^\s*\d+\s*[.)]\s*(.+?)\s*$")
WORD = re.compile(r"\w+")
UNSUITABLE = ("image", "picture", "graph", "video", "draw", "map", "file", "music")  # as the paper filters


def rouge_l(a: list[str], b: list[str]) -> float:
    """ROUGE-L F1 of two token lists: the longest common subsequence against both lengths."""
    if not a or not b:
        return 0.0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    lcs = previous[-1]
    if lcs == 0:
        return 0.0
    precision, recall = lcs / len(a), lcs / len(b)
    return 2 * precision * recall / (precision + recall)


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


class InstructionPool:
    """Instructions kept so far; `offer` keeps a candidate only if it is no near-duplicate of any of them."""

    def __init__(self, seeds: list[str], threshold: float) -> None:
        self.threshold = threshold
        self.seeds = seeds
        self.generated: list[str] = []
        self._tokens = [words(s) for s in seeds]

    def offer(self, candidate: str) -> bool:
        candidate = candidate.strip().strip('"').strip()
        tokens = words(candidate)
        if not 3 <= len(tokens) <= 150 or any(w in tokens for w in UNSUITABLE) or not candidate[0].isalpha():
            return False
        if any(rouge_l(tokens, kept) >= self.threshold for kept in self._tokens):
            return False
        self.generated.append(candidate)
        self._tokens.append(tokens)
        return True


@dataclass(frozen=True)
class SelfInstructJob:
    endpoint: str
    api_key: str
    model: str
    seeds: tuple[str, ...]
    count: int = 200
    threshold: float = 0.7
    examples_per_request: int = 8  # as the paper: 6 seeds and 2 generated once there are some
    new_per_request: int = 8
    concurrency: int = 8
    max_requests: int | None = None  # default: 10 requests per wanted instruction, then stop
    temperature: float = 1.0
    seed: int = 0


async def generate_instructions(
    job: SelfInstructJob, on_progress: Callable[[int], None] = lambda kept: None
) -> list[str]:
    if len(job.seeds) < 2:
        raise InvalidRequestError("Self-instruct needs at least two seed tasks.", param="seeds")
    pool = InstructionPool(list(job.seeds), job.threshold)
    rng = random.Random(job.seed)
    client = openai.AsyncOpenAI(base_url=job.endpoint, api_key=job.api_key, max_retries=5)
    budget = job.max_requests or 10 * job.count
    requests_made = 0

    async def one_request() -> None:
        nonlocal requests_made
        requests_made += 1
        from_generated = min(2, len(pool.generated))
        examples = rng.sample(pool.seeds, job.examples_per_request - from_generated)
        examples += rng.sample(pool.generated, from_generated)
        listing = "\n".join(f"{i}. {text}" for i, text in enumerate(examples, start=1))
        content = PROMPT.format(examples=listing, count=job.new_per_request, start=len(examples) + 1)
        response = await client.chat.completions.create(
            model=job.model,
            messages=[{"role": "user", "content": content}],
            max_tokens=40 * job.new_per_request,
            temperature=job.temperature,
        )
        for line in (response.choices[0].message.content or "").splitlines():
            match = NUMBERED.match(line)
            if match and len(pool.generated) < job.count and pool.offer(match.group(1)):
                on_progress(len(pool.generated))

    async def worker() -> None:
        while len(pool.generated) < job.count and requests_made < budget:
            await one_request()

    try:
        await asyncio.gather(*(worker() for _ in range(job.concurrency)))
    finally:
        await client.close()
    return pool.generated[: job.count]


def write_instructions(instructions: list[str], path: Path) -> None:
    path.write_text("".join(json.dumps({"instruction": text}, ensure_ascii=False) + "\n" for text in instructions))
