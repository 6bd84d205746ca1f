"""The MMD window test: calibrated on benign windows alone, it passes benign windows and flags shifted ones."""

from __future__ import annotations

import numpy as np
import pytest

from alambic.monitor.windows import WindowTest, mmd2


def _topics(rng: np.random.Generator, centres: np.ndarray, n: int) -> np.ndarray:
    rows = centres[rng.integers(len(centres), size=n)] + 0.3 * rng.standard_normal((n, centres.shape[1]))
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def test_mmd_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(0)
    centres = rng.standard_normal((20, 16))
    same = mmd2(_topics(rng, centres, 300), _topics(rng, centres, 300), 1.0)
    shifted = mmd2(_topics(rng, centres[:3], 300), _topics(rng, centres, 300), 1.0)
    assert abs(same) < 0.01 < shifted


def test_benign_windows_pass_at_the_calibrated_rate_and_a_mixed_in_sweep_is_flagged():
    rng = np.random.default_rng(1)
    benign_topics, sweep_topics = rng.standard_normal((30, 16)), rng.standard_normal((30, 16))
    test = WindowTest.calibrate(_topics(rng, benign_topics, 2000 + 100 * 200), 0.05, window=200)
    fresh_benign = [test.flags(_topics(rng, benign_topics, 200)) for _ in range(60)]
    assert sum(fresh_benign) <= 9  # 5% of 60 is 3; a few more by chance
    # a 30% attacker mix, its prompts on 5 topics benign traffic does not ask about
    mixed = np.vstack([_topics(rng, benign_topics, 140), _topics(rng, sweep_topics[:5], 60)])
    assert test.flags(mixed)


def test_too_few_benign_windows_for_the_rate_is_an_error():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match="needs at least"):
        WindowTest.calibrate(_topics(rng, rng.standard_normal((5, 8)), 2500), 0.001, window=100)
