"""The 2026 MMD window test turned on accounts, a baseline: each account's consecutive windows of requests tested
against a benign reference sample of prompts, with p-values from benign accounts' windows only.

A window is `window` consecutive requests of one account (an account that sent fewer: one window of what it
sent). Up to `sample` of its distinct prompts (last user turn) are embedded, without the template they share,
picked as the content signals pick theirs (`monitor.content`): a one-window account's embeddings are theirs, from
the same cache, so the encoder's work grows only with large accounts' further windows. The
window's statistic is the unbiased MMD² (`monitor.windows.mmd2`, Gaussian kernel, bandwidth the median distance of
the reference) between them and the reference. Its p-value is its rank among benign calibration windows with as
many embedded rows (the statistic's spread shrinks as they grow), with an exponential tail past the largest
(`risk.tail_probability`). An account's p-value is its smallest window's times its windows tested (Bonferroni),
and its score -log10 of that. A window of fewer than `min_requests` requests is not tested: an account with no
tested window scores 0 (p = 1), as it would under a threshold at any false-positive rate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import duckdb
import numpy as np

from alambic.monitor.content import SAMPLE, task_texts, text_key
from alambic.monitor.embeddings import EmbeddingCache
from alambic.monitor.risk import tail_probability
from alambic.monitor.tables import LAST_USER_TURN
from alambic.monitor.windows import median_bandwidth, mmd2, rbf_gamma, within

WINDOW = 1500  # requests, as in the reference figure (0.3% benign FPR, 90.5% TPR at 5-50% attacker mix)
MIN_REQUESTS = 20  # a window below this is not tested
REFERENCE = 1000  # reference prompts every window is compared with
NEIGHBOURS = 200  # benign windows, of the nearest sizes, a window's statistic is ranked among

# Per account, its requests in time order cut into windows of $window; in each, up to $sample of its distinct
# prompts, picked by the hash that picks the content signals' sample (`content.SAMPLED`), in time order.
WINDOW_PROMPTS = f"""
WITH numbered AS (
    SELECT account, prompt, hash(md5_number(prompt)) AS prompt_hash,
           row_number() OVER (PARTITION BY account ORDER BY t, id) - 1 AS position
    FROM (SELECT account, t, id, {LAST_USER_TURN} AS prompt FROM requests WHERE account IS NOT NULL)
), windowed AS (
    SELECT account, position // $window AS window_index, position, prompt, prompt_hash,
           count(*) OVER (PARTITION BY account, position // $window) AS requests
    FROM numbered
), distinct_prompts AS (
    SELECT account, window_index, any_value(requests) AS requests, prompt_hash, any_value(prompt) AS prompt,
           min(position) AS first_position
    FROM windowed GROUP BY account, window_index, prompt_hash
)
SELECT account, window_index, requests, prompt FROM (
    SELECT *, row_number() OVER (PARTITION BY account, window_index ORDER BY hash(prompt_hash, account)) AS pick
    FROM distinct_prompts)
WHERE pick <= $sample
ORDER BY account, window_index, first_position, prompt_hash
"""


@dataclass(frozen=True)
class Window:
    account: str
    index: int  # the account's windows in time order, from 0
    requests: int
    embeddings: np.ndarray  # (rows, dim): the sampled distinct prompts' tasks

    def tested(self, min_requests: int) -> bool:
        """Whether the window is large enough to test (and has two distinct prompts to estimate MMD² from)."""
        return self.requests >= min_requests and len(self.embeddings) >= 2


def account_windows(
    connection: duckdb.DuckDBPyConnection, cache: EmbeddingCache, window: int = WINDOW, sample: int = SAMPLE
) -> dict[str, list[Window]]:
    """Every account's windows over the `requests` relation (`monitor.source`): each window's sampled prompts
    without the template they share (`content.task_texts`), embedded through `cache`."""
    if window < 1 or sample < 2:
        raise ValueError(f"a window needs at least 1 request and a sample of at least 2, got {window} and {sample}")
    prompts: dict[tuple[str, int], list[str]] = {}
    requests: dict[tuple[str, int], int] = {}
    for account, index, count, prompt in connection.execute(
        WINDOW_PROMPTS, {"window": window, "sample": sample}
    ).fetchall():
        prompts.setdefault((account, index), []).append(prompt)
        requests[account, index] = int(count)
    tasks = {key: task_texts(asked) for key, asked in prompts.items()}
    vectors = cache.embed({text_key(task): task for asked in tasks.values() for task in asked})
    found: dict[str, list[Window]] = {}
    for (account, index), asked in tasks.items():
        embedded = np.stack([vectors[text_key(task)] for task in asked])
        found.setdefault(account, []).append(Window(account, index, requests[account, index], embedded))
    return found


@dataclass(frozen=True)
class MmdBaseline:
    """The reference sample, its kernel, and the statistics of the benign windows that calibrate p-values."""

    reference: np.ndarray  # (REFERENCE, dim)
    bandwidth: float
    reference_within: float  # the reference's own kernel term, the same for every window
    benign_rows: np.ndarray  # (calibration windows,): embedded rows of each
    benign_statistics: np.ndarray  # (calibration windows,)
    min_requests: int = MIN_REQUESTS

    @classmethod
    def calibrate(
        cls,
        benign: Mapping[str, list[Window]],
        reference_size: int = REFERENCE,
        min_requests: int = MIN_REQUESTS,
        seed: int = 0,
    ) -> MmdBaseline:
        """From benign accounts' windows only (a benign-only week): every other account (in sorted order) gives the
        reference sample, drawn as traffic is (a row weighted by its window's requests per embedded row); the
        others' tested windows calibrate, so that no window is compared with a reference it is part of."""
        accounts = sorted(benign)
        pool = [w for a in accounts[::2] for w in benign[a]]
        calibration = [w for a in accounts[1::2] for w in benign[a] if w.tested(min_requests)]
        if len(calibration) < 20 or not pool:
            raise ValueError(f"calibrating needs 20 tested benign windows off the reference, got {len(calibration)}")
        rows = np.vstack([w.embeddings for w in pool])
        weights = np.concatenate([np.full(len(w.embeddings), w.requests / len(w.embeddings)) for w in pool])
        rng = np.random.default_rng(seed)
        picked = rng.choice(len(rows), size=min(reference_size, len(rows)), replace=False, p=weights / weights.sum())
        reference = rows[picked].astype(np.float64)  # the kernel's dtype: scikit-learn then copies only windows
        bandwidth = median_bandwidth(reference)
        untested = cls(reference, bandwidth, within(reference, rbf_gamma(bandwidth)), np.empty(0), np.empty(0))
        statistics = np.array([untested.statistic(w.embeddings) for w in calibration])
        sizes = np.array([len(w.embeddings) for w in calibration], dtype=float)
        return cls(reference, bandwidth, untested.reference_within, sizes, statistics, min_requests)

    def statistic(self, embeddings: np.ndarray) -> float:
        """MMD² between a window's embedded rows (at least 2) and the reference."""
        return mmd2(embeddings, self.reference, self.bandwidth, self.reference_within)

    def p_value(self, window: Window) -> float:
        """The benign tail probability of the window's statistic among calibration windows of the nearest sizes."""
        distance = np.abs(np.log(self.benign_rows) - math.log(len(window.embeddings)))
        k = min(NEIGHBOURS, len(distance))
        near = distance <= np.partition(distance, k - 1)[k - 1]  # ties at the k-th size all count
        return tail_probability(self.benign_statistics[near], self.statistic(window.embeddings))

    def account_p_value(self, windows: list[Window]) -> float:
        """The smallest p-value of the account's tested windows, times their number (1: none tested)."""
        tested = [self.p_value(w) for w in windows if w.tested(self.min_requests)]
        return min(1.0, len(tested) * min(tested)) if tested else 1.0

    def scores(self, accounts: Mapping[str, list[Window]]) -> dict[str, float]:
        """-log10 of each account's p-value: 0 for an account with no window tested."""
        return {account: -math.log10(self.account_p_value(windows)) for account, windows in sorted(accounts.items())}
