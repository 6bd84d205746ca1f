"""Continuous batching: sequences join and leave one running batch at token boundaries. A row running alone may
have the model run ahead on a draft of what follows (`generation.speculation`)."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from alambic.errors import InvalidRequestError
from alambic.generation.backends import DraftingBackend, ModelBackend
from alambic.generation.params import (
    Completion,
    FinishEvent,
    FinishReason,
    GenerationEvent,
    LogitsProcessor,
    SamplingParams,
    TokenChoice,
    TokenEvent,
    TokenLogprob,
    sequence_processors,
)
from alambic.generation.sampling import RowDraws, choose_tokens, served_logprobs, shows_in_logprobs
from alambic.generation.speculation import PromptLookup
from alambic.generation.text import TextAssembler
from alambic.models.tokens import vocabulary_bytes

logger = logging.getLogger(__name__)


@dataclass
class Sequence:
    """One sample in flight: its prompt, its keyed random stream, and what it has produced."""

    prompt_ids: list[int]
    params: SamplingParams
    index: int
    emit: Callable[[GenerationEvent | Exception], None]
    assembler: TextAssembler
    draws: RowDraws
    is_cancelled: Callable[[], bool]
    processors: tuple[LogitsProcessor, ...] = ()  # the params' own, or a fresh one for processors with state
    kv_cells: int = 0  # KV cells the sample may fill: its prompt and every token it may generate
    cached_tokens: int = 0  # of its prompt, tokens the backend held already
    logprobs: list[TokenLogprob] | None = None
    generated: list[int] = field(default_factory=list)
    context: TokenHistory | None = None  # prompt + generated as a tensor, kept only for logits processors
    lookup: PromptLookup | None = None  # prompt + generated indexed for drafts, once the row drafts

    @classmethod
    def create(cls, prompt_ids, params, index, emit, tokenizer, is_cancelled, kv_cells=0) -> Sequence:
        # With a seed, sample i of a request draws from seed + i: reproducible and independent samples.
        seed = params.seed + index if params.seed is not None else secrets.randbits(63)
        return cls(
            prompt_ids=list(prompt_ids),
            params=params,
            index=index,
            emit=emit,
            assembler=TextAssembler(tokenizer, params.stop),
            draws=RowDraws(seed),
            is_cancelled=is_cancelled,
            processors=sequence_processors(params.logits_processors),
            kv_cells=kv_cells,
            logprobs=[] if params.logprobs else None,
            context=TokenHistory(prompt_ids) if params.logits_processors else None,
        )

    def append(self, token: int) -> None:
        self.generated.append(token)
        if self.context is not None:
            self.context.append(token)
        if self.lookup is not None:
            self.lookup.append(token)

    def finish(self, reason: FinishReason) -> None:
        rest = self.assembler.flush()
        completion = Completion(
            self.index, self.assembler.text, self.generated, reason, self.logprobs, self.cached_tokens
        )
        self.emit(FinishEvent(self.index, completion, rest))

    def fail(self, error: Exception) -> None:
        """End this sample with `error`; the others in the batch go on."""
        try:
            self.emit(error)
        except Exception:  # its caller is gone (a closed event loop): nobody is left to tell
            logger.exception("could not report a failed sequence")


class TokenHistory:
    """A sample's prompt and generated ids as one (1, T) tensor that grows in place, for logits processors:
    appending a token costs the same at any length, where rebuilding the tensor each step cost O(T)."""

    def __init__(self, prompt_ids: list[int]) -> None:
        self.length = len(prompt_ids)
        self.buffer = torch.empty((1, max(64, 2 * self.length)), dtype=torch.long)
        self.buffer[0, : self.length] = torch.tensor(prompt_ids, dtype=torch.long)

    def append(self, token: int) -> None:
        if self.length == self.buffer.shape[1]:  # double: views handed out before keep the old buffer
            grown = torch.empty((1, 2 * self.length), dtype=torch.long)
            grown[:, : self.length] = self.buffer
            self.buffer = grown
        self.buffer[0, self.length] = token
        self.length += 1

    def ids(self) -> torch.Tensor:
        return self.buffer[:, : self.length]  # (1, T), a view


@dataclass
class Ahead:
    """Drafted tokens the model was fed after the only row's latest token, with the logits after each, (k, V)."""

    tokens: list[int]
    logits: torch.Tensor


class DecodeBatch:
    """The running batch: admit sequences, sample one token for each, let finished ones go.

    The backend keeps the rows' KV state; this class keeps what the rows are for (sampling parameters,
    logits processors, text, logprobs) and is the same for every backend. With `draft_tokens`, a row running alone
    has the model fed up to that many drafted tokens with each of its own (a `DraftingBackend`), and each step whose
    sampled token is the draft's next finds its logits computed already; a step that parts from the draft takes the
    rest back. Every token is still chosen from the model's logits at its own position, as without drafts.
    """

    def __init__(self, backend: ModelBackend, draft_tokens: int = 0) -> None:
        if draft_tokens and not isinstance(backend, DraftingBackend):
            raise InvalidRequestError(
                f"The {backend.name} backend cannot take drafted tokens back: speculative decoding needs llama.cpp.",
                param="draft_tokens",
            )
        self.backend = backend
        self.tokens = TokenPieces(backend.tokenizer)
        self.eos_ids = sorted(backend.eos_token_ids)
        self.sequences: list[Sequence] = []
        self.next_logits: torch.Tensor | None = None  # (B, V) logits for each row's next token
        self.draft_tokens = draft_tokens
        self.ahead: Ahead | None = None
        self.drafted_tokens = self.accepted_tokens = 0  # fed as drafts; of those, chosen by the sampler

    def __len__(self) -> int:
        return len(self.sequences)

    @torch.inference_mode()
    def admit(self, joining: list[Sequence]) -> None:
        """Prefill `joining` and add it to the running batch."""
        self._take_back_draft()  # the row is no longer alone
        # The running rows' logits may live in the backend's buffer, which the prefill overwrites (even
        # when it fails: the batch must go on with them).
        if self.next_logits is not None:
            self.next_logits = self.next_logits.clone()
        logits = self.backend.prefill([s.prompt_ids for s in joining])
        for sequence, cached in zip(joining, self.backend.cached_tokens, strict=True):
            sequence.cached_tokens = cached
        self.next_logits = logits if self.next_logits is None else torch.cat([self.next_logits, logits])
        self.sequences.extend(joining)

    @torch.inference_mode()
    def step(self) -> None:
        """Sample one token for every row, emit it, drop finished rows, and run the model on the rest.

        A row whose own work fails (its logits processors, its text, its caller's sink) fails alone; an
        exception from here means the batch-wide work failed (the forward pass)."""
        failed: dict[int, Exception] = {}
        logits = self._ban_early_end(self.next_logits)
        wants = [s.params.logprobs for s in self.sequences]
        # rows served logprobs from before their processors: copied now, as the processors work in place
        model_rows = [row for row, s in enumerate(self.sequences) if wants[row] and not shows_in_logprobs(s.processors)]
        model_logits = logits[model_rows] if model_rows else None
        logits = self._apply_logits_processors(logits, failed)
        logprobs = served_logprobs(logits, model_rows, model_logits) if any(wants) else None
        tokens = choose_tokens(logits, [s.params for s in self.sequences], [s.draws for s in self.sequences])
        keep: list[int] = []
        for row, (sequence, token) in enumerate(zip(self.sequences, tokens, strict=True)):
            if row in failed:
                sequence.fail(failed[row])
                continue
            try:
                if self._advance(sequence, token, None if logprobs is None else logprobs[row]):
                    keep.append(row)
            except Exception as error:
                logger.exception("sequence failed")
                sequence.fail(error)
        if self.ahead is not None and not (keep == [0] and tokens[0] == self.ahead.tokens[0]):
            self._take_back_draft()
        self._keep(keep)
        if self.sequences:
            self.next_logits = self._forward([tokens[row] for row in keep])

    def _forward(self, tokens: list[int]) -> torch.Tensor:
        """The logits after each row's `tokens`: those of the draft's next token when the row took it, else from a
        forward pass, with a fresh draft fed after the token when a row runs alone and its past suggests one."""
        if self.ahead is not None:
            logits, rest = self.ahead.logits[:1], Ahead(self.ahead.tokens[1:], self.ahead.logits[1:])
            self.ahead = rest if rest.tokens else None
            self.accepted_tokens += 1
            return logits
        draft = self._draft() if self.draft_tokens and len(self.sequences) == 1 else []
        if not draft:
            return self.backend.decode(tokens)
        logits = self.backend.decode_ahead(tokens[0], draft)
        self.drafted_tokens += len(draft)
        self.ahead = Ahead(draft, logits[1:])
        return logits[:1]

    def _draft(self) -> list[int]:
        """What the only row's past suggests follows its latest token, no further than it may generate."""
        sequence = self.sequences[0]
        if sequence.lookup is None:
            sequence.lookup = PromptLookup(sequence.prompt_ids + sequence.generated)
        fed = len(sequence.prompt_ids) + len(sequence.generated)
        room = min(sequence.params.max_tokens - len(sequence.generated), self.backend.context_length - fed) - 1
        return sequence.lookup.draft(min(self.draft_tokens, room))

    def _take_back_draft(self) -> None:
        if self.ahead is not None:
            self.backend.rewind(len(self.ahead.tokens))
            self.ahead = None

    def _advance(self, sequence: Sequence, token: int, logprobs: torch.Tensor | None) -> bool:
        """Give `token` to `sequence`; whether it goes on."""
        if sequence.is_cancelled():
            sequence.finish("cancelled")
            return False
        if token in self.backend.eos_token_ids:
            sequence.finish("stop")
            return False
        sequence.append(token)
        record = self._token_logprob(token, logprobs, sequence.params) if logprobs is not None else None
        if sequence.logprobs is not None:
            sequence.logprobs.append(record)
        sequence.emit(TokenEvent(sequence.index, sequence.assembler.add(token), record))
        if sequence.assembler.stopped:
            sequence.finish("stop")
            return False
        if (
            len(sequence.generated) >= sequence.params.max_tokens
            or len(sequence.prompt_ids) + len(sequence.generated) >= self.backend.context_length
        ):
            sequence.finish("length")
            return False
        return True

    def cancel_all(self, error: Exception) -> None:
        """Fail every sequence in flight (the model raised) and start empty."""
        for sequence in self.sequences:
            sequence.fail(error)
        self.ahead = None  # its cells go with its row
        self._keep([])

    def _keep(self, rows: list[int]) -> None:
        if len(rows) == len(self.sequences):
            return
        self.sequences = [self.sequences[row] for row in rows]
        self.next_logits = self.next_logits[rows] if rows else None
        self.backend.keep(rows)

    def _ban_early_end(self, logits: torch.Tensor) -> torch.Tensor:
        """No end of sequence before `min_tokens` (in place: the batch's logits serve this step only). Before the
        logits processors, so that a watermark chooses among the tokens allowed."""
        too_short = [row for row, s in enumerate(self.sequences) if len(s.generated) < s.params.min_tokens]
        if too_short:  # numpy's indexing of these few cells: 0.12 -> 0.08 ms a step at one row against torch's
            logits.numpy()[np.ix_(too_short, self.eos_ids)] = -np.inf
        return logits

    def _apply_logits_processors(self, logits: torch.Tensor, failed: dict[int, Exception]) -> torch.Tensor:
        """The rows' logits processors in order (in place). A row whose processors raise, or leave no finite
        best score, goes into `failed` and gets harmless logits, so that sampling the others still works."""
        if not any(s.processors for s in self.sequences):
            return logits
        for row, sequence in enumerate(self.sequences):
            if not sequence.processors:
                continue
            try:
                row_view = row_scores = logits[row : row + 1]  # (1, V)
                for processor in sequence.processors:
                    row_scores = processor(sequence.context.ids(), row_scores)
                # NaN, +inf, or nothing left to sample; numpy's max, as torch's wakes its threads (~90 us cold)
                if not np.isfinite(row_scores.float().numpy().max()):
                    raise RuntimeError("A logits processor left no finite score to sample from.")
                if row_scores is not row_view:  # a processor that did not work in place
                    logits[row] = row_scores[0]
            except Exception as error:
                logger.exception("logits processor failed")
                failed[row] = error
                logits[row] = 0.0
        return logits

    def _token_logprob(self, token: int, logprobs: torch.Tensor, params: SamplingParams) -> TokenLogprob:
        top: tuple[TokenChoice, ...] = ()
        if params.top_logprobs > 0:
            values, ids = torch.topk(logprobs, params.top_logprobs)
            top = tuple(self.tokens.choice(i, v) for i, v in zip(ids.tolist(), values.tolist(), strict=True))
        return TokenLogprob(**vars(self.tokens.choice(token, float(logprobs[token]))), top=top)


class TokenPieces:
    """Memoised text and bytes of single tokens, as OpenAI's logprobs report them."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.bytes = vocabulary_bytes(tokenizer)
        self.texts: dict[int, str] = {}

    def choice(self, token_id: int, logprob: float) -> TokenChoice:
        text = self.texts.get(token_id)
        if text is None:
            text = self.texts[token_id] = self.tokenizer.decode([token_id])
        return TokenChoice(token_id, text, self.bytes[token_id], logprob)
