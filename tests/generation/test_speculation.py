"""Speculative decoding from a sequence's own past: drafts, and the batch that runs the model ahead on them."""

import re

import httpx
import pytest
import torch
from test_engine import chat_ids

from alambic.errors import InvalidRequestError
from alambic.generation import GenerationEngine, GenerationRequest, SamplingParams
from alambic.generation.backends import DraftingBackend, TransformersBackend
from alambic.generation.batch import DecodeBatch, Sequence
from alambic.generation.speculation import PromptLookup
from alambic.watermark import KirchenbauerScheme
from conftest import start_gateway


def test_a_draft_is_what_followed_the_latest_earlier_occurrence_of_the_longest_suffix():
    lookup = PromptLookup([5, 6, 7, 8, 1, 2, 6, 7, 9, 3])
    assert lookup.draft(4) == []  # 3 never occurred before
    lookup.append(6)
    lookup.append(7)
    assert lookup.draft(4) == [9, 3, 6, 7]  # (6, 7) last came before 9, not before 8
    assert lookup.draft(2) == [9, 3]
    assert lookup.draft(0) == []
    lookup.append(8)  # (6, 7, 8) occurred once, at the start: the longer match wins over (7, 8)'s
    assert lookup.draft(3) == [1, 2, 6]
    assert PromptLookup([4, 4]).draft(3) == []  # a single token repeated is no match: the shortest is two tokens


class Patterned:
    """A model over the tiny one's vocabulary whose next token is all but certain and follows a cycle that repeats its
    pairs with different continuations, so that drafts from the past are right at times and wrong at others; its
    logits differ at every position and with the token before. A row's state is its token list, computed over at
    every call, so a draft taken back is exactly forgotten."""

    CYCLE = (300, 301, 302, 300, 301, 303, 304)

    def __init__(self, tokenizer) -> None:
        self.tokenizer, self.name, self.vocabulary = tokenizer, "patterned", len(tokenizer)
        self.context_length, self.eos_token_ids = 2048, frozenset({tokenizer.eos_token_id})
        self.kv_capacity, self.torch_threads, self.cached_tokens = None, 1, []
        self.rows: list[list[int]] = []
        self.forward_passes = self.longest = 0  # the longest row fed so far

    def _logits(self, row: list[int], last: int) -> torch.Tensor:
        self.forward_passes += 1
        self.longest = max(self.longest, len(row))
        positions = []
        for length in range(len(row) - last + 1, len(row) + 1):
            logits = torch.randn(
                self.vocabulary, generator=torch.Generator().manual_seed(length * 100_003 + row[length - 1])
            )
            logits[self.CYCLE[length % len(self.CYCLE)]] += 12.0
            positions.append(logits)
        return torch.stack(positions)

    def prefill(self, prompts):
        self.rows += [list(p) for p in prompts]
        self.cached_tokens = [0] * len(prompts)
        return torch.cat([self._logits(p, 1) for p in prompts])

    def decode(self, tokens):
        for row, token in zip(self.rows, tokens, strict=True):
            row.append(token)
        return torch.cat([self._logits(row, 1) for row in self.rows])

    def decode_ahead(self, token, draft):
        (row,) = self.rows
        row += [token, *draft]
        return self._logits(row, 1 + len(draft))

    def rewind(self, tokens):
        (row,) = self.rows
        del row[len(row) - tokens :]

    def keep(self, rows):
        self.rows = [self.rows[i] for i in rows]


def generate(backend, request, draft_tokens):
    engine = GenerationEngine(backend, draft_tokens=draft_tokens)
    try:
        return engine.generate([request])[0][0], engine.batch
    finally:
        engine.close()


@pytest.mark.parametrize(
    "params",
    [
        SamplingParams(max_tokens=40, temperature=0),
        SamplingParams(max_tokens=40, temperature=0.9, seed=5, logprobs=True, top_logprobs=2),
        SamplingParams(
            max_tokens=40, temperature=0.7, seed=6, logits_processors=(KirchenbauerScheme("k").processor(),)
        ),
        SamplingParams(max_tokens=17, min_tokens=17, temperature=0),  # drafts stop where max_tokens does
    ],
    ids=["greedy", "sampled-with-logprobs", "watermarked", "short"],
)
def test_drafting_writes_what_decoding_without_drafts_writes_in_fewer_forward_passes(tiny, params):
    backend = Patterned(tiny.tokenizer)
    assert isinstance(backend, DraftingBackend)
    request = GenerationRequest(chat_ids(tiny.tokenizer, "Write a long poem about the sea and the wind."), params)
    plain, _ = generate(backend, request, draft_tokens=0)
    passes, longest, backend.longest = backend.forward_passes, backend.longest, 0
    drafted, batch = generate(backend, request, draft_tokens=4)
    assert backend.longest == longest  # no draft past the last token fed without drafts
    assert drafted.token_ids == plain.token_ids and drafted.text == plain.text
    assert drafted.finish_reason == plain.finish_reason
    if params.logprobs:  # each position's logits computed in a longer pass: equal up to rounding
        assert [t.logprob for t in drafted.logprobs] == pytest.approx([t.logprob for t in plain.logprobs], abs=1e-4)
    assert 0 < batch.accepted_tokens < batch.drafted_tokens  # drafts taken, and drafts taken back
    assert backend.forward_passes - passes == passes - batch.accepted_tokens
    assert backend.rows == []


def test_a_request_joining_takes_the_draft_back_and_both_are_answered_as_if_alone(tiny):
    backend = Patterned(tiny.tokenizer)
    requests = [
        GenerationRequest(chat_ids(tiny.tokenizer, q), SamplingParams(max_tokens=30, temperature=0))
        for q in ("Write a long poem about the sea and the wind.", "Hi")
    ]
    alone = [generate(backend, r, draft_tokens=0)[0].token_ids for r in requests]
    finished = {}
    first, second = (
        Sequence.create(r.prompt_ids, r.params, 0, lambda e, i=i: finished.update({i: e}), tiny.tokenizer, bool)
        for i, r in enumerate(requests)
    )
    batch = DecodeBatch(backend, draft_tokens=4)
    batch.admit([first])
    while batch.ahead is None:  # until the first row runs ahead on a draft
        batch.step()
    fed = len(first.prompt_ids) + len(first.generated)
    assert len(backend.rows[0]) == fed + len(batch.ahead.tokens)
    batch.admit([second])
    assert batch.ahead is None and len(backend.rows[0]) == fed
    while len(batch):
        batch.step()
    assert [finished[i].completion.token_ids for i in (0, 1)] == alone


def test_drafts_need_a_backend_that_can_take_tokens_back(tiny):
    with pytest.raises(InvalidRequestError, match=r"speculative decoding needs llama\.cpp"):
        DecodeBatch(TransformersBackend(tiny), draft_tokens=4)


def test_the_gateway_counts_the_drafted_tokens_accepted_and_taken_back(tiny, sqlite_store):
    engine = GenerationEngine(Patterned(tiny.tokenizer), draft_tokens=4)
    try:
        for gateway in start_gateway(engine, sqlite_store):
            question = [{"role": "user", "content": "Hi"}]
            gateway.client(gateway.key("alice")).chat.completions.create(
                model="patterned", messages=question, max_tokens=40, temperature=0
            )
            metrics = httpx.get(f"{gateway.url}/metrics").text
    finally:
        engine.close()
    counts = {k: float(n) for k, n in re.findall(r'alambic_draft_tokens_total{outcome="(\w+)"} (\S+)', metrics)}
    assert counts["accepted"] == engine.batch.accepted_tokens > 0
    assert counts["taken_back"] == engine.batch.drafted_tokens - engine.batch.accepted_tokens > 0
