"""The llama.cpp backend on the real teacher (fast enough in llama.cpp not to be marked slow).

F16 here: llama.cpp's quantised kernels are not batch-invariant (a row's logits move by up to ~1 for
Q4_1 and Q8_0, ~0.1 for BF16, depending on what else is in the batch), F16 only by ~0.02, so exact token
equality between batched and one-at-a-time generation is a fair test of the batching itself.
"""

import threading

import pytest
from test_engine import ForceTokens, chat_ids

from alambic.generation import FinishEvent, GenerationEngine, GenerationRequest, SamplingParams
from alambic.generation.backends import load_backend
from alambic.generation.backends.llamacpp import LlamaCppBackend
from alambic.models.gguf import smollm2_gguf
from alambic.watermark import KirchenbauerScheme
from conftest import start_gateway

pytest.importorskip("llama_cpp")

QUESTIONS = ["Hi", "What is the capital of France?", "Write a long poem about the sea and the wind, please."]


@pytest.fixture(scope="module")
def llama_engine():
    engine = GenerationEngine(load_backend("smollm2", "llamacpp", gguf_type="f16", max_sequences=8), max_batch_size=8)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine():
    engine = GenerationEngine(load_backend("smollm2", "transformers"))
    yield engine
    engine.close()


@pytest.fixture
def prompts(llama_engine):
    return [chat_ids(llama_engine.backend.tokenizer, q) for q in QUESTIONS]


@pytest.mark.parametrize(
    "params",
    [SamplingParams(max_tokens=24, temperature=0), SamplingParams(max_tokens=24, temperature=0.9, seed=3)],
    ids=["greedy", "sampled"],
)
def test_batched_generation_equals_one_at_a_time(llama_engine, prompts, params):
    requests = [GenerationRequest(p, params) for p in prompts]
    alone = [llama_engine.generate([r])[0][0].token_ids for r in requests]
    together = [c[0].token_ids for c in llama_engine.generate(requests)]
    assert together == alone


def test_a_request_joining_mid_batch_is_answered_as_if_alone(llama_engine, prompts):
    long_request = GenerationRequest(prompts[2], SamplingParams(max_tokens=60, temperature=0))
    late_request = GenerationRequest(prompts[1], SamplingParams(max_tokens=20, temperature=0))
    expected = [llama_engine.generate([r])[0][0].token_ids for r in (long_request, late_request)]
    completions, tokens_of_long, both_done = {}, [], threading.Semaphore(0)

    def sink_for(name):
        def sink(event):
            if isinstance(event, FinishEvent):
                completions[name] = event.completion
                both_done.release()
            elif name == "long":
                tokens_of_long.append(event)
                if len(tokens_of_long) == 10:  # the long one is running: the late one joins now
                    llama_engine.submit(late_request, sink_for("late"))

        return sink

    llama_engine.submit(long_request, sink_for("long"))
    assert both_done.acquire(timeout=60) and both_done.acquire(timeout=60)
    assert [completions["long"].token_ids, completions["late"].token_ids] == expected


def test_logprobs_agree_with_the_transformers_backend(llama_engine, hf_engine, prompts):
    params = SamplingParams(max_tokens=1, temperature=0, logprobs=True, top_logprobs=5)
    [[llama]] = llama_engine.generate([GenerationRequest(prompts[2], params)])
    [[hf]] = hf_engine.generate([GenerationRequest(prompts[2], params)])
    # the same weights: the shipped Q4_1 de-quantised, to F16 for llama.cpp and to fp32 for transformers
    assert llama.token_ids == hf.token_ids
    assert llama.logprobs[0].logprob == pytest.approx(hf.logprobs[0].logprob, abs=0.05)
    assert {t.token_id for t in llama.logprobs[0].top[:3]} & {t.token_id for t in hf.logprobs[0].top[:3]}


class RecordingProcessor:
    """Wraps a watermark's logits processor and records each decision: context -> the green list it drew."""

    def __init__(self, scheme: KirchenbauerScheme) -> None:
        self.scheme, self.inner = scheme, scheme.processor()
        self.decisions: dict[tuple[int, ...], bytes] = {}

    def __call__(self, input_ids, scores):
        before = scores.clone()
        scores = self.inner(input_ids, scores)
        self.decisions[tuple(input_ids[0].tolist())] = ((scores - before) > 0).numpy().tobytes()
        return scores


def test_watermark_decisions_are_identical_in_both_backends(llama_engine, hf_engine, prompts):
    forced = llama_engine.backend.tokenizer.encode(" the sea is calm and blue tonight")
    decisions = []
    for engine in (llama_engine, hf_engine):
        recorder = RecordingProcessor(KirchenbauerScheme("secret", delta=4.0))
        params = SamplingParams(
            max_tokens=len(forced), temperature=0, logits_processors=(recorder, ForceTokens(len(prompts[1]), forced))
        )
        [[completion]] = engine.generate([GenerationRequest(prompts[1], params)])
        assert completion.token_ids == forced  # the same contexts reach the watermark in both
        decisions.append(recorder.decisions)
    assert decisions[0] == decisions[1] and len(decisions[0]) == len(forced)

    # unforced, each backend's own text carries the mark
    scheme = KirchenbauerScheme("secret", delta=4.0)
    for engine in (llama_engine, hf_engine):
        params = SamplingParams(max_tokens=64, temperature=0.7, seed=1, logits_processors=(scheme.processor(),))
        [[completion]] = engine.generate([GenerationRequest(prompts[2], params)])
        assert scheme.detect(prompts[2][-1:] + completion.token_ids).pvalue < 1e-4


def test_requantised_teacher_is_cached_and_generates(tmp_path, monkeypatch, llama_engine):
    monkeypatch.setenv("ALAMBIC_CACHE_DIR", str(tmp_path))
    path = smollm2_gguf("q8_0")
    assert path.parent == tmp_path and path.stat().st_size > 100_000_000
    assert smollm2_gguf("q8_0") == path
    shipped = llama_engine.backend
    backend = LlamaCppBackend(path, shipped.tokenizer, name="q8", eos_token_ids=shipped.eos_token_ids, max_sequences=1)
    engine = GenerationEngine(backend, max_batch_size=1)
    try:
        ids = chat_ids(shipped.tokenizer, QUESTIONS[1])
        params = SamplingParams(max_tokens=1, temperature=0, logprobs=True, top_logprobs=5)
        [[q8]] = engine.generate([GenerationRequest(ids, params)])
        [[f16]] = llama_engine.generate([GenerationRequest(ids, params)])
        # the same teacher in another encoding: its likeliest next tokens are the same ones
        assert len({t.token_id for t in q8.logprobs[0].top} & {t.token_id for t in f16.logprobs[0].top}) >= 4
    finally:
        engine.close()


def test_the_gateway_serves_the_llamacpp_backend(llama_engine, sqlite_store):
    for gateway in start_gateway(llama_engine, sqlite_store):
        client = gateway.client(gateway.key("alice"))
        question = [{"role": "user", "content": "What is the capital of France?"}]
        answer = client.chat.completions.create(
            model="smollm2", messages=question, max_tokens=16, temperature=0, logprobs=True, top_logprobs=3
        )
        assert "Paris" in answer.choices[0].message.content
        assert len(answer.choices[0].logprobs.content) == answer.usage.completion_tokens
        streamed = client.chat.completions.create(
            model="smollm2", messages=question, max_tokens=16, temperature=0, stream=True
        )
        assert "".join(c.choices[0].delta.content or "" for c in streamed) == answer.choices[0].message.content
