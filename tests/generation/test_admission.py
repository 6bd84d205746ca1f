"""Admission to the running batch: requests wait for KV cells instead of failing, and a prompt whose prefill
fails fails alone. On a stand-in for llama.cpp (the tiny model behind a fixed pool of KV cells), and on
llama.cpp itself with the real teacher (slow)."""

import time

import pytest
from test_engine import chat_ids, run_together

from alambic.errors import AlambicError, ContextLengthError, ServerBusyError
from alambic.generation import GenerationEngine, GenerationRequest, SamplingParams
from alambic.generation.backends import TransformersBackend

POISON = 7  # a token id this backend cannot prefill


class PooledCellsBackend:
    """The tiny model's backend with llama.cpp's failure modes: rows share `kv_capacity` cells (a call that
    would need more fails, as `llama_decode` does on a full cache), and a prompt holding POISON fails its prefill."""

    def __init__(self, inner: TransformersBackend, kv_capacity: int) -> None:
        self.inner, self.kv_capacity = inner, kv_capacity
        self.cells: list[int] = []  # per row
        self.peak = 0

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def prefill(self, prompts):
        if any(POISON in prompt for prompt in prompts):
            raise AlambicError("the backend rejects token 7")
        self._claim(sum(len(p) for p in prompts))
        logits = self.inner.prefill(prompts)
        self.cells += [len(p) for p in prompts]
        return logits

    def decode(self, tokens):
        self._claim(len(tokens))
        logits = self.inner.decode(tokens)
        self.cells = [c + 1 for c in self.cells]
        return logits

    def keep(self, rows):
        self.inner.keep(rows)
        self.cells = [self.cells[row] for row in rows]

    def _claim(self, count):
        if sum(self.cells) + count > self.kv_capacity:
            raise ServerBusyError("KV cache full")
        self.peak = max(self.peak, sum(self.cells) + count)


@pytest.fixture
def pooled_engine(tiny):
    def make(kv_capacity):
        engine = GenerationEngine(PooledCellsBackend(TransformersBackend(tiny), kv_capacity), max_batch_size=8)
        engines.append(engine)
        return engine

    engines = []
    yield make
    for engine in engines:
        engine.close()


QUESTIONS = ["Hi", "What is the capital of France?", "Name a colour.", "Count to three.", "Say yes.", "Why?"]


def test_requests_wait_for_kv_cells_instead_of_failing(pooled_engine, tiny, engine):
    prompts = [chat_ids(tiny.tokenizer, q) for q in QUESTIONS]
    params = SamplingParams(max_tokens=40, min_tokens=40, temperature=0)
    requests = [GenerationRequest(p, params) for p in prompts]
    capacity = 2 * max(len(p) for p in prompts) + 2 * 40  # room for two at a time of six
    pooled = pooled_engine(capacity)
    outcomes = run_together(pooled, requests)
    expected = [c[0].token_ids for c in engine.generate(requests)]
    assert [o[0].token_ids for o in outcomes] == expected  # none failed with "KV cache full"
    assert pooled.backend.peak <= capacity and pooled.largest_batch >= 2


def test_a_request_that_can_never_fit_is_refused_at_submit(pooled_engine, tiny):
    pooled = pooled_engine(200)
    prompt = chat_ids(tiny.tokenizer, "Hi")
    fits = GenerationRequest(prompt, SamplingParams(max_tokens=200 - len(prompt)))
    pooled.submit(fits, lambda event: None).cancel()
    with pytest.raises(ContextLengthError, match="KV cache"):
        pooled.submit(GenerationRequest(prompt, SamplingParams(max_tokens=201 - len(prompt))), lambda e: None)
    with pytest.raises(ContextLengthError, match="KV cache"):
        pooled.submit(GenerationRequest(prompt, SamplingParams(max_tokens=100), n=3), lambda e: None)


def test_a_prompt_whose_prefill_fails_fails_alone(pooled_engine, tiny, engine):
    prompts = [chat_ids(tiny.tokenizer, q) for q in QUESTIONS[:3]]
    poisoned = [*prompts[1][:-1], POISON, prompts[1][-1]]
    params = SamplingParams(max_tokens=12, temperature=0)
    good = [GenerationRequest(p, params) for p in (prompts[0], prompts[2])]
    pooled = pooled_engine(10_000)
    first, bad, second = run_together(pooled, [good[0], GenerationRequest(poisoned, params, n=2), good[1]])
    assert len(bad) == 2 and all(isinstance(e, AlambicError) for e in bad)
    assert [first[0].token_ids, second[0].token_ids] == [c[0].token_ids for c in engine.generate(good)]


@pytest.fixture(scope="module")
def small_llama_engine():
    """The real teacher on llama.cpp with 512 KV cells for 4 sequences."""
    pytest.importorskip("llama_cpp")
    from alambic.generation.backends import load_backend

    # one thread: two threads' barriers crawl when the cores are shared with other work
    backend = load_backend("smollm2", "llamacpp", gguf_type="f16", max_sequences=4, kv_tokens=512, threads=1)
    engine = GenerationEngine(backend, max_batch_size=4)
    yield engine
    engine.close()


@pytest.mark.slow
def test_llamacpp_requests_wait_for_kv_cells_instead_of_failing(small_llama_engine):
    engine = small_llama_engine
    assert engine.backend.kv_capacity == 512
    prompts = [chat_ids(engine.backend.tokenizer, q) for q in QUESTIONS[:4]]
    assert all(len(p) + 150 <= 256 for p in prompts)  # two fit at a time, three do not
    params = SamplingParams(max_tokens=150, min_tokens=150, temperature=0)
    outcomes = run_together(engine, [GenerationRequest(p, params) for p in prompts])
    assert all(len(o[0].token_ids) == 150 for o in outcomes)  # not a 503 for a full cache
    assert engine.largest_batch == 2
    with pytest.raises(ContextLengthError, match="KV cache"):
        engine.submit(GenerationRequest(prompts[0], SamplingParams(max_tokens=400), n=2), lambda e: None)


@pytest.mark.slow
def test_llamacpp_prompt_whose_prefill_fails_fails_alone(small_llama_engine):
    engine = small_llama_engine
    good = GenerationRequest(
        chat_ids(engine.backend.tokenizer, QUESTIONS[1]), SamplingParams(max_tokens=12, temperature=0)
    )
    [[expected]] = engine.generate([good])
    unknown_token = GenerationRequest([*good.prompt_ids[:-1], engine.backend.vocab_size + 5], good.params)
    first, failed, second = run_together(engine, [good, unknown_token, good])
    assert isinstance(failed[0], AlambicError)
    assert first[0].token_ids == second[0].token_ids == expected.token_ids
    for _ in range(500):  # the worker frees finished rows just after their last event
        if len(engine.backend.free_ids) == 4:
            break
        time.sleep(0.01)
    assert len(engine.backend.free_ids) == 4  # the failed prefill gave its sequence slot back
    [[again]] = engine.generate([good])
    assert again.token_ids == expected.token_ids
