"""What logprobs mean under a watermark: `plain` serves the model's own (nothing of the key leaks, always
finite), `marked` the watermarked distribution (a client holding the unwatermarked model reads green lists
off it); neither ever puts -inf or NaN into JSON."""

import json
import math

import httpx
import numpy as np
import pytest
import torch

from alambic.generation import GenerationRequest, SamplingParams
from alambic.watermark import AaronsonScheme, KirchenbauerScheme
from alambic.watermark.keyed_hash import context_hash
from conftest import start_gateway

KEY = "provider-secret"
QUESTION = [{"role": "user", "content": "Tell me a long story."}]
DELTA = 4.0
FLOOR = -9999.0  # OpenAI's logprob for a token that cannot be sampled


def schemes(mode):
    return {
        "kgw": KirchenbauerScheme(KEY, delta=DELTA, logprobs=mode),
        "gumbel": AaronsonScheme(KEY, logprobs=mode),
    }


def model_logprobs(tiny, ids: list[int], positions: int) -> torch.Tensor:
    """The unwatermarked model's next-token logprobs (positions, V) for the last `positions` tokens of `ids`."""
    with torch.inference_mode():
        logits = tiny.model(torch.tensor([ids])).logits[0, -positions - 1 : -1]
    return torch.log_softmax(logits.float(), -1)


def marked_answer(engine, tiny, scheme, top_logprobs=20, max_tokens=24):
    prompt = tiny.tokenizer.encode("Once upon a time")
    params = SamplingParams(
        max_tokens=max_tokens, temperature=1.0, seed=5, logprobs=True, top_logprobs=top_logprobs,
        logits_processors=(scheme.processor(),),
    )  # fmt: skip
    [[completion]] = engine.generate([GenerationRequest(prompt, params)])
    reference = model_logprobs(tiny, prompt + completion.token_ids, len(completion.token_ids))
    return prompt, completion, reference


@pytest.mark.parametrize("name", ["kgw", "gumbel"])
def test_plain_logprobs_are_the_unwatermarked_models(engine, tiny, name):
    _, completion, reference = marked_answer(engine, tiny, schemes("plain")[name])
    assert len(completion.logprobs) == len(completion.token_ids) > 0
    for step, (token, record) in enumerate(zip(completion.token_ids, completion.logprobs, strict=True)):
        assert record.logprob == pytest.approx(float(reference[step, token]), abs=1e-4)
        assert [t.token_id for t in record.top] == reference[step].topk(20).indices.tolist()


def test_marked_kgw_logprobs_give_a_context_green_list_away(engine, tiny):
    """With the unwatermarked model in hand (SmolLM2's weights are public), one top-20 answer tells the colour
    of its 20 likeliest tokens: their served logprob exceeds the model's by delta on green, 0 on red (less a
    shared normaliser). Served plain, the difference is 0 for all, red and green alike."""
    recovered = {}
    for mode in ("marked", "plain"):
        scheme = schemes(mode)["kgw"]
        prompt, completion, reference = marked_answer(engine, tiny, scheme)
        correct = total = 0
        ids = prompt + completion.token_ids
        for step, record in enumerate(completion.logprobs):
            tokens = [t.token_id for t in record.top]
            shift = np.array([t.logprob for t in record.top]) - reference[step, tokens].numpy()
            guessed_green = shift > shift.max() - DELTA / 2
            context = context_hash(ids[len(prompt) + step - 1 : len(prompt) + step], scheme.seed)
            green = scheme.green_mask(context, reference.shape[-1])[tokens]
            if mode == "plain":
                assert np.ptp(shift) < 1e-3  # no shift at all
            correct, total = correct + int((guessed_green == green).sum()), total + len(tokens)
        recovered[mode] = correct / total
    assert recovered["marked"] == 1.0  # every colour read exactly
    assert recovered["plain"] < 0.5  # all guessed green: right only for the quarter that is


def test_an_end_banned_by_min_tokens_is_served_as_openais_floor(engine, tiny):
    """marked: the distribution sampled from, the ban included: the banned end of text is -9999, not -inf."""
    prompt, vocab = tiny.tokenizer.encode("Once upon a time"), len(tiny.tokenizer)
    params = SamplingParams(
        max_tokens=3, min_tokens=3, temperature=0, logprobs=True, top_logprobs=vocab,
        logits_processors=(schemes("marked")["kgw"].processor(),),
    )  # fmt: skip
    [[completion]] = engine.generate([GenerationRequest(prompt, params)])
    for record in completion.logprobs:
        served = {t.token_id: t.logprob for t in record.top}
        assert all(math.isfinite(v) and FLOOR <= v <= 0 for v in served.values())
        assert {served[eos] for eos in engine.backend.eos_token_ids} == {FLOOR}


class PreferEnd:
    """Makes end of text all but certain, as a model that has finished its answer would."""

    def __init__(self, eos: list[int]) -> None:
        self.eos = eos

    def __call__(self, input_ids, scores):
        scores[:, self.eos] += 50.0
        return scores


def test_gumbel_respects_min_tokens_when_the_model_would_end(engine, tiny):
    """The ban on ending comes before the watermark: Gumbel picks among the tokens allowed, never an end of
    text that the ban then removes (which left no token at all to sample)."""
    prompt = tiny.tokenizer.encode("Once upon a time")
    processors = (PreferEnd(sorted(engine.backend.eos_token_ids)), AaronsonScheme(KEY).processor())
    params = SamplingParams(max_tokens=8, min_tokens=5, seed=2, logprobs=True, logits_processors=processors)
    [[completion]] = engine.generate([GenerationRequest(prompt, params)])
    assert len(completion.token_ids) == 5 and completion.finish_reason == "stop"
    assert all(math.isfinite(r.logprob) for r in completion.logprobs)


@pytest.fixture(params=[(name, mode) for name in ("kgw", "gumbel") for mode in ("plain", "marked")], ids="-".join)
def logprob_gateway(request, engine, sqlite_store):
    name, mode = request.param
    for gateway in start_gateway(engine, sqlite_store, watermark=schemes(mode)[name]):
        yield gateway, name, mode


def test_watermarked_logprobs_reach_the_openai_client_as_finite_numbers(logprob_gateway):
    gateway, name, mode = logprob_gateway
    key = gateway.key("alice")
    client = gateway.client(key)
    options = dict(model="tiny", messages=QUESTION, max_tokens=16, seed=1, logprobs=True, top_logprobs=5)
    answer = client.chat.completions.create(**options)
    entries = answer.choices[0].logprobs.content
    assert len(entries) == answer.usage.completion_tokens
    streamed = [
        entry for chunk in client.chat.completions.create(**options, stream=True) if chunk.choices
        for entry in (chunk.choices[0].logprobs.content if chunk.choices[0].logprobs else [])
    ]  # fmt: skip
    assert [e.token for e in streamed] == [e.token for e in entries]
    for entry in entries + streamed:
        values = [entry.logprob] + [t.logprob for t in entry.top_logprobs]
        assert len(values) == 6 and all(math.isfinite(v) and FLOOR <= v <= 0 for v in values)
    if name == "gumbel" and mode == "marked":  # where the mark acts, its choice is certain and the rest impossible
        marked = [e for e in entries if e.logprob == 0.0]  # not where the context was seen before
        assert len(marked) > len(entries) / 2
        assert {t.logprob for e in marked for t in e.top_logprobs[1:]} == {FLOOR}
    else:
        assert max(e.logprob for e in entries) < 0 and min(t.logprob for e in entries for t in e.top_logprobs) > FLOOR
    # the raw stream is JSON all through (Python's json would write -inf as -Infinity)
    with httpx.stream(
        "POST", f"{gateway.url}/v1/chat/completions", json={**options, "stream": True},
        headers={"Authorization": f"Bearer {key}"}, timeout=60,
    ) as response:  # fmt: skip
        lines = [line[6:] for line in response.iter_lines() if line.startswith("data: ") and line != "data: [DONE]"]
    assert lines and all(json.loads(line, parse_constant=pytest.fail) for line in lines)
