"""The two OpenAI response shapes: chat completions and legacy text completions, whole or streamed."""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

from alambic.errors import InvalidRequestError
from alambic.generation import Completion, TokenChoice, TokenLogprob
from alambic.serve.schemas import ChatCompletionRequest, CompletionRequest

# What newer OpenAI clients send instead of `system`; chat templates know only the older name (an unknown role
# would go in verbatim, and the template would add its default system prompt as well).
TEMPLATE_ROLES = {"developer": "system"}


class ChatFormat:
    object_name = "chat.completion"
    chunk_object_name = "chat.completion.chunk"
    id_prefix = "chatcmpl-"

    @staticmethod
    def prompt_ids(body: ChatCompletionRequest, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        if not body.messages:
            raise InvalidRequestError("messages must not be empty.", param="messages", code="empty_messages")
        if not tokenizer.chat_template:
            raise InvalidRequestError("This model has no chat template; use /v1/completions.", param="model")
        messages = [{"role": TEMPLATE_ROLES.get(m.role, m.role), "content": m.text()} for m in body.messages]
        try:
            return list(
                tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=False)
            )
        except Exception as error:  # the model's own template rejects the conversation
            raise InvalidRequestError(f"The chat template rejected the messages: {error}", param="messages") from None

    @staticmethod
    def logged_prompt(body: ChatCompletionRequest) -> list:
        return [m.model_dump(exclude_none=True) for m in body.messages]

    @staticmethod
    def logprob_request(body: ChatCompletionRequest) -> tuple[bool, int]:
        return body.logprobs, body.top_logprobs or 0

    @staticmethod
    def choice(completion: Completion) -> dict[str, Any]:
        return {
            "index": completion.index,
            "message": {"role": "assistant", "content": completion.text},
            "logprobs": _chat_logprobs(completion.logprobs),
            "finish_reason": completion.finish_reason,
        }

    @staticmethod
    def opening_delta(index: int) -> dict[str, Any] | None:
        return {
            "index": index,
            "delta": {"role": "assistant", "content": ""},
            "logprobs": None,
            "finish_reason": None,
        }

    @staticmethod
    def delta(index: int, text: str, logprob: TokenLogprob | None) -> dict[str, Any]:
        logprobs = _chat_logprobs([logprob]) if logprob is not None else None
        return {"index": index, "delta": {"content": text}, "logprobs": logprobs, "finish_reason": None}

    @staticmethod
    def closing_delta(index: int, finish_reason: str) -> dict[str, Any]:
        return {"index": index, "delta": {}, "logprobs": None, "finish_reason": finish_reason}


class CompletionFormat:
    object_name = "text_completion"
    chunk_object_name = "text_completion"
    id_prefix = "cmpl-"

    @staticmethod
    def prompt_ids(body: CompletionRequest, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        prompt = body.prompt
        if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
            if not all(0 <= token < len(tokenizer) for token in prompt):
                raise InvalidRequestError("prompt has token ids outside the vocabulary.", param="prompt")
            return list(prompt)
        if isinstance(prompt, list):
            if len(prompt) != 1:
                raise InvalidRequestError("Send one prompt per request.", param="prompt")
            prompt = prompt[0]
        if not prompt:
            raise InvalidRequestError("prompt must not be empty.", param="prompt", code="empty_prompt")
        return tokenizer.encode(prompt)

    @staticmethod
    def logged_prompt(body: CompletionRequest) -> list:
        return body.prompt if isinstance(body.prompt, list) else [body.prompt]

    @staticmethod
    def logprob_request(body: CompletionRequest) -> tuple[bool, int]:
        return body.logprobs is not None, body.logprobs or 0

    @staticmethod
    def choice(completion: Completion) -> dict[str, Any]:
        return {
            "index": completion.index,
            "text": completion.text,
            "logprobs": _completion_logprobs(completion.logprobs),
            "finish_reason": completion.finish_reason,
        }

    @staticmethod
    def opening_delta(index: int) -> dict[str, Any] | None:
        return None

    @staticmethod
    def delta(index: int, text: str, logprob: TokenLogprob | None) -> dict[str, Any]:
        logprobs = _completion_logprobs([logprob]) if logprob is not None else None
        return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": None}

    @staticmethod
    def closing_delta(index: int, finish_reason: str) -> dict[str, Any]:
        return {"index": index, "text": "", "logprobs": None, "finish_reason": finish_reason}


ResponseFormat = type[ChatFormat] | type[CompletionFormat]


def _chat_logprobs(records: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if records is None:
        return None

    def entry(choice: TokenChoice) -> dict[str, Any]:
        return {"token": choice.token, "logprob": choice.logprob, "bytes": list(choice.bytes)}

    return {"content": [{**entry(r), "top_logprobs": [entry(t) for t in r.top]} for r in records]}


def _completion_logprobs(records: list[TokenLogprob] | None) -> dict[str, Any] | None:
    if records is None:
        return None
    offsets, offset = [], 0
    for r in records:
        offsets.append(offset)
        offset += len(r.token)
    return {
        "tokens": [r.token for r in records],
        "token_logprobs": [r.logprob for r in records],
        "top_logprobs": [{t.token: t.logprob for t in r.top} for r in records],
        "text_offset": offsets,
    }
