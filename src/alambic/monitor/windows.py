"""The per-window anchor: a two-sample test of whether a window of traffic's prompts come from benign traffic.

The 2026 MMD window test looks at consecutive windows of queries (1,500 of them) rather than at accounts: the
squared maximum mean discrepancy between a window's prompt embeddings and a benign reference sample, with a
Gaussian kernel whose bandwidth is the median distance of the reference (the usual heuristic), flags a window
when it exceeds the threshold that benign windows pass at the target false-positive rate. It needs no
account ids, so it is the anchor per-account monitoring must beat on windows with an attacker's share mixed in.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics.pairwise import euclidean_distances, rbf_kernel

WINDOW = 1500
REFERENCE = 2000  # reference prompts each window is compared with


def median_bandwidth(sample: np.ndarray) -> float:
    """The median pairwise distance of `sample` (at most 1,000 of its rows)."""
    rows = sample[:1000]
    distances = euclidean_distances(rows)[np.triu_indices(len(rows), 1)]
    return float(np.median(distances)) or 1.0


def rbf_gamma(bandwidth: float) -> float:
    """The RBF kernel's exp(-gamma |x - y|²) for a Gaussian of standard deviation `bandwidth`."""
    return 1.0 / (2.0 * bandwidth * bandwidth)


def within(x: np.ndarray, gamma: float) -> float:
    """The mean kernel value between distinct rows of `x` (n >= 2 rows)."""
    kxx = rbf_kernel(x, gamma=gamma)  # (n, n)
    return float((kxx.sum() - np.trace(kxx)) / (len(x) * (len(x) - 1)))


def mmd2(x: np.ndarray, y: np.ndarray, bandwidth: float, y_within: float | None = None) -> float:
    """The unbiased estimate of MMD² between samples `x` and `y` under a Gaussian kernel (Gretton et al. 2012,
    eq. 3; `y_within`: `y`'s own term, when it is the same reference every time)."""
    g = rbf_gamma(bandwidth)
    y_within = within(y, g) if y_within is None else y_within
    return within(x, g) + y_within - 2.0 * float(rbf_kernel(x, y, gamma=g).mean())


@dataclass(frozen=True)
class WindowTest:
    """MMD² of a window against a benign reference, flagged above the threshold benign windows set."""

    reference: np.ndarray
    bandwidth: float
    threshold: float
    reference_within: float

    @classmethod
    def calibrate(cls, benign: np.ndarray, false_positive_rate: float, window: int = WINDOW, seed: int = 0):
        """Reference and threshold from benign embeddings only: the first `REFERENCE` rows are the reference,
        the rest are cut into windows whose MMD² sets the threshold at `false_positive_rate`."""
        rest = benign[REFERENCE:]
        windows = len(rest) // window
        if windows * false_positive_rate < 1:
            needed = REFERENCE + window * int(np.ceil(1 / false_positive_rate))
            raise ValueError(f"calibrating at FPR {false_positive_rate} needs at least {needed} benign prompts")
        reference = benign[:REFERENCE]
        bandwidth = median_bandwidth(reference)
        reference_within = within(reference, rbf_gamma(bandwidth))
        untested = cls(reference, bandwidth, np.inf, reference_within)
        scores = np.sort([untested.score(rest[i * window : (i + 1) * window]) for i in range(windows)])
        allowed = int(np.floor(false_positive_rate * windows))  # benign windows that may score above it
        return cls(reference, bandwidth, float(scores[windows - 1 - allowed]), reference_within)

    def score(self, window: np.ndarray) -> float:
        return mmd2(window, self.reference, self.bandwidth, self.reference_within)

    def flags(self, window: np.ndarray) -> bool:
        return self.score(window) > self.threshold
