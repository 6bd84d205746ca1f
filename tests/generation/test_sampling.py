import math

import pytest
import torch

from alambic.generation import SamplingParams, sampling
from alambic.generation.sampling import LOGPROB_FLOOR, RowDraws, choose_tokens, served_logprobs


def draws(logits, params, n=400, seed=0):
    row_draws = RowDraws(seed)
    return [choose_tokens(logits, [params], [row_draws])[0] for _ in range(n)]


def test_temperature_zero_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.9, -1.0]])
    assert draws(logits, SamplingParams(temperature=0), n=5) == [1] * 5


def test_top_k_samples_only_the_k_best():
    logits = torch.tensor([[0.0, 0.1, 0.2, 0.3, 0.4]])
    assert set(draws(logits, SamplingParams(top_k=2))) == {3, 4}


def test_top_p_keeps_the_smallest_set_reaching_the_mass():
    probs = torch.tensor([[0.5, 0.3, 0.15, 0.05]])
    assert set(draws(probs.log(), SamplingParams(top_p=0.7))) == {0, 1}
    assert set(draws(probs.log(), SamplingParams(top_p=0.4))) == {0}


# Each draw test also runs with few tokens racing alone, so that the contender standing for the others wins often
# and the race among them is tested too
@pytest.fixture(params=[sampling.RACED_ALONE_WITHIN, 0.5], ids=["default", "most-race-as-one"])
def raced_alone_within(request, monkeypatch):
    monkeypatch.setattr(sampling, "RACED_ALONE_WITHIN", request.param)


@pytest.mark.usefixtures("raced_alone_within")
def test_sampling_follows_the_distribution():
    probs = torch.tensor([[0.7, 0.2, 0.1]])
    sample = draws(probs.log(), SamplingParams(temperature=1.0), n=3000)
    frequencies = [sample.count(i) / len(sample) for i in range(3)]
    assert frequencies == [pytest.approx(f, abs=0.03) for f in (0.7, 0.2, 0.1)]


def test_same_seed_same_draws():
    logits = torch.randn(1, 50)
    assert draws(logits, SamplingParams(), seed=3) == draws(logits, SamplingParams(), seed=3)
    assert draws(logits, SamplingParams(), seed=3) != draws(logits, SamplingParams(), seed=4)


def test_served_logprobs_are_normalised():
    logprobs = served_logprobs(torch.randn(3, 100))
    torch.testing.assert_close(logprobs.exp().sum(-1), torch.ones(3))


def test_served_logprobs_are_finite_and_rows_can_be_the_models_own():
    logits = torch.randn(3, 100)
    model_logits = logits[[1]].clone()
    logits[0, 5:] = float("-inf")  # a ban or a watermark left few tokens
    logits[1] = float("-inf")
    logits[1, 0] = 0.0  # a Gumbel watermark's one choice
    logits[2] = float("-inf")  # nothing left at all
    logprobs = served_logprobs(logits, [1], model_logits)
    assert torch.isfinite(logprobs).all() and logprobs.min() == LOGPROB_FLOOR == -9999.0
    assert (logprobs[0, 5:] == LOGPROB_FLOOR).all() and (logprobs[2] == LOGPROB_FLOOR).all()
    torch.testing.assert_close(logprobs[1], torch.log_softmax(model_logits[0], -1))  # before the processors


MIXED = [
    SamplingParams(temperature=0),
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=0.7, top_k=5),
    SamplingParams(temperature=1.3, top_p=0.8),
    SamplingParams(temperature=0.7),
    SamplingParams(temperature=0.9, top_k=50, top_p=0.95),
]


def keyed_draws(seeds):
    return [RowDraws(seed) for seed in seeds]


def test_the_batch_is_sampled_as_each_row_alone():
    torch.manual_seed(0)
    steps = [torch.randn(len(MIXED), 300) * 3 for _ in range(40)]
    together, alone = keyed_draws(range(len(MIXED))), keyed_draws(range(len(MIXED)))
    for logits in steps:
        batched = choose_tokens(logits, MIXED, together)
        one_by_one = [choose_tokens(logits[row : row + 1], [p], [alone[row]])[0] for row, p in enumerate(MIXED)]
        assert batched == one_by_one


@pytest.mark.usefixtures("raced_alone_within")
def test_a_seeded_rows_draws_do_not_depend_on_its_neighbours():
    torch.manual_seed(1)
    steps = [torch.randn(3, 300) * 3 for _ in range(40)]
    params = SamplingParams(temperature=0.8, top_p=0.9)

    def row_tokens(neighbours, position):
        row_draws = keyed_draws([100 + i for i in range(len(neighbours) + 1)])
        row_draws.insert(position, row_draws.pop())  # the row under test keeps seed 7 wherever it sits
        row_draws[position] = RowDraws(7)
        out = []
        for logits in steps:
            batch = torch.cat([logits[1:].repeat(len(neighbours), 1)[: len(neighbours)], logits[:1]])
            batch = torch.cat([batch[:position], batch[-1:], batch[position:-1]])
            out.append(
                choose_tokens(batch, [*neighbours[:position], params, *neighbours[position:]], row_draws)[position]
            )
        return out

    alone = row_tokens([], 0)
    assert row_tokens(MIXED[:3], 1) == alone
    assert row_tokens(MIXED, 6) == alone
    assert len(set(alone)) > 5  # sampled, not greedy


@pytest.mark.usefixtures("raced_alone_within")
def test_a_long_tail_holding_most_of_the_mass_is_drawn_in_proportion_to_it():
    # 64 likely tokens and 436 unlikely ones that together hold 60% of the mass (a flat distribution, or a high
    # temperature): a sampler that looks only at the best tokens would miss them.
    probs = torch.cat([torch.full((64,), 0.4 / 64), torch.linspace(1.0, 3.0, 436)])
    probs[64:] *= 0.6 / probs[64:].sum()
    sample = torch.tensor(draws(probs.log().unsqueeze(0), SamplingParams(temperature=1.0), n=6000))
    assert set(sample.tolist()) <= set(range(500)) and len(set(sample.tolist())) > 300
    in_tail = sample >= 64
    assert in_tail.float().mean().item() == pytest.approx(0.6, abs=0.025)
    upper = sample >= 282  # the tail's upper half by id holds 60% of its mass (weights rise linearly)
    assert (upper & in_tail).sum().item() / in_tail.sum().item() == pytest.approx(
        (probs[282:].sum() / probs[64:].sum()).item(), abs=0.03
    )


@pytest.mark.usefixtures("raced_alone_within")
def test_near_equal_tokens_that_trade_places_do_not_trade_draws():
    # llama.cpp's logits move in the last digits with the batch around a row: two tokens of nearly one logit may
    # swap ranks. Each token's draw is its own, not its rank's, so the seeded sequence stays the same.
    torch.manual_seed(2)
    base = (torch.randn(150) * 2).repeat_interleave(2)  # 150 pairs of tied tokens
    jitter = [torch.randn(300) * 1e-5 for _ in range(2)]
    runs = [draws((base + j).unsqueeze(0), SamplingParams(temperature=0.8), n=300, seed=5) for j in jitter]
    assert sum(a == b for a, b in zip(*runs, strict=True)) >= 0.97 * 300


def test_a_vocabulary_of_tokens_each_too_unlikely_to_race_alone_still_wins_its_share():
    # 10 likely tokens and 49,000 just past the line of those racing alone: each weighs e^-13 of the best, together
    # 1.1% of the mass, which the race must give them although it sums their weight only when they could win.
    logits = torch.full((1, 49_010), -13.0)
    logits[0, :10] = 0.0
    share = 49_000 * math.exp(-13.0) / (10 + 49_000 * math.exp(-13.0))
    sample = torch.tensor(draws(logits, SamplingParams(temperature=1.0), n=8000))
    assert (sample >= 10).float().mean().item() == pytest.approx(share, abs=0.005)
