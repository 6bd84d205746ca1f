"""GSM8K exact match: the model answers each question greedily; the last number in its answer must equal the
number after `####` in the reference. Small models score low; the number is reported as it is."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from alambic.errors import InvalidRequestError
from alambic.evaluate.answers import model_answers
from alambic.models.loading import LoadedModel

NUMBER = re.compile(r"-?\d[\d,]*(?:\.\d+)?")
INSTRUCTION = "Solve the problem step by step, then give the final answer as a number."


@dataclass(frozen=True)
class Problem:
    question: str
    answer: str  # the reference number, normalised


@dataclass(frozen=True)
class Accuracy:
    correct: int
    total: int

    @property
    def accuracy(self) -> float:
        return self.correct / self.total if self.total else 0.0


def load_problems(path: str | Path, limit: int | None = None) -> list[Problem]:
    path = Path(path)
    if not path.is_file():
        raise InvalidRequestError(f"no GSM8K file at {path}")
    problems = []
    for line in path.read_text().splitlines()[:limit]:
        record = json.loads(line)
        if "####" not in record.get("answer", ""):
            raise InvalidRequestError(f"{path}: a GSM8K answer ends in '#### N'")
        problems.append(Problem(record["question"], normalise(record["answer"].rsplit("####", 1)[1])))
    return problems


def normalise(number: str) -> str:
    value = number.strip().replace(",", "").rstrip(".")
    return value[:-2] if value.endswith(".0") else value


def final_number(text: str) -> str | None:
    found = NUMBER.findall(text)
    return normalise(found[-1]) if found else None


def question(problem: Problem) -> str:
    """What the model is asked."""
    return f"{problem.question}\n\n{INSTRUCTION}"


def score_answers(problems: Sequence[Problem], answers: Sequence[str]) -> Accuracy:
    return Accuracy(sum(final_number(a) == p.answer for a, p in zip(answers, problems, strict=True)), len(problems))


def gsm8k_accuracy(model: LoadedModel, problems: Sequence[Problem], *, max_tokens: int = 256) -> Accuracy:
    """Greedy answers' exact match."""
    return score_answers(problems, model_answers(model, [question(p) for p in problems], max_tokens=max_tokens))
