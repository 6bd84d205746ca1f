"""The teacher as judge (MT-Bench style, Zheng et al. 2023): it grades each student answer on a 1-10 rubric,
or compares student and reference answers pairwise, asked twice with the answers swapped so position bias
cancels (a verdict counts only when both orders agree; otherwise it is a tie). Consistent pairwise verdicts
become preference pairs for DPO.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import openai

RUBRIC = (
    "Please act as an impartial judge and evaluate the quality of the response provided by an AI assistant to "
    "the user question below. Consider helpfulness, relevance, accuracy, depth and detail. Be as objective as "
    "possible. After a short explanation, rate the response on a scale of 1 to 10 strictly in this format: "
    '"Rating: [[5]]".\n\n[Question]\n{question}\n\n[The Start of Assistant\'s Answer]\n{answer}\n'
    "[The End of Assistant's Answer]"
)
PAIRWISE = (
    "Please act as an impartial judge and compare the responses of two AI assistants to the user question "
    "below. Choose the one that follows the user's instructions and answers the question better. Do not let "
    "the order or the length of the responses influence you. After a short explanation, output your verdict "
    'strictly in this format: "[[A]]" if assistant A is better, "[[B]]" if assistant B is better, "[[C]]" for '
    "a tie.\n\n[User Question]\n{question}\n\n[The Start of Assistant A's Answer]\n{first}\n"
    "[The End of Assistant A's Answer]\n\n[The Start of Assistant B's Answer]\n{second}\n"
    "[The End of Assistant B's Answer]"
)
RATING = re.compile(r"\[\[(\d+(?:\.\d+)?)\]\]")
FALLBACK_RATING = re.compile(r"(?:rating|score)\D{0,12}(\d+(?:\.\d+)?)", re.IGNORECASE)
VERDICT = re.compile(r"\[\[([ABC])\]\]")


@dataclass(frozen=True)
class Judge:
    endpoint: str
    api_key: str
    model: str
    concurrency: int = 8
    max_tokens: int = 256


@dataclass(frozen=True)
class Rating:
    question: str
    answer: str
    score: float | None  # None: the judge's reply held no rating
    judgment: str


@dataclass(frozen=True)
class Comparison:
    question: str
    student: str
    reference: str
    student_first: str | None  # the verdict with the student as A: student, reference, tie or None
    reference_first: str | None  # with the reference as A
    outcome: str  # win, loss or tie, for the student; tie when the two orders disagree


def parse_rating(judgment: str) -> float | None:
    match = RATING.search(judgment) or FALLBACK_RATING.search(judgment)
    if not match:
        return None
    score = float(match.group(1))
    return score if 1 <= score <= 10 else None


def parse_verdict(judgment: str) -> str | None:
    """A, B or C (tie) from a pairwise judgment; the last one given wins."""
    found = VERDICT.findall(judgment)
    return found[-1] if found else None


def outcome(student_first: str | None, reference_first: str | None) -> str:
    """The student's result over both orders: it must win (or lose) in both to count."""
    if student_first == "student" and reference_first == "student":
        return "win"
    if student_first == "reference" and reference_first == "reference":
        return "loss"
    return "tie"


async def rate(judge: Judge, questions: Sequence[str], answers: Sequence[str]) -> list[Rating]:
    prompts = [RUBRIC.format(question=q, answer=a) for q, a in zip(questions, answers, strict=True)]
    judgments = await _ask_all(judge, prompts)
    return [Rating(q, a, parse_rating(j), j) for q, a, j in zip(questions, answers, judgments, strict=True)]


async def compare(
    judge: Judge, questions: Sequence[str], students: Sequence[str], references: Sequence[str]
) -> list[Comparison]:
    triples = list(zip(questions, students, references, strict=True))
    prompts = [PAIRWISE.format(question=q, first=s, second=r) for q, s, r in triples]
    prompts += [PAIRWISE.format(question=q, first=r, second=s) for q, s, r in triples]
    judgments = await _ask_all(judge, prompts)
    as_first = {"A": "student", "B": "reference", "C": "tie"}
    as_second = {"A": "reference", "B": "student", "C": "tie"}
    comparisons = []
    for i, (question, student, reference) in enumerate(triples):
        first = as_first.get(parse_verdict(judgments[i]) or "")
        second = as_second.get(parse_verdict(judgments[len(triples) + i]) or "")
        comparisons.append(Comparison(question, student, reference, first, second, outcome(first, second)))
    return comparisons


def summarise(ratings: Sequence[Rating] = (), comparisons: Sequence[Comparison] = ()) -> dict:
    scored = [r.score for r in ratings if r.score is not None]
    summary: dict = {}
    if ratings:
        summary.update(
            mean_score=sum(scored) / len(scored) if scored else None,
            rated=len(scored),
            unparsed_ratings=len(ratings) - len(scored),
        )
    if comparisons:
        count = len(comparisons)
        results = [c.outcome for c in comparisons]
        summary.update(
            win_rate=results.count("win") / count,
            loss_rate=results.count("loss") / count,
            tie_rate=results.count("tie") / count,
            position_consistency=sum(
                c.student_first == c.reference_first and c.student_first is not None for c in comparisons
            )
            / count,
            compared=count,
        )
    return summary


def preference_pairs(comparisons: Sequence[Comparison]) -> list[dict]:
    """DPO's `prompt`/`chosen`/`rejected` rows from the verdicts both orders agreed on."""
    pairs = []
    for c in comparisons:
        if c.outcome == "win":
            pairs.append({"prompt": c.question, "chosen": c.student, "rejected": c.reference})
        elif c.outcome == "loss":
            pairs.append({"prompt": c.question, "chosen": c.reference, "rejected": c.student})
    return pairs


def write_judgments(out: Path, ratings: Sequence[Rating], comparisons: Sequence[Comparison]) -> dict:
    out.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps({"kind": "rating", **asdict(r)}) for r in ratings]
    lines += [json.dumps({"kind": "comparison", **asdict(c)}) for c in comparisons]
    (out / "judgments.jsonl").write_text("".join(line + "\n" for line in lines))
    pairs = preference_pairs(comparisons)
    (out / "preferences.jsonl").write_text("".join(json.dumps(p) + "\n" for p in pairs))
    summary = {**summarise(ratings, comparisons), "preference_pairs": len(pairs)}
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


async def answer_all(judge: Judge, questions: Sequence[str], max_tokens: int = 256) -> list[str]:
    """The endpoint's own answers to the questions: the reference side of a pairwise comparison."""
    return await _ask_all(judge, list(questions), max_tokens=max_tokens)


async def _ask_all(judge: Judge, prompts: list[str], max_tokens: int | None = None) -> list[str]:
    client = openai.AsyncOpenAI(base_url=judge.endpoint, api_key=judge.api_key, max_retries=5)
    gate = asyncio.Semaphore(judge.concurrency)

    async def ask(prompt: str) -> str:
        async with gate:
            response = await client.chat.completions.create(
                model=judge.model,
                messages=[{"role": "user", "content": prompt}],
                max_tokens=max_tokens or judge.max_tokens,
                temperature=0.0,
            )
            return response.choices[0].message.content or ""

    try:
        return list(await asyncio.gather(*(ask(p) for p in prompts)))
    finally:
        await client.close()
