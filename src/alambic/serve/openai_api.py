"""/v1: chat completions, text completions and models, on the shared generation engine."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable
from contextlib import aclosing
from typing import Any, TypeVar

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, StreamingResponse

from alambic import __version__
from alambic.errors import (
    AlambicError,
    ClientDisconnectedError,
    ContextLengthError,
    InvalidRequestError,
    ModelNotFoundError,
)
from alambic.generation import (
    Completion,
    GenerationEngine,
    GenerationRequest,
    SamplingParams,
    TokenEvent,
)
from alambic.generation.engine import EventStream
from alambic.logs.fingerprint import fingerprints
from alambic.serve.formats import ChatFormat, CompletionFormat, ResponseFormat
from alambic.serve.requestlog import RequestJournal
from alambic.serve.schemas import ChatCompletionRequest, CompletionRequest, SamplingFields
from alambic.store import AccountPolicy, RequestRecord
from alambic.watermark.schemes import KeyedScheme

COMPLETIONS_DEFAULT_MAX_TOKENS = 16  # as OpenAI's legacy endpoint
FINGERPRINT = f"alambic-{__version__}"
T = TypeVar("T")


async def admitted_account(request: Request) -> AccountPolicy:
    account = await request.app.state.gatekeeper.admit(request)
    await request.app.state.journal.open(request.scope["state"])  # the row exists before any answer does
    return account


router = APIRouter(prefix="/v1", dependencies=[Depends(admitted_account)])


@router.get("/models")
async def list_models(request: Request) -> dict[str, Any]:
    return {"object": "list", "data": [request.app.state.gateway.model_card()]}


@router.get("/models/{model:path}")  # a path: model names may hold a slash (org/name)
async def retrieve_model(model: str, request: Request) -> dict[str, Any]:
    gateway: Gateway = request.app.state.gateway
    if model != gateway.model_name:
        raise ModelNotFoundError(model)
    return gateway.model_card()


@router.post("/chat/completions")
async def chat_completions(body: ChatCompletionRequest, request: Request):
    return await request.app.state.gateway.respond(request, body, ChatFormat)


@router.post("/completions")
async def completions(body: CompletionRequest, request: Request):
    return await request.app.state.gateway.respond(request, body, CompletionFormat)


class Gateway:
    """Turns a validated OpenAI request into a generation request, and its results into a response."""

    def __init__(
        self,
        engine: GenerationEngine,
        journal: RequestJournal,
        *,
        default_max_tokens: int,
        max_tokens_limit: int,
        watermark: KeyedScheme | None = None,
    ) -> None:
        self.engine = engine
        self.journal = journal
        self.tokenizer = engine.backend.tokenizer
        self.model_name = engine.backend.name
        self.context_length = engine.backend.context_length
        self.default_max_tokens = default_max_tokens
        self.max_tokens_limit = max_tokens_limit
        self.watermark = watermark
        self.watermark_processors = (watermark.processor(),) if watermark is not None else ()
        self.started = int(time.time())

    def model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.started, "owned_by": "alambic"}

    async def respond(self, request: Request, body: SamplingFields, fmt: ResponseFormat):
        record: RequestRecord = request.state.record
        self._describe(record, body, fmt)
        self._check_supported(body)
        prompt_ids = fmt.prompt_ids(body, self.tokenizer)
        record.prompt_tokens = len(prompt_ids)
        params = self._sampling_params(body, fmt, len(prompt_ids), request.state.account)
        record.max_tokens = params.max_tokens
        request.app.state.gatekeeper.hold_tokens(request, record.prompt_tokens + params.max_tokens * body.n)
        if params.logits_processors:
            record.watermark_scheme = self.watermark.name
            record.watermark_key_id, record.watermark_params = self.watermark.key_id, self.watermark.parameters()
        generation = GenerationRequest(prompt_ids, params, n=body.n)
        response_id = fmt.id_prefix + uuid.uuid4().hex
        if body.stream:
            # Submitted before the first byte, so that a refusal (n above the batch, a full queue) has its
            # status, as unstreamed, rather than an error event in a 200 stream.
            events = self.engine.stream(generation)
            return StreamingResponse(
                self._stream(request, events, fmt, response_id, body), media_type="text/event-stream"
            )
        completions = await _unless_client_leaves(request, self.engine.complete(generation))
        self._record_result(record, completions)
        return JSONResponse(
            {
                "id": response_id,
                "object": fmt.object_name,
                "created": int(time.time()),
                "model": self.model_name,
                "system_fingerprint": FINGERPRINT,
                "choices": [fmt.choice(c) for c in completions],
                "usage": _usage(record, completions),
            }
        )

    async def _stream(
        self,
        request: Request,
        events: EventStream,
        fmt: ResponseFormat,
        response_id: str,
        body: SamplingFields,
    ) -> AsyncIterator[str]:
        record: RequestRecord = request.state.record
        created = int(time.time())

        def chunk(choices: list[dict], **extra: Any) -> str:
            payload = {
                "id": response_id,
                "object": fmt.chunk_object_name,
                "created": created,
                "model": self.model_name,
                "system_fingerprint": FINGERPRINT,
                "choices": choices,
                **extra,
            }
            return f"data: {json.dumps(payload, ensure_ascii=False)}\n\n"

        completions: list[Completion] = []
        # The record holds what has been sent so far, so a stream cut at any point is logged with its text.
        record.response_texts, record.completion_tokens = [""] * body.n, 0
        try:
            for index in range(body.n):
                opening = fmt.opening_delta(index)
                if opening is not None:
                    yield chunk([opening])
            async with aclosing(events):
                async for first in events:
                    # Events that came while the last write waited (a client reading slower than the tokens
                    # come) go out together: one write for all, not one round trip through the server each.
                    frames = []
                    for event in [first, *events.ready()]:
                        if isinstance(event, TokenEvent):
                            if record.first_token_ms is None:
                                record.first_token_ms = (time.perf_counter() - request.state.started) * 1000
                            record.response_texts[event.index] += event.text
                            record.completion_tokens += 1
                            if event.text or event.logprob is not None:
                                frames.append(chunk([fmt.delta(event.index, event.text, event.logprob)]))
                        else:
                            completions.append(event.completion)
                            if event.text:
                                record.response_texts[event.index] += event.text
                                frames.append(chunk([fmt.delta(event.index, event.text, None)]))
                            frames.append(chunk([fmt.closing_delta(event.index, event.completion.finish_reason)]))
                    if frames:
                        yield "".join(frames)
            self._record_result(record, sorted(completions, key=lambda c: c.index))
            if body.stream_options is not None and body.stream_options.include_usage:
                yield chunk([], usage=_usage(record, completions))
            await self.journal.commit(request.scope["state"])
            yield "data: [DONE]\n\n"
        except AlambicError as error:
            record.error_type, record.error_message = error.code or error.error_type, error.message
            yield f"data: {json.dumps(error.to_openai())}\n\n"

    def _describe(self, record: RequestRecord, body: SamplingFields, fmt: ResponseFormat) -> None:
        """Copy what the client asked for into the log row, before anything can fail."""
        record.model = body.model
        record.stream = body.stream
        record.n = body.n
        record.max_tokens = body.requested_max_tokens()
        record.temperature = body.temperature
        record.top_p = body.top_p
        record.seed = body.seed
        record.stop = body.stop_sequences()
        record.prompt = fmt.logged_prompt(body)
        chat = fmt is ChatFormat
        single = record.prompt[0] if not chat and len(record.prompt) == 1 else None  # not a batch of prompts
        record.prompt_hash, record.conversation = fingerprints(record.prompt if chat else None, single)
        record.logprobs, record.top_logprobs = fmt.logprob_request(body)
        record.parameters = body.model_dump(mode="json", exclude={"messages", "prompt"}, exclude_unset=True)

    def _check_supported(self, body: SamplingFields) -> None:
        """The fields this server does not implement are refused by the schema; here, what only it knows."""
        if body.model != self.model_name:
            raise ModelNotFoundError(body.model)

    def _sampling_params(
        self, body: SamplingFields, fmt: ResponseFormat, prompt_tokens: int, account: AccountPolicy
    ) -> SamplingParams:
        room = self.context_length - prompt_tokens
        if room <= 0:
            raise ContextLengthError(
                f"This model's maximum context length is {self.context_length} tokens; the prompt has {prompt_tokens}."
            )
        requested = body.requested_max_tokens()
        if requested is not None and requested > self.max_tokens_limit:
            raise InvalidRequestError(
                f"max_tokens is {requested}; this server allows at most {self.max_tokens_limit}.",
                param="max_tokens",
                code="max_tokens_too_large",
            )
        if requested is not None and requested > room:
            raise ContextLengthError(
                f"This model's maximum context length is {self.context_length} tokens; the prompt has "
                f"{prompt_tokens} and max_tokens asks for {requested} more."
            )
        default = COMPLETIONS_DEFAULT_MAX_TOKENS if fmt is CompletionFormat else self.default_max_tokens
        logprobs, top_logprobs = fmt.logprob_request(body)
        return SamplingParams(
            max_tokens=requested or min(default, room),
            min_tokens=body.min_tokens,
            temperature=body.temperature,
            top_p=body.top_p,
            top_k=body.top_k,
            stop=tuple(body.stop_sequences()),
            seed=body.seed,
            logprobs=logprobs,
            top_logprobs=top_logprobs,
            logits_processors=self.watermark_processors if account.watermark is not False else (),
        )

    @staticmethod
    def _record_result(record: RequestRecord, completions: list[Completion]) -> None:
        record.response_texts = [c.text for c in completions]
        record.finish_reasons = [c.finish_reason for c in completions]
        record.completion_tokens = sum(len(c.token_ids) for c in completions)


def _usage(record: RequestRecord, completions: list[Completion]) -> dict[str, Any]:
    """OpenAI's usage; the prompt's cached tokens are those of its first sample (each sample of `n` is
    prefilled on its own, the prompt counted once)."""
    prompt, completion = record.prompt_tokens or 0, record.completion_tokens or 0
    cached = next((c.cached_tokens for c in completions if c.index == 0), 0)
    return {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    }


async def _unless_client_leaves(request: Request, work: Awaitable[T]) -> T:
    """`work`'s result; if the client disconnects first, `work` is cancelled (so a client that timed out
    frees its place in the batch instead of leaving the server to finish an answer nobody reads)."""
    task, left = asyncio.ensure_future(work), asyncio.ensure_future(_disconnected(request))
    try:
        done, _ = await asyncio.wait({task, left}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        left.cancel()
        task.cancel()  # a no-op once it is done
    if task in done:
        return task.result()
    await asyncio.wait({task})  # the engine's stream closes, cancelling the request
    raise ClientDisconnectedError("The client disconnected before the answer was ready.")


async def _disconnected(request: Request) -> None:
    """Returns once the client has gone (the body is already read, so only the disconnect can come)."""
    while (await request.receive())["type"] != "http.disconnect":
        pass
