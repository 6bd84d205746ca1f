"""The empirical null's summary: KGW's discrete p-values randomised in their atom are uniform where the
reported ones fail a KS test; the false-positive rate is shown only at levels the trials can show."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import stats

from alambic.prove.null import Trial, summarise
from alambic.watermark import AaronsonScheme, KirchenbauerScheme


def test_kgw_p_values_randomised_in_their_atom_are_uniform_where_the_reported_ones_are_not():
    scheme, rng = KirchenbauerScheme("key", gamma=0.25), np.random.default_rng(0)
    counts = rng.binomial(60, 0.25, 3000)  # green tokens among 60 scored, under the null
    reported = [scheme.pvalue(float(green), 60) for green in counts]
    randomised = [scheme.randomized_pvalue(float(green), 60, rng.random()) for green in counts]
    assert stats.kstest(reported, "uniform").pvalue < 1e-6  # a binomial tail is conservative, not uniform
    assert stats.kstest(randomised, "uniform").pvalue > 0.01
    assert all(r <= p + 1e-12 for r, p in zip(randomised, reported, strict=True))  # never above the reported


def test_gumbel_p_values_are_continuous_already():
    scheme = AaronsonScheme("key")
    assert scheme.randomized_pvalue(50.0, 40, 0.3) == scheme.pvalue(50.0, 40)


def test_the_summary_shows_each_level_the_trials_can_show_and_the_smallest_p_value():
    pvalues = (np.arange(1500) + 2) / 1502  # evenly spread, all above 1e-3
    pvalues[:3] = [5e-4, 2e-3, 1e-7]
    summary = summarise([Trial(float(p), float(p), 100) for p in pvalues])
    assert summary["trials"] == 1500 and summary["smallest_pvalue"] == 1e-7
    assert list(summary["false_positive_rate"]) == ["0.01", "0.001"]  # 1e-4 would expect 0.15 false positives
    at_1e3 = summary["false_positive_rate"]["0.001"]
    assert at_1e3["false_positives"] == 2 and at_1e3["rate"] == 2 / 1500
    assert at_1e3["binomial_pvalue"] == stats.binom.sf(1, 1500, 1e-3)
    assert summary["ks_pvalue"] > 0.01
    assert summary["smallest_pvalue_chance"] == pytest.approx(1500e-7, rel=1e-3)  # 1 - (1 - 1e-7)^1500


def test_the_chance_of_the_smallest_p_value_is_itself_uniform_over_honest_runs():
    rng = np.random.default_rng(1)
    chances = [summarise([Trial(p, p, 50) for p in rng.random(1000)])["smallest_pvalue_chance"] for _ in range(400)]
    assert stats.kstest(chances, "uniform").pvalue > 0.01
