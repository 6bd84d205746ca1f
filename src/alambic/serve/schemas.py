"""OpenAI request bodies, validated: what the gateway accepts on /v1/chat/completions and /v1/completions.

Every field is declared: one not declared is refused by name, and one that OpenAI defines but this server
does not implement is declared with `refused_unless`, so that only its values that change nothing pass.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

MAX_STOP_SEQUENCES = 4
MAX_TOP_LOGPROBS = 20
UNSUPPORTED = "unsupported_parameter"  # the error type the API turns into a 400 naming the field


def refused_unless(*harmless: object) -> AfterValidator:
    """A field not implemented here: its `harmless` values (those that ask for what the server does anyway)
    pass, any other is refused, rather than ignored while the client believes it was applied."""
    accepted = " or ".join(json.dumps(value) for value in harmless)

    def refuse_unless_harmless(value: Any) -> Any:
        if value not in harmless:
            message = "is not supported by this server (accepted only as {accepted})"
            raise PydanticCustomError(UNSUPPORTED, message, {"accepted": accepted})
        return value

    return AfterValidator(refuse_unless_harmless)


class OpenAIBody(BaseModel):
    model_config = ConfigDict(extra="forbid")


class TextPart(OpenAIBody):
    type: Literal["text"]
    text: str


class ChatMessage(OpenAIBody):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: Annotated[str | None, refused_unless(None)] = None
    refusal: Annotated[str | None, refused_unless(None)] = None
    tool_calls: Annotated[list | None, refused_unless(None, [])] = None
    tool_call_id: Annotated[str | None, refused_unless(None)] = None
    function_call: Annotated[dict | None, refused_unless(None)] = None

    def text(self) -> str:
        if isinstance(self.content, list):
            return "".join(part.text for part in self.content)
        return self.content or ""


class StreamOptions(OpenAIBody):
    include_usage: bool = False


class SamplingFields(OpenAIBody):
    """Fields both endpoints share."""

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=0, description="Extension (as in vLLM): sample from the k most likely tokens.")
    min_tokens: int = Field(0, ge=0, description="Extension (as in vLLM): no end of sequence before this many.")
    n: int = Field(1, ge=1, le=32)
    stop: str | list[str] | None = None
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None  # accepted: identifies the caller, changes no answer (and is logged)
    presence_penalty: Annotated[float, Field(ge=-2.0, le=2.0), refused_unless(0)] = 0.0
    frequency_penalty: Annotated[float, Field(ge=-2.0, le=2.0), refused_unless(0)] = 0.0
    logit_bias: Annotated[dict[str, float] | None, refused_unless(None, {})] = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, stop: str | list[str] | None) -> list[str]:
        stops = [stop] if isinstance(stop, str) else list(stop or [])
        if len(stops) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} stop sequences")
        return [s for s in stops if s]

    def stop_sequences(self) -> list[str]:
        return list(self.stop or [])

    def requested_max_tokens(self) -> int | None:
        return self.max_tokens


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    response_format: Annotated[dict | None, refused_unless(None, {"type": "text"})] = None
    tools: Annotated[list | None, refused_unless(None, [])] = None
    tool_choice: Annotated[str | dict | None, refused_unless(None, "none", "auto")] = None
    functions: Annotated[list | None, refused_unless(None, [])] = None
    function_call: Annotated[str | dict | None, refused_unless(None, "none", "auto")] = None
    # Accepted: they change no answer (there are no tools to call in parallel; nothing else is stored or
    # tiered than what the request log keeps anyway). They are logged with the other parameters.
    parallel_tool_calls: bool | None = None
    metadata: dict[str, str] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None

    @model_validator(mode="after")
    def _top_logprobs_needs_logprobs(self) -> ChatCompletionRequest:
        if self.top_logprobs and not self.logprobs:
            raise ValueError("top_logprobs requires logprobs to be true")
        return self

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens or self.max_tokens


class CompletionRequest(SamplingFields):
    prompt: str | list[str] | list[int]
    logprobs: int | None = Field(None, ge=0, le=MAX_TOP_LOGPROBS)
    echo: Annotated[bool, refused_unless(False)] = False
    suffix: Annotated[str | None, refused_unless(None, "")] = None
    best_of: Annotated[int | None, refused_unless(None, 1)] = None
