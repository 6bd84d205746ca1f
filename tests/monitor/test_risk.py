"""Risk calibrated on benign accounts only: tail probabilities, the share of benign accounts flagged, actions."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from alambic.monitor.features import account_features
from alambic.monitor.risk import (
    DESCRIBED,
    GREY_ZONE_REQUESTS,
    MEMBER_COUNTS,
    REASON_EVIDENCE,
    Assessment,
    Evidence,
    Reference,
    RiskOverSteps,
    action_for,
    combined,
    surprise,
    tail_probability,
)
from alambic.monitor.source import open_log
from alambic.simulate import Simulation, SimulationSettings, write_jsonl


def benign_features(directory, seed: int) -> list[dict]:
    out = directory / f"benign-{seed}.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=seed, days=3, scale=0.3, campaigns=())), out)
    return [f.values for f in account_features(open_log([out]))]


@pytest.fixture(scope="module")
def two_benign_weeks(tmp_path_factory):
    directory = tmp_path_factory.mktemp("benign")
    return benign_features(directory, 21), benign_features(directory, 22)


def test_tail_probability_is_the_smoothed_benign_share_then_falls_past_the_largest_value():
    sample = np.arange(100.0)  # 0 .. 99
    assert tail_probability(sample, 50) == pytest.approx(51 / 101)  # 50 .. 99, plus one
    assert tail_probability(sample, -1) == 1.0
    assert tail_probability(sample, 99) == pytest.approx(2 / 101)
    beyond = [tail_probability(sample, x) for x in (99.5, 120, 200)]
    assert beyond[0] < 1 / 101 and beyond[0] > beyond[1] > beyond[2] > 0


def test_interpolated_the_tail_probability_falls_between_sample_values_as_a_conformal_p_value_with_ties_broken():
    sample = np.array([0.0, 0.0, 1.0, 2.0, 3.0, 3.0, 4.0])
    steps = [tail_probability(sample, x) for x in (3.25, 3.5, 3.75)]
    assert steps == [pytest.approx(2 / 8)] * 3  # one rank for everything in (3, 4]: accounts there tie
    between = [tail_probability(sample, x, interpolated=True) for x in (3.0, 3.25, 3.5, 3.75, 4.0)]
    assert between == pytest.approx([2 / 8, 1.75 / 8, 1.5 / 8, 1.25 / 8, 1 / 8])  # #{V > x} + 1 - f, over n + 1
    assert all(a > b for a, b in itertools.pairwise(between))
    assert tail_probability(sample, 4.0 + 1e-9, interpolated=True) == pytest.approx(1 / 8)  # into the fitted tail
    assert tail_probability(sample, 2.5, interpolated=True) == pytest.approx(3.5 / 8)
    assert tail_probability(sample, 0.0, interpolated=True) == 1.0  # no evidence: no benign account has less


def test_risk_on_unseen_benign_accounts_flags_about_the_target_share(two_benign_weeks):
    fitted, unseen = two_benign_weeks
    reference = Reference(fitted)
    risks = np.array([reference.assess(values).risk for values in unseen])
    assert ((risks >= 0) & (risks <= 1)).all()
    assert np.mean(risks >= 0.9) < 0.2  # calibrated: about 10% of benign accounts at 0.9, not all of them
    assert np.mean(risks >= 0.99) <= 0.04
    assert np.mean(risks >= 0.5) <= 0.6  # at most about 1 - threshold (ties at no evidence fall below)


def test_an_account_far_past_every_benign_one_gets_a_high_risk_and_reasons_with_its_numbers(two_benign_weeks):
    fitted, _ = two_benign_weeks
    reference = Reference(fitted)
    loud = dict(max(fitted, key=lambda v: v["requests"]))
    loud |= {"requests": loud["requests"] * 50, "reasoning_cue_share": 1.0, "answer_prompt_ratio": 40.0}
    assessment = reference.assess(loud)
    assert assessment.risk > 0.999
    reasons = assessment.reasons(len(reference), acted=True)
    assert 1 <= len(reasons) <= 3
    assert any("step-by-step reasoning: 100%" in reason for reason in reasons)
    assert all("benign" in reason for reason in reasons)


def test_a_reference_that_holds_benign_groups_compares_a_group_with_them_not_only_with_single_accounts(
    two_benign_weeks,
):
    # Evaluation harnesses linked by the benchmark they share: as one account, a volume no single account has,
    # long answers, several samples a prompt, logprobs, the newest model. Rare among single accounts, not among
    # benign groups.
    fitted, _ = two_benign_weeks
    biggest = max(fitted, key=lambda v: v["requests"])

    def harnesses(n: int) -> dict:
        return biggest | {
            "requests": 9000 + 500 * n,
            "long_answer_share": 0.95,
            "answer_prompt_ratio": 8.0 + n / 10,
            "multi_sample_share": 0.3 + n / 20,
            "logprobs_share": 0.6,
            "newest_model_share": 0.4 + n / 50,
            "distinct_addresses": 40,
            "distinct_user_agents": 20,
        }

    benign_groups = [harnesses(n) for n in range(5)]
    singles, with_groups = Reference(fitted), Reference(fitted, groups=benign_groups)
    assert len(with_groups) == len(fitted) + 5
    suspect = harnesses(2) | {"requests": 9700}
    assert singles.assess(suspect, leave_out=MEMBER_COUNTS).risk >= 0.99
    assert with_groups.assess(suspect, leave_out=MEMBER_COUNTS).risk < 0.99
    campaign = suspect | {"reasoning_cue_share": 1.0, "answer_prompt_ratio": 40.0}
    assert with_groups.assess(campaign, leave_out=MEMBER_COUNTS).risk > 0.999
    # A group's counts are its members': they are no benign sample for a single account's volume or addresses.
    loud = biggest | {"requests": biggest["requests"] * 50, "distinct_addresses": 30, "distinct_user_agents": 15}
    probabilities = [
        {e.feature: e.probability for e in reference.assess(loud).evidence} for reference in (singles, with_groups)
    ]
    assert probabilities[0]["requests"] == probabilities[1]["requests"]
    assert probabilities[0]["distinct_addresses"] == probabilities[1]["distinct_addresses"]


def test_a_reference_needs_enough_benign_accounts(two_benign_weeks):
    with pytest.raises(ValueError, match="at least 20"):
        Reference(two_benign_weeks[0][:5])


def test_risk_over_steps_lets_the_target_share_of_benign_replays_past_each_threshold():
    # Benign accounts' highest risk over a replay: past 0.99 at some step far more often than 1% (3.2% here).
    rng = np.random.default_rng(0)

    def highest(n: int) -> np.ndarray:
        return 1.0 - 10.0 ** -rng.exponential(0.67, n)

    replayed = highest(3000)
    assert np.mean(replayed >= 0.99) > 0.025
    over = RiskOverSteps(replayed)
    fresh = highest(30000)  # other benign replays of the same kind
    for threshold in (0.99, 0.999):  # about the target rate, and not above it past sampling noise
        assert 0.5 <= np.mean([over(r) >= threshold for r in fresh]) / (1 - threshold) <= 1.25
    assert over(0.5) < over(0.9) < over(0.99) < over(0.999) < 0.99  # the order of risk kept, each lower
    assert over(max(replayed)) < over(1 - 1e-9) < 1.0  # past every benign replay: the exponential tail, to the cap
    assert over(1.0) == over(1 - 1e-16) and surprise(1.0) == 15.0
    with pytest.raises(ValueError, match="at least 20"):
        RiskOverSteps(replayed[:19])


def test_a_reference_scores_its_own_accounts_against_the_others_only(two_benign_weeks):
    rows = two_benign_weeks[0]
    ids = [f"a{n}" for n in range(len(rows))]
    reference = Reference(rows)
    own_excluded = reference.excluding_own(ids)
    loudest = max(range(len(rows)), key=lambda n: rows[n]["requests"])
    # in a pool that holds its own row the loudest account ties with it; left out, it is past every other
    assert reference.assess(rows[loudest]).risk < own_excluded.assess(rows[loudest], ids[loudest]).risk
    assert own_excluded.assess(rows[loudest]).risk == reference.assess(rows[loudest]).risk  # no id: all of them
    assert reference.excluding_own(ids[1:], first=1).assess(rows[0], ids[0]).risk == reference.assess(rows[0]).risk
    assert reference.index == {}  # the copy's index is its own


def test_actions_follow_fixed_benign_rates_and_the_grey_zone_is_only_flagged():
    big = GREY_ZONE_REQUESTS * 10
    assert [action_for(r, big) for r in (0.5, 0.995, 0.9995, 0.99999)] == ["none", "flag", "throttle", "block"]
    assert action_for(0.99999, GREY_ZONE_REQUESTS - 1) == "flag"


def test_correlated_features_count_once_and_small_wobbles_not_at_all():
    def evidence(feature: str, probability: float) -> Evidence:
        return Evidence(feature, 1.0, np.zeros(1000), probability)

    volume = [evidence(name, 1e-3) for name in ("requests", "requests_per_active_day", "peak_per_hour")]
    assert combined(volume) == pytest.approx(3 - math.log10(3))  # one family: its strongest, Bonferroni-corrected
    wobbles = [evidence(name, 0.3) for name in ("hours_of_day", "shared_prompt_share", "reasoning_cue_share")]
    assert combined(wobbles) == 0
    assert combined([*volume, evidence("reasoning_cue_share", 1e-2)]) == pytest.approx(5 - math.log10(3))


def test_an_account_acted_on_for_several_moderate_features_is_told_which_they_are():
    # No feature alone reaches REASON_EVIDENCE, together they pass the flag: the reasons are what the risk summed.
    moderate = tuple(
        Evidence(name, 0.9, np.zeros(150), 0.03)
        for name in ("multi_sample_share", "newest_model_share", "long_answer_share", "hours_of_day")
    )
    assert all(e.strength < REASON_EVIDENCE for e in moderate)
    flagged = Assessment(0.995, moderate).reasons(1000, acted=True)
    assert len(flagged) == 3 and "requests asking for n > 1: 90%" in flagged[0]
    assert Assessment(0.995, moderate).reasons(1000, acted=False) == ()  # not acted on: only strong evidence
    weak = (*moderate, Evidence("requests", 5.0, np.zeros(150), 0.5))
    assert not any("requests sent" in reason for reason in Assessment(0.999, weak).reasons(1000, acted=True))


def test_the_reasons_name_each_family_of_features_that_move_together_once_as_the_risk_counts_them():
    # Long answers, a high answer/prompt ratio and many answer tokens are one fact (the family counted once in
    # `combined`): the reasons give its strongest member, then the next family's.
    answers = tuple(
        Evidence(name, 0.9, np.zeros(150), p)
        for name, p in (("answer_tokens", 1e-4), ("answer_prompt_ratio", 2e-4), ("long_answer_share", 3e-4))
    )
    logprobs = Evidence("logprobs_share", 1.0, np.zeros(150), 1e-3)
    reasons = Assessment(0.9999, (*answers, logprobs)).reasons(1000, acted=True)
    assert len(reasons) == 2
    assert reasons[0].startswith(DESCRIBED["answer_tokens"]) and reasons[1].startswith(DESCRIBED["logprobs_share"])
