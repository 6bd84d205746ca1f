"""The judge: ratings and verdicts parsed from its replies, position bias cancelled by asking both orders,
and preference pairs only from verdicts that survive the swap. A scripted judge stands in for the teacher."""

from __future__ import annotations

import asyncio
import re

import pytest
from fastapi import FastAPI

from alambic.evaluate.judge import (
    Judge,
    compare,
    outcome,
    parse_rating,
    parse_verdict,
    preference_pairs,
    rate,
    summarise,
    write_judgments,
)
from alambic.serve.server import serve_in_thread

ANSWER = re.compile(r"\[The Start of Assistant (A|B)'s Answer\]\n(.*?)\n\[The End", re.S)


def scripted_judge(prefers: str) -> FastAPI:
    """An OpenAI-compatible judge: rates every answer 7; in a comparison prefers the first answer
    (`position`, a biased judge) or the longer one (`longer`, a consistent one)."""
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def complete(body: dict) -> dict:
        prompt = body["messages"][-1]["content"]
        answers = dict(ANSWER.findall(prompt))
        if not answers:
            reply = "Clear and correct. Rating: [[7]]"
        elif prefers == "position":
            reply = "The first one. [[A]]"
        else:
            reply = "[[A]]" if len(answers["A"]) > len(answers["B"]) else "[[B]]"
        message = {"role": "assistant", "content": reply}
        return {
            "id": "x",
            "object": "chat.completion",
            "created": 0,
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        }

    return app


QUESTIONS = ["What is rain?", "Name a prime.", "Why is the sky blue?"]
STUDENT = ["Water falling from clouds, condensed.", "7", "Rayleigh scattering of sunlight by air."]
REFERENCE = ["Water from clouds.", "Two is the smallest prime.", "Scattering."]


def run(coroutine):
    return asyncio.run(coroutine)


def test_a_position_biased_judge_yields_only_ties_and_no_preference_pairs():
    with serve_in_thread(scripted_judge("position")) as url:
        comparisons = run(compare(Judge(f"{url}/v1", "k", "judge"), QUESTIONS, STUDENT, REFERENCE))
    assert [c.outcome for c in comparisons] == ["tie", "tie", "tie"]
    assert summarise(comparisons=comparisons)["position_consistency"] == 0
    assert preference_pairs(comparisons) == []


def test_a_consistent_judge_gives_wins_losses_and_dpo_pairs(tmp_path):
    with serve_in_thread(scripted_judge("longer")) as url:
        judge = Judge(f"{url}/v1", "k", "judge")
        comparisons = run(compare(judge, QUESTIONS, STUDENT, REFERENCE))
        ratings = run(rate(judge, QUESTIONS, STUDENT))
    assert [c.outcome for c in comparisons] == ["win", "loss", "win"]
    summary = write_judgments(tmp_path, ratings, comparisons)
    assert summary["win_rate"] == pytest.approx(2 / 3) and summary["loss_rate"] == pytest.approx(1 / 3)
    assert summary["mean_score"] == 7 and summary["preference_pairs"] == 3
    pairs = (tmp_path / "preferences.jsonl").read_text().splitlines()
    assert '"chosen": "Two is the smallest prime."' in pairs[1]


@pytest.mark.parametrize(
    ("judgment", "score"),
    [("Rating: [[8]]", 8.0), ("I give it a rating of 6.5/10", 6.5), ("Rating: [[11]]", None), ("no idea", None)],
)
def test_ratings_are_parsed_or_left_unrated(judgment, score):
    assert parse_rating(judgment) == score


def test_the_last_verdict_counts_and_disagreeing_orders_tie():
    assert parse_verdict("[[A]] ... on reflection [[B]]") == "B" and parse_verdict("both fine") is None
    assert outcome("student", "student") == "win" and outcome("reference", "reference") == "loss"
    assert outcome("student", "reference") == "tie" and outcome(None, "student") == "tie"
