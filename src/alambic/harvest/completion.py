"""A chat completion's JSON read strictly into one answer per sample: a malformed answer is a reason to record
as an error row, never an exception that stops the harvest."""

from __future__ import annotations

import json
from dataclasses import dataclass, field


class MalformedAnswer(ValueError):
    """A 200 whose body is not a chat completion at all (no sample in it can be used)."""


@dataclass(frozen=True)
class Choice:
    answer: str
    finish_reason: str
    completion_tokens: int  # -1: unknown (several samples, no logprobs to count)
    logprobs: list[dict] | None


@dataclass(frozen=True)
class Completion:
    """Every sample asked for is in exactly one of `choices` and `problems` (why it cannot be used)."""

    choices: dict[int, Choice]
    problems: dict[int, str] = field(default_factory=dict)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    model: str | None = None


def parse_completion(content: bytes, samples: int) -> Completion:
    """The answers to `samples` samples in a chat completion's body; MalformedAnswer when it holds none."""
    try:
        body = json.loads(content)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise MalformedAnswer(f"not JSON: {content[:80]!r}") from None
    if not isinstance(body, dict):
        raise MalformedAnswer(f"a JSON {type(body).__name__}, not an object")
    entries = body.get("choices")
    if not isinstance(entries, list):
        error = body.get("error")
        said = f" (error: {error.get('message') if isinstance(error, dict) else error})" if error else ""
        raise MalformedAnswer(f"no list of choices{said}")
    usage = body.get("usage") if isinstance(body.get("usage"), dict) else {}
    prompt_tokens, completion_tokens = _count(usage.get("prompt_tokens")), _count(usage.get("completion_tokens"))
    by_index = {}
    for position, entry in enumerate(entries):
        index = entry.get("index") if isinstance(entry, dict) else None
        if not isinstance(index, int) or isinstance(index, bool):
            raise MalformedAnswer(f"choice {position} is not an object with an integer index")
        by_index[index] = entry
    choices, problems = {}, {}
    for sample in range(samples):
        if sample not in by_index:
            problems[sample] = f"no choice for sample {sample}"
            continue
        try:
            choices[sample] = _choice(by_index[sample], completion_tokens if samples == 1 else -1)
        except MalformedAnswer as problem:
            problems[sample] = f"choice {sample}: {problem}"
    model = body.get("model")
    return Completion(choices, problems, prompt_tokens, completion_tokens, model if isinstance(model, str) else None)


def _choice(entry: dict, completion_tokens: int) -> Choice:
    message = entry.get("message")
    answer = message.get("content") if isinstance(message, dict) else None
    if not isinstance(answer, str):
        raise MalformedAnswer("no message content")
    finish_reason = entry.get("finish_reason")
    logprobs = _logprobs(entry.get("logprobs"))
    return Choice(
        answer=answer,
        finish_reason=finish_reason if isinstance(finish_reason, str) else "",
        completion_tokens=len(logprobs) if logprobs is not None else completion_tokens,
        logprobs=logprobs,
    )


def _logprobs(logprobs: object) -> list[dict] | None:
    """Each token's text, exact bytes (when the endpoint gives them: they map back to token ids) and logprob,
    with its alternatives."""
    tokens = logprobs.get("content") if isinstance(logprobs, dict) else None
    if tokens is None:
        return None
    try:
        return [{**_token(t), "top_logprobs": [_token(a) for a in t.get("top_logprobs") or []]} for t in tokens]
    except (AttributeError, KeyError, TypeError):  # a token not an object, or without its text or logprob
        raise MalformedAnswer("malformed logprobs") from None


def _token(token: dict) -> dict:
    kept = {"token": token["token"], "logprob": token["logprob"]}
    if token.get("bytes") is not None:
        kept["bytes"] = token["bytes"]
    return kept


def _count(value: object) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else 0
