"""The llama.cpp backend on the real teacher (fast enough in llama.cpp not to be marked slow).

F16 here: llama.cpp's quantised kernels are not batch-invariant (a row's logits move by up to ~1 for
Q4_1 and Q8_0, ~0.1 for BF16, depending on what else is in the batch), F16 only by ~0.02, so exact token
equality between batched and one-at-a-time generation is a fair test of the batching itself.
"""

import threading
from dataclasses import replace

import pytest
import torch
from test_engine import chat_ids

from alambic.errors import InvalidRequestError
from alambic.generation import FinishEvent, GenerationEngine, GenerationRequest, SamplingParams
from alambic.generation.backends import load_backend
from alambic.generation.backends.llamacpp import KV_LAYOUTS, LlamaCppBackend
from alambic.models.gguf import smollm2_gguf
from alambic.watermark import AaronsonScheme, KirchenbauerScheme
from conftest import start_gateway

pytest.importorskip("llama_cpp")

# Measured 100% (169 of 169 tokens, both schemes). A near-tie flip halfway through one answer would cost a
# sixth; 0.75 allows one, while backends that drew different green lists or Gumbel choices part at once.
AGREEMENT = 0.75
QUESTIONS = ["Hi", "What is the capital of France?", "Write a long poem about the sea and the wind, please."]


@pytest.fixture(scope="module")
def llama_engine():
    engine = GenerationEngine(load_backend("smollm2", "llamacpp", gguf_type="f16", max_sequences=8), max_batch_size=8)
    yield engine
    engine.close()


@pytest.fixture(scope="module")
def hf_engine():
    # float32, nearest llama.cpp's F16 (bf16 rounds more: near-ties flip more often)
    engine = GenerationEngine(load_backend("smollm2", "transformers", dtype="float32"))
    yield engine
    engine.close()


@pytest.fixture
def prompts(llama_engine):
    return [chat_ids(llama_engine.backend.tokenizer, q) for q in QUESTIONS]


def test_the_backend_names_the_encoding_it_was_asked_for(llama_engine):
    assert llama_engine.backend.encoding == "f16"


@pytest.mark.parametrize(
    "params",
    [SamplingParams(max_tokens=24, temperature=0), SamplingParams(max_tokens=24, temperature=0.9, seed=3)],
    ids=["greedy", "sampled"],
)
def test_batched_generation_equals_one_at_a_time(llama_engine, prompts, params):
    # a seed of its own per request (3, 4, 5), so that rows drawing from each other's streams would part at once;
    # F16's ~0.02 moves flip a sampled token only at a near tie (none in 864 draws of 12 such seed triples)
    requests = [
        GenerationRequest(p, replace(params, seed=params.seed and params.seed + i)) for i, p in enumerate(prompts)
    ]
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


def test_rows_with_their_own_kv_cells_are_answered_as_if_alone(prompts):
    """Per-sequence KV: a row that leaves frees a low sequence id, the next row takes it, and the batch then
    runs its rows out of id order (llama.cpp is fed in id order and the logits put back in row order)."""
    backend = load_backend(
        "smollm2", "llamacpp", gguf_type="f16", max_sequences=3, kv_tokens=3 * 256, threads=1, kv_layout="per-sequence"
    )
    engine = GenerationEngine(backend, max_batch_size=3)
    try:
        assert (backend.context_length, backend.kv_capacity) == (256, None)
        lengths = (40, 6, 40, 20)  # the second leaves first; the fourth joins in its slot, below the third's id
        requests = [
            GenerationRequest(p, SamplingParams(max_tokens=n, min_tokens=n, temperature=0))
            for p, n in zip([*prompts, prompts[0]], lengths, strict=True)
        ]
        alone = [engine.generate([r])[0][0].token_ids for r in requests]
        ids_by_step, decode = [], backend.decode
        backend.decode = lambda tokens: ids_by_step.append(list(backend.sequence_ids)) or decode(tokens)
        assert [c[0].token_ids for c in engine.generate(requests)] == alone
        assert [0, 2, 1] in ids_by_step
    finally:
        engine.close()


def test_a_conversation_s_next_turn_is_prefilled_past_what_its_slot_holds(prompts):
    """Per-sequence KV: a row that leaves keeps its cells; the next turn of its conversation takes its slot (not
    the lowest free one) and feeds llama.cpp only the tokens past the shared prefix, with the same answer."""

    def per_sequence_backend():
        return load_backend(
            "smollm2",
            "llamacpp",
            gguf_type="f16",
            max_sequences=2,
            kv_tokens=2 * 256,
            threads=1,
            kv_layout="per-sequence",
        )

    backend, fresh = per_sequence_backend(), per_sequence_backend()
    engine, fresh_engine = GenerationEngine(backend, max_batch_size=2), GenerationEngine(fresh, max_batch_size=2)
    try:
        greedy = SamplingParams(max_tokens=16, temperature=0)
        # slot 0 takes another conversation, slot 1 the one that goes on
        first = engine.generate([GenerationRequest(prompts[0], greedy), GenerationRequest(prompts[1], greedy)])
        answer = backend.tokenizer.decode(first[1][0].token_ids, skip_special_tokens=True)
        turns = [{"role": "user", "content": QUESTIONS[1]}, {"role": "assistant", "content": answer}]
        turns.append({"role": "user", "content": "And why?"})
        follow_up = backend.tokenizer.apply_chat_template(
            turns, add_generation_prompt=True, tokenize=True, return_dict=False
        )
        fed, decode = [], backend._decode
        backend._decode = lambda entries, wanted: (
            fed.append([sequence for _, _, sequence in entries]) or decode(entries, wanted)
        )
        [[second]] = engine.generate([GenerationRequest(follow_up, greedy)])
        prefill = fed[0]
        assert set(prefill) == {1}  # the slot of the conversation's first turn, though not the lowest free one
        assert len(prefill) <= len(follow_up) - len(prompts[1])
        assert second.cached_tokens == len(follow_up) - len(prefill)
        [[alone]] = fresh_engine.generate([GenerationRequest(follow_up, greedy)])
        assert (second.token_ids, alone.cached_tokens) == (alone.token_ids, 0)
    finally:
        engine.close()
        fresh_engine.close()


@pytest.mark.parametrize("kv_layout", KV_LAYOUTS)
def test_drafting_on_the_teacher_writes_what_decoding_without_drafts_writes(kv_layout):
    """A row alone runs ahead on drafts of its own past, and every token is still the sampler's choice at its
    position: the answers are those written without drafts (F16), and per sequence the slot then holds what was
    written, not what was drafted and taken back."""
    backend = load_backend(
        "smollm2", "llamacpp", gguf_type="f16", max_sequences=2, kv_tokens=2 * 512, threads=1, kv_layout=kv_layout
    )
    prompt = chat_ids(backend.tokenizer, "Count from 1 to 40, one number per line.")
    answers, batches = {}, {}
    for draft_tokens in (0, 4):
        engine = GenerationEngine(backend, max_batch_size=2, draft_tokens=draft_tokens)
        try:
            answers[draft_tokens] = [
                engine.generate([GenerationRequest(prompt, SamplingParams(max_tokens=64, min_tokens=64, **p))])[0][0]
                for p in ({"temperature": 0}, {"temperature": 0.7, "seed": 2})
            ]
        finally:
            engine.close()
        batches[draft_tokens] = engine.batch
    assert [a.token_ids for a in answers[4]] == [a.token_ids for a in answers[0]]
    assert 0 < batches[4].accepted_tokens < batches[4].drafted_tokens
    if kv_layout == "per-sequence":  # slot 0 answered both: it holds the last answer, fed up to its last token
        assert backend.held[0] == prompt + answers[4][1].token_ids[:-1]


def test_torch_samples_on_one_thread_beside_llama_cpp_and_on_its_own_beside_transformers(
    llama_engine, hf_engine, prompts
):
    """llama.cpp decodes on its own threads: torch's workers, idle-spinning after each sampling op, would take
    a core from it (a third slower at one row). Torch ops in a transformers engine keep the threads it had."""
    seen = {}

    def threads_of(name):
        def processor(input_ids, scores):
            seen[name] = torch.get_num_threads()
            return scores

        return processor

    for name, engine in (("llamacpp", llama_engine), ("transformers", hf_engine)):
        params = SamplingParams(max_tokens=2, temperature=0.7, logits_processors=(threads_of(name),))
        engine.generate([GenerationRequest(prompts[0], params)])
    assert seen == {"llamacpp": 1, "transformers": torch.get_num_threads()}
    assert torch.get_num_threads() > 1  # this process has cores to give


def test_the_kv_layout_is_checked():
    with pytest.raises(InvalidRequestError, match="KV layout 'paged'"):
        load_backend("smollm2", "llamacpp", kv_layout="paged")
    with pytest.raises(InvalidRequestError, match=r"llama\.cpp settings"):
        load_backend("tiny", "transformers", kv_layout="per-sequence")


def test_logprobs_agree_with_the_transformers_backend(llama_engine, hf_engine, prompts):
    params = SamplingParams(max_tokens=1, temperature=0, logprobs=True, top_logprobs=5)
    [[llama]] = llama_engine.generate([GenerationRequest(prompts[2], params)])
    [[hf]] = hf_engine.generate([GenerationRequest(prompts[2], params)])
    # the same weights: the shipped Q4_1 de-quantised, to F16 for llama.cpp and to fp32 for transformers
    assert llama.token_ids == hf.token_ids
    assert llama.logprobs[0].logprob == pytest.approx(hf.logprobs[0].logprob, abs=0.05)
    assert {t.token_id for t in llama.logprobs[0].top[:3]} & {t.token_id for t in hf.logprobs[0].top[:3]}


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b, strict=False)) if x != y), min(len(a), len(b)))


@pytest.mark.parametrize(
    "scheme", [KirchenbauerScheme("secret", delta=4.0), AaronsonScheme("secret")], ids=("kgw", "gumbel")
)
def test_both_backends_write_the_same_watermarked_text(llama_engine, hf_engine, prompts, scheme):
    """The same key on both backends: greedy under the watermark, each writes its own text, and they agree.
    Their logits differ by ~0.02 (F16 against fp32, above), so they can part only where the two best watermarked
    scores are that close; once parted they see different contexts, so agreement is the share of tokens written
    before the first difference."""
    params = SamplingParams(max_tokens=32, temperature=0, logits_processors=(scheme.processor(),))
    requests = [GenerationRequest(p, params) for p in prompts]
    texts = [[c[0].token_ids for c in engine.generate(requests)] for engine in (llama_engine, hf_engine)]
    agreed = sum(common_prefix(llama, hf) for llama, hf in zip(*texts, strict=True))
    total = sum(max(len(llama), len(hf)) for llama, hf in zip(*texts, strict=True))
    assert agreed / total >= AGREEMENT, texts
    if scheme.name == "kgw":  # the text is the key's (greedy Gumbel answers this short carry too little evidence)
        assert scheme.detect(prompts[2][-1:] + texts[0][2]).pvalue < 1e-3


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
        assert answer.usage.prompt_tokens_details.cached_tokens == 0  # one pool for all rows: nothing kept


def test_the_gateway_reports_the_prompt_tokens_a_slot_held(sqlite_store):
    backend = load_backend(
        "smollm2", "llamacpp", gguf_type="f16", max_sequences=2, kv_tokens=2 * 512, kv_layout="per-sequence"
    )
    engine = GenerationEngine(backend, max_batch_size=2)
    try:
        for gateway in start_gateway(engine, sqlite_store):
            client = gateway.client(gateway.key("alice"))
            turns = [{"role": "user", "content": "What is the capital of France?"}]
            first = client.chat.completions.create(model="smollm2", messages=turns, max_tokens=8, temperature=0)
            turns += [{"role": "assistant", "content": first.choices[0].message.content}]
            turns += [{"role": "user", "content": "And of Spain?"}]
            streamed = client.chat.completions.create(
                model="smollm2", messages=turns, max_tokens=8, stream=True, stream_options={"include_usage": True}
            )
            (usage,) = [c.usage for c in streamed if c.usage]
            assert first.usage.prompt_tokens_details.cached_tokens < first.usage.prompt_tokens
            assert first.usage.prompt_tokens <= usage.prompt_tokens_details.cached_tokens < usage.prompt_tokens
    finally:
        engine.close()
