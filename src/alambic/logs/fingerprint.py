"""A request's prompt hash and conversation fingerprint, as the monitor reads them from the log.

The prompt hash is the harvest's `prompt_id` (`harvest.prompts.Prompt.of`) of the request's user turns and
system prompt, so a harvested prompt and the requests that sent it share one id. The conversation
fingerprint is the same hash of the user turns before the last: every follow-up to one opener shares it,
and it equals the opener's own prompt hash. Assistant turns are left out (sampled answers differ).
"""

from __future__ import annotations

from typing import Any

from alambic.harvest.prompts import Prompt


def fingerprints(messages: list[dict] | None, prompt: Any = None) -> tuple[str | None, str | None]:
    """(prompt hash, conversation fingerprint) of a chat request's messages or a completion's prompt; None
    where there is no user text (and no conversation for a first turn)."""
    if messages is None:
        return (_hash([prompt], None) if isinstance(prompt, str) else None), None
    system = next((_text(m.get("content")) for m in messages if m.get("role") == "system"), None)
    turns = [_text(m.get("content")) for m in messages if m.get("role") == "user"]
    return _hash(turns, system), _hash(turns[:-1], system)


def _hash(turns: list[str], system: str | None) -> str | None:
    try:
        return Prompt.of(turns, system).prompt_id
    except ValueError:  # no turns, or an empty one
        return None


def _text(content: Any) -> str:
    """A message's text: a string, or the text parts of a list of content parts."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""
