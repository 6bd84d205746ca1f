import time

import numpy as np
import pytest
import torch
from scipy import stats

from alambic.generation import GenerationRequest, SamplingParams
from alambic.watermark import AaronsonScheme, KirchenbauerScheme, schemes
from alambic.watermark.keyed_hash import (
    complements32,
    context_hash,
    context_hashes,
    gumbel_noises32,
    key_seed,
    pair_draws32,
)

SCHEMES = [KirchenbauerScheme, AaronsonScheme]
VOCAB = 49152


def test_keyed_draws_are_uniform_and_depend_on_key_and_context():
    seed = key_seed("k")
    draws = 1 - complements32(pair_draws32(np.full(VOCAB, seed), np.arange(VOCAB)))
    assert stats.kstest(draws, "uniform").pvalue > 0.01
    other_key = 1 - complements32(pair_draws32(np.full(VOCAB, key_seed("other")), np.arange(VOCAB)))
    assert np.mean(draws == other_key) < 0.001
    tokens = np.array([5, 9, 5, 9])
    hashes = context_hashes(tokens, 1, seed)
    assert hashes[0] == hashes[2] and hashes[0] != hashes[1]  # same previous token, same context
    # the generation side's scalar hash is the detection side's vectorised one
    long = np.array([7, 123, 49151, 0, 42])
    assert [context_hash(list(long[i : i + 3]), seed) for i in range(2)] == list(context_hashes(long, 3, seed))


@pytest.mark.parametrize("scheme_class", SCHEMES, ids=lambda c: c.name)
def test_pvalues_on_unwatermarked_text_are_uniform_over_keys(scheme_class):
    rng = np.random.default_rng(0)
    text = rng.integers(0, VOCAB, size=1000)
    pvalues = [scheme_class(f"key-{i}").detect(text).pvalue for i in range(300)]
    assert stats.kstest(pvalues, "uniform").pvalue > 0.01
    assert 0.5 * 0.05 < np.mean(np.array(pvalues) < 0.05) < 2 * 0.05


@pytest.mark.parametrize("scheme_class", SCHEMES, ids=lambda c: c.name)
def test_watermarked_text_from_the_tiny_model_is_detected_within_a_few_hundred_tokens(engine, tiny, scheme_class):
    scheme = scheme_class("secret")
    prompt = tiny.tokenizer.encode("Once upon a time")
    params = SamplingParams(max_tokens=200, temperature=1.0, seed=3, logits_processors=(scheme.processor(),))
    [[completion]] = engine.generate([GenerationRequest(prompt, params)])
    detection = scheme.detect(prompt[-1:] + completion.token_ids)
    assert detection.tokens_scored >= 150 and detection.pvalue < 1e-6
    assert scheme_class("another key").detect(prompt[-1:] + completion.token_ids).pvalue > 1e-3


def test_kgw_generation_biases_green_tokens_only(tiny):
    scheme = KirchenbauerScheme("secret", gamma=0.25, delta=2.0)
    scores = torch.zeros(1, VOCAB)
    out = scheme.processor()(torch.tensor([[1, 2, 3]]), scores.clone())
    green = scheme.green_mask(context_hashes(np.array([3, 0]), 1, scheme.seed), VOCAB)
    assert torch.equal(out[0] == 2.0, torch.from_numpy(green))
    assert abs(green.mean() - 0.25) < 0.01


def test_kgw_processor_computes_a_contexts_green_list_once_within_its_budget(monkeypatch):
    """The green lists of recent contexts are kept (a one-token context recurs), as many as the budget holds."""
    scheme = KirchenbauerScheme("secret", gamma=0.25, delta=2.0)
    computed = []
    green_mask = scheme.green_mask
    monkeypatch.setattr(scheme, "green_mask", lambda *args: computed.append(args[0]) or green_mask(*args))
    monkeypatch.setattr(schemes, "GREEN_BIASES_BYTES", 3 * VOCAB * 4)  # room for three contexts' biases
    processor = scheme.processor()
    logits = torch.randn(1, VOCAB)
    contexts = [5, 7, 5, 9, 11, 5, 7]  # 11 evicts 7, the least recently used, and 7 is computed again
    outputs = [processor(torch.tensor([[1, c]]), logits.clone()) for c in contexts]
    hashes = {c: context_hashes(np.array([c, 0]), 1, scheme.seed)[0] for c in contexts}
    assert computed == [hashes[c] for c in (5, 7, 9, 11, 7)]
    for context, out in zip(contexts, outputs, strict=True):
        assert torch.equal(out, logits + torch.from_numpy(green_mask(hashes[context], VOCAB)) * 2.0)


def test_aaronson_sampling_follows_the_model_distribution():
    """Distortion-free: over many contexts, the keyed choice is distributed as p."""
    scheme = AaronsonScheme("secret")
    probs = torch.tensor([0.6, 0.3, 0.1])
    choices = [
        int(scheme.processor()(torch.tensor([[c]]), probs.log().unsqueeze(0).clone())[0].argmax()) for c in range(3000)
    ]
    frequencies = np.bincount(choices, minlength=3) / len(choices)
    assert np.allclose(frequencies, probs.numpy(), atol=0.03)


@pytest.mark.parametrize("scheme_class", SCHEMES, ids=lambda c: c.name)
def test_a_repeated_passage_adds_nothing_to_the_evidence(scheme_class):
    scheme = scheme_class("secret")
    rng = np.random.default_rng(1)
    # a short passage that happens to look watermarked: the best of many random ones
    passage = max((rng.integers(0, VOCAB, size=12) for _ in range(2000)), key=lambda t: scheme.detect(t).score)
    twice, hundred_times = scheme.detect(np.tile(passage, 2)), scheme.detect(np.tile(passage, 100))
    assert hundred_times == twice  # every pair of the 100 copies is already in two (the seam included)
    assert twice.pvalue > 1e-7
    # without de-duplication the same text would look overwhelming
    tokens = np.tile(passage, 100)
    every_pair = scheme.pair_scores(context_hashes(tokens, 1, scheme.seed), tokens[1:])
    assert scheme.pvalue(float(every_pair.sum()), len(every_pair)) < 1e-30


def test_gumbel_processor_takes_the_textbook_choice():
    """argmax r^(1/p) in float64 with the softmax, as Aaronson writes it, is what the float32 Gumbel-max form picks."""
    scheme, rng = AaronsonScheme("k"), np.random.default_rng(0)
    for step in range(200):
        logits = torch.from_numpy(rng.normal(0, 3, VOCAB).astype(np.float32))
        input_ids = torch.tensor([[step, step + 1]])
        r = 1 - complements32(pair_draws32(np.full(VOCAB, scheme._context_hash(input_ids)), np.arange(VOCAB)))
        textbook = int(np.argmax(np.log(r) / torch.softmax(logits.double(), -1).numpy()))
        chosen = scheme.processor()(input_ids, logits[None].clone())[0]
        assert torch.isfinite(chosen).sum() == 1 and int(torch.argmax(chosen)) == textbook


def test_gumbel_noise_is_finite_and_accurate_for_every_draw():
    """float32 rounds 1 - u to 1 for the smallest draws: their noise must stay finite, not -inf."""
    draws = np.array([0, 127, 128, 2**20, 2**31, 2**32 - 1], dtype=np.uint32)
    exact = -np.log(-np.log((draws.astype(np.float64) + 0.5) * 2**-32))
    noises = gumbel_noises32(draws)
    assert np.isfinite(noises).all() and np.abs(noises - exact).max() < 0.35
    np.testing.assert_allclose(noises[-2:], exact[-2:], rtol=1e-6)  # u >= 1/2, where the winners are


def test_gumbel_leaves_a_repeated_context_to_ordinary_sampling():
    processor, logits = AaronsonScheme("k", context_width=2).processor(), torch.randn(1, VOCAB)
    assert torch.equal(processor(torch.tensor([[5, 6, 7, 5, 6]]), logits.clone()), logits)  # (5, 6) again
    assert torch.isfinite(processor(torch.tensor([[5, 6, 7, 6, 5]]), logits.clone())).sum() == 1


def rescanned_context_seen_before(ids: list[int], width: int) -> bool:
    """The repeated-context decision as the processor first took it: a scan of every earlier window."""
    return any(ids[start : start + width] == ids[-width:] for start in range(len(ids) - width))


@pytest.mark.parametrize("width", [1, 2, 3])
def test_gumbel_repeated_context_decisions_equal_a_full_rescan(width):
    rng, vocab = np.random.default_rng(width), 8
    for _ in range(20):
        ids = rng.integers(0, 4, size=120).tolist()  # 4 token values: contexts repeat often
        processor = AaronsonScheme("k", context_width=width).processor()
        for length in range(int(rng.integers(1, 10)), len(ids) + 1):
            logits = torch.randn(1, vocab)
            out = processor(torch.tensor([ids[:length]]), logits.clone())
            left_alone = torch.equal(out, logits)
            assert left_alone == rescanned_context_seen_before(ids[:length], width), (ids[:length], width)
    # one processor handed an unrelated sequence starts over rather than mixing the two
    processor = AaronsonScheme("k", context_width=2).processor()
    processor(torch.tensor([[5, 6, 7, 5, 6]]), torch.randn(1, vocab))
    assert torch.isfinite(processor(torch.tensor([[1, 2, 3, 4, 7, 5]]), torch.randn(1, vocab))).sum() == 1  # (7, 5)


def test_gumbel_per_token_cost_does_not_grow_with_the_answer():
    """The seen contexts are kept, not rescanned: a step at 150,000 tokens costs what one at 100 does."""
    ids, scores = torch.randint(0, 1000, (1, 150_100)), torch.zeros(1, 16)

    def seconds_per_step(start: int, steps: int = 50) -> float:
        processor = AaronsonScheme("k").processor()
        processor(ids[:, :start], scores.clone())  # the first call scans what is already there
        began = time.perf_counter()
        for length in range(start + 1, start + 1 + steps):
            processor(ids[:, :length], scores.clone())
        return (time.perf_counter() - began) / steps

    short = min(seconds_per_step(100) for _ in range(5))
    long = min(seconds_per_step(150_000) for _ in range(5))
    assert long < 3 * short, (short, long)
