"""Continuous batching: sequences join and leave one running batch, sharing one KV cache, at token boundaries.

Rows are left-padded: each row's real tokens end at the right edge of the cache, so every decode step
appends one column for all rows. A joining group is prefilled on its own, then padded on the left and
concatenated to the running cache; leaving rows are removed with an index select, and columns that only
hold padding for every row are trimmed.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import DynamicCache

from alambic.generation.params import (
    Completion,
    FinishEvent,
    FinishReason,
    GenerationEvent,
    SamplingParams,
    TokenEvent,
    TokenLogprob,
)
from alambic.generation.sampling import choose_tokens, served_logprobs
from alambic.generation.text import TextAssembler
from alambic.models import LoadedModel


@dataclass
class Sequence:
    """One sample in flight: its prompt, its keyed random stream, and what it has produced."""

    prompt_ids: list[int]
    params: SamplingParams
    index: int
    emit: Callable[[GenerationEvent], None]
    assembler: TextAssembler
    generator: torch.Generator
    is_cancelled: Callable[[], bool]
    logprobs: list[TokenLogprob] | None = None
    generated: list[int] = field(default_factory=list)

    @classmethod
    def create(cls, prompt_ids, params, index, emit, tokenizer, is_cancelled) -> Sequence:
        # With a seed, sample i of a request draws from seed + i: reproducible and independent samples.
        seed = params.seed + index if params.seed is not None else secrets.randbits(63)
        return cls(
            prompt_ids=list(prompt_ids),
            params=params,
            index=index,
            emit=emit,
            assembler=TextAssembler(tokenizer, params.stop),
            generator=torch.Generator().manual_seed(seed),
            is_cancelled=is_cancelled,
            logprobs=[] if params.logprobs else None,
        )

    def finish(self, reason: FinishReason) -> None:
        rest = self.assembler.flush()
        completion = Completion(self.index, self.assembler.text, self.generated, reason, self.logprobs)
        self.emit(FinishEvent(self.index, completion, rest))


class DecodeBatch:
    """The running batch of one model: admit sequences, step them one token, let finished ones go."""

    def __init__(self, loaded: LoadedModel) -> None:
        self.loaded = loaded
        self.model = loaded.model
        self.eos_token_ids = loaded.eos_token_ids
        self.pad_token_id = loaded.tokenizer.pad_token_id or min(self.eos_token_ids)
        self.token_text = TokenTexts(loaded.tokenizer)
        self.sequences: list[Sequence] = []
        self.cache: DynamicCache | None = None
        self.attention_mask = torch.zeros(0, 0, dtype=torch.long)  # (B, L) 1 where the cache holds a token
        self.next_logits: torch.Tensor | None = None  # (B, V) logits for each row's next token

    def __len__(self) -> int:
        return len(self.sequences)

    @torch.inference_mode()
    def admit(self, joining: list[Sequence]) -> None:
        """Prefill `joining` as one padded group and merge it into the running batch."""
        width = max(len(s.prompt_ids) for s in joining)
        input_ids = torch.full((len(joining), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(joining), width), dtype=torch.long)
        for row, sequence in enumerate(joining):
            input_ids[row, width - len(sequence.prompt_ids) :] = torch.tensor(sequence.prompt_ids)
            mask[row, width - len(sequence.prompt_ids) :] = 1
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(input_ids, mask, cache)
        if not self.sequences:
            self.cache, self.attention_mask, self.next_logits = cache, mask, logits
        else:
            self._merge(cache, mask, logits)
        self.sequences.extend(joining)

    @torch.inference_mode()
    def step(self) -> None:
        """Sample one token for every row, emit it, drop finished rows, and run the model on the rest."""
        logits = self._apply_logits_processors(self.next_logits)
        logprobs = served_logprobs(logits) if any(s.params.logprobs for s in self.sequences) else None
        tokens = choose_tokens(logits, [s.params for s in self.sequences], [s.generator for s in self.sequences])
        context_length = self.loaded.context_length
        keep: list[int] = []
        for row, (sequence, token) in enumerate(zip(self.sequences, tokens, strict=True)):
            if sequence.is_cancelled():
                sequence.finish("cancelled")
                continue
            if token in self.eos_token_ids:
                sequence.finish("stop")
                continue
            sequence.generated.append(token)
            record = self._token_logprob(token, logprobs[row], sequence.params) if logprobs is not None else None
            if sequence.logprobs is not None:
                sequence.logprobs.append(record)
            sequence.emit(TokenEvent(sequence.index, sequence.assembler.add(token), record))
            if sequence.assembler.stopped:
                sequence.finish("stop")
            elif (
                len(sequence.generated) >= sequence.params.max_tokens
                or len(sequence.prompt_ids) + len(sequence.generated) >= context_length
            ):
                sequence.finish("length")
            else:
                keep.append(row)
        next_tokens = torch.tensor([tokens[row] for row in keep], dtype=torch.long).unsqueeze(1)  # (B', 1)
        self._select(keep)
        if self.sequences:
            self.attention_mask = F.pad(self.attention_mask, (0, 1), value=1)
            self.next_logits = self._forward(next_tokens, self.attention_mask, self.cache)

    def cancel_all(self, error: Exception) -> None:
        """Fail every sequence in flight (the model raised) and start empty."""
        for sequence in self.sequences:
            sequence.emit(error)
        self._select([])

    def _forward(self, input_ids: torch.Tensor, mask: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        # Positions count real tokens only, so a left-padded row sees the same positions as alone.
        position_ids = (mask.cumsum(dim=-1) - 1).clamp(min=0)[:, -input_ids.shape[1] :]
        output = self.model(
            input_ids=input_ids,
            attention_mask=mask,
            position_ids=position_ids,
            past_key_values=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return output.logits[:, -1, :].float()  # (B, V)

    def _apply_logits_processors(self, logits: torch.Tensor) -> torch.Tensor:
        if not any(s.params.logits_processors for s in self.sequences):
            return logits
        logits = logits.clone()
        for row, sequence in enumerate(self.sequences):
            if not sequence.params.logits_processors:
                continue
            ids = torch.tensor([sequence.prompt_ids + sequence.generated], dtype=torch.long)  # (1, T)
            row_scores = logits[row : row + 1]
            for processor in sequence.params.logits_processors:
                row_scores = processor(ids, row_scores)
            logits[row] = row_scores[0]
        return logits

    def _token_logprob(self, token: int, logprobs: torch.Tensor, params: SamplingParams) -> TokenLogprob:
        top: tuple[tuple[int, str, float], ...] = ()
        if params.top_logprobs > 0:
            values, ids = torch.topk(logprobs, params.top_logprobs)
            top = tuple((i, self.token_text(i), v) for i, v in zip(ids.tolist(), values.tolist(), strict=True))
        return TokenLogprob(token, self.token_text(token), float(logprobs[token]), top)

    def _merge(self, cache: DynamicCache, mask: torch.Tensor, logits: torch.Tensor) -> None:
        running_width, joining_width = self.attention_mask.shape[1], mask.shape[1]
        width = max(running_width, joining_width)
        for running_layer, joining_layer in zip(self.cache.layers, cache.layers, strict=True):
            for name in ("keys", "values"):  # (B, H, L, D)
                a = _left_pad(getattr(running_layer, name), width, dim=2)
                b = _left_pad(getattr(joining_layer, name), width, dim=2)
                setattr(running_layer, name, torch.cat([a, b], dim=0))
        self.attention_mask = torch.cat(
            [_left_pad(self.attention_mask, width, dim=1), _left_pad(mask, width, dim=1)], dim=0
        )
        self.next_logits = torch.cat([self.next_logits, logits], dim=0)

    def _select(self, rows: list[int]) -> None:
        """Keep only `rows`, and trim cache columns that are padding for every remaining row."""
        self.sequences = [self.sequences[row] for row in rows]
        if not self.sequences:
            self.cache, self.next_logits = None, None
            self.attention_mask = torch.zeros(0, 0, dtype=torch.long)
            return
        index = torch.tensor(rows, dtype=torch.long)
        mask = self.attention_mask[index]
        first_used = int(mask.any(dim=0).nonzero()[0])
        for layer in self.cache.layers:
            layer.keys = layer.keys[index, :, first_used:, :]
            layer.values = layer.values[index, :, first_used:, :]
        self.attention_mask = mask[:, first_used:]
        self.next_logits = self.next_logits[index]


def _left_pad(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    missing = width - tensor.shape[dim]
    if missing == 0:
        return tensor
    padding = [0, 0] * (tensor.dim() - dim - 1) + [missing, 0]
    return F.pad(tensor, padding)


class TokenTexts:
    """Memoised text of single tokens, as OpenAI's logprobs report them."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self.cache: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self.cache.get(token_id)
        if text is None:
            text = self.cache[token_id] = self.tokenizer.decode([token_id])
        return text
