"""One chat request through the official openai client, retried the way a polite, persistent client would.

Retried: 429 (after its Retry-After, else backoff), 5xx, timeouts and connection errors, with exponential
backoff and full jitter. Any other 4xx is final: asking again would get the same answer, and so is a 200
that is not a chat completion (recorded as an error; the next run asks again). Each attempt takes a slot
under the adaptive concurrency limit and tells it when the teacher was overloaded (a timeout, a 503, a 429
without Retry-After); a 429 that names its wait is a rate limit, waited out without cutting the limit. The
wait for a slot costs no attempt.
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from dataclasses import dataclass

import httpx
import openai

from alambic.harvest.completion import Completion, MalformedAnswer, parse_completion
from alambic.harvest.keys import ApiKey, KeyPool
from alambic.harvest.limiter import AdaptiveLimit


@dataclass(frozen=True)
class RetryPolicy:
    max_attempts: int = 8
    base_delay_s: float = 0.5
    max_delay_s: float = 30.0
    timeout_s: float = 120.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        return rng.uniform(0, min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1)))


class RequestFailed(Exception):
    def __init__(self, message: str, attempts: int) -> None:
        super().__init__(message)
        self.attempts = attempts


async def create_with_retries(
    client: openai.AsyncOpenAI,
    pool: KeyPool,
    key: ApiKey,
    request: dict,
    policy: RetryPolicy,
    retries: Counter[str],
    rng: random.Random,
    limit: AdaptiveLimit,
) -> tuple[Completion, int]:
    """The completion, read, and the number of attempts it took; RequestFailed when it will not come."""
    for attempt in range(1, policy.max_attempts + 1):
        ticket = await limit.acquire()
        try:
            await pool.wait_turn(key)
            # The client's own low-level call: the same HTTP, auth and errors as `chat.completions.create`,
            # without its walk over the typed parameters and the typed response (~1.5 ms of CPU a request,
            # which on two cores the server would otherwise lose).
            raw = await client.post("/chat/completions", body=request, cast_to=httpx.Response)
            return parse_completion(raw.content, request.get("n", 1)), attempt
        except MalformedAnswer as malformed:
            raise RequestFailed(f"malformed answer: {malformed}", attempt) from None
        except openai.RateLimitError as error:
            wait = _retry_after(error)
            if wait is None:  # a 429 that names no wait: the server is shedding load
                limit.overloaded(ticket)
            reason, delay = "429", wait or policy.backoff(attempt, rng)
        except openai.APITimeoutError:
            limit.overloaded(ticket)
            reason, delay = "timeout", policy.backoff(attempt, rng)
        except openai.APIConnectionError:
            reason, delay = "connection", policy.backoff(attempt, rng)
        except openai.APIStatusError as error:
            if error.status_code < 500:
                raise RequestFailed(f"HTTP {error.status_code}: {_message(error)}", attempt) from None
            if error.status_code == 503:
                limit.overloaded(ticket)
            reason, delay = "5xx", policy.backoff(attempt, rng)
        finally:
            limit.release(ticket)
        if attempt == policy.max_attempts:
            raise RequestFailed(f"gave up after {attempt} attempts (last: {reason})", attempt)
        retries[reason] += 1
        await asyncio.sleep(delay)
    raise AssertionError("unreachable")


def _retry_after(error: openai.APIStatusError) -> float | None:
    value = error.response.headers.get("retry-after")
    try:
        return max(0.0, float(value)) if value is not None else None
    except ValueError:  # an HTTP date: fall back to backoff
        return None


def _message(error: openai.APIStatusError) -> str:
    body = error.body if isinstance(error.body, dict) else {}
    return str(body.get("message") or body.get("error", {}).get("message") or error.message)
