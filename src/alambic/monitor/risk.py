"""Calibrated risk: how rare an account's (or a campaign's) features are among benign accounts of its size.

Each feature gets a benign tail probability p (the share of benign reference accounts at least as extreme,
among the `NEIGHBOURS` closest in size; past the largest benign value, an exponential tail fitted to the top
decile, as in peaks-over-threshold). The evidence is -log10 p, summed over features (Fisher's combination),
and risk is 1 - the share of benign reference accounts with at least that much evidence (the same tail rule,
its ties broken by where the evidence lies between two benign scores, so that risk orders accounts as evidence
does). So risk is calibrated on benign traffic only: a threshold of 0.99 lets about 1% of benign accounts through.
Benign groups of linked accounts (an organisation's keys, a classroom sharing a homework bank), each taken as one
account, are benign traffic too: a reference that holds them compares a campaign with them as well as with single
accounts, on every feature but its members' counts (`MEMBER_COUNTS`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

from alambic.monitor.content import CONTENT_FEATURES
from alambic.monitor.features import FEATURES

# Which tail of each feature is the extraction side; features that say nothing either way are left out.
HIGH = (
    "requests",
    "requests_per_active_day",
    "peak_per_hour",
    "hours_of_day",
    "prompt_diversity",
    "shared_prompt_share",
    "reasoning_cue_share",
    "long_answer_share",
    "logprobs_share",
    "multi_sample_share",
    "answer_prompt_ratio",
    "answer_tokens",  # what a harvest keeps; a long template around each task hides it from the ratio above
    "distinct_addresses",
    "distinct_user_agents",
    "newest_model_share",
    "topic_coverage",  # with an embedding cache (monitor.content)
)
LOW = ("templated_share", "hours_to_newest_model")
# Compared with every benign account; the others only with benign accounts of about the same size.
VOLUME = ("requests", "requests_per_active_day", "peak_per_hour")
# Counts and ratios are compared on a log scale, so that an exponential tail fits them.
LOGGED = (
    "requests",
    "requests_per_active_day",
    "peak_per_hour",
    "answer_prompt_ratio",
    "answer_tokens",
    "distinct_addresses",
    "distinct_user_agents",
    "hours_to_newest_model",
)
# Features that move together count once, as their strongest member with a Bonferroni correction (k p).
FAMILIES = (
    ("requests", "requests_per_active_day", "peak_per_hour"),
    ("distinct_addresses", "distinct_user_agents"),
    ("newest_model_share", "hours_to_newest_model"),
    ("long_answer_share", "answer_prompt_ratio", "answer_tokens"),
    ("logprobs_share", "multi_sample_share"),
    ("prompt_diversity", "templated_share"),
)
# Over a group these count its members, not what it does: each brings its own devices and exits (two benign keys
# have two user agents) and its own volume (a class of thirty pupils, linked to the evaluation harnesses that share
# its homework bank, sends in one hour what a busy integration does). A group is judged without them; its requests
# still pick the benign accounts of its size that it is compared with.
MEMBER_COUNTS = ("requests", "requests_per_active_day", "peak_per_hour", "distinct_addresses", "distinct_user_agents")
_FAMILY_OF = {name: family for family in FAMILIES for name in family}
DESCRIBED = {**FEATURES, **CONTENT_FEATURES}  # what each feature measures, in the reasons
TRUNCATE = 1.0
NEIGHBOURS = 150
MIN_SPREAD = 0.05  # the smallest tail scale (in the feature's units, or log units): a constant benign feature
# One feature past every benign account says at most this much more than "rarer than all n" (-log10 p): the
# extrapolated tail is a model, and one odd feature must not outweigh several.
EXTRAPOLATION_CAP = 1.0
TOP_REASONS = 3
REASON_EVIDENCE = 2.0  # -log10 p: a feature is a reason when at most 1% of benign accounts of its size reach it
# Actions at fixed benign false-positive rates: 1% flagged, 0.1% throttled, 0.01% blocked.
THRESHOLDS = (("block", 0.9999), ("throttle", 0.999), ("flag", 0.99))
GREY_ZONE_REQUESTS = 500  # below this many requests (account or campaign), at most a flag for review
SURPRISE_CAP = 15.0  # -log10(1 - risk) past double precision's resolution of risk near 1


def tail_probability(sample: np.ndarray, x: float, interpolated: bool = False) -> float:
    """P(V >= x) for V drawn like the benign `sample`: smoothed rank below its maximum, exponential beyond.

    `interpolated` breaks the rank's ties for values between the sample's, as the randomised conformal p-value
    does with a uniform draw, here set by where `x` lies: (#{V > x} + 1 - f) / (n + 1), f rising from 0 just
    above the sample value below `x` to 1 at the one above, and 0 at a sample value (1 at or below the least).
    So it falls as `x` grows, into the exponential tail at the maximum; below the step by at most one rank
    between sample values, and at one by the others that tie with it."""
    n = len(sample)
    top = float(sample.max())
    if x <= top:
        if not interpolated:
            return (int(np.count_nonzero(sample >= x)) + 1) / (n + 1)
        below = sample[sample < x]
        if not len(below):
            return 1.0
        above, lower = float(sample[sample >= x].min()), float(below.max())
        position = 0.0 if above == x else (x - lower) / (above - lower)
        return (int(np.count_nonzero(sample > x)) + 1 - position) / (n + 1)
    threshold = float(np.quantile(sample, 0.9))
    excess = sample[sample > threshold] - threshold
    scale = max(float(excess.mean()) if len(excess) else 0.0, MIN_SPREAD)
    return math.exp(-(x - top) / scale) / (n + 1)


@dataclass(frozen=True)
class Evidence:
    """One feature's value and how rare it is among benign accounts of the same size."""

    feature: str
    value: float
    benign: np.ndarray = field(compare=False, repr=False)  # the benign values it was compared with
    probability: float  # benign tail probability

    @property
    def samples(self) -> int:
        return len(self.benign)

    @property
    def benign_median(self) -> float:  # for the reasons in words only: most evidence never needs it
        return float(np.median(self.benign))

    @property
    def strength(self) -> float:
        return min(-math.log10(self.probability), math.log10(self.samples + 1) + EXTRAPOLATION_CAP)


@dataclass(frozen=True)
class Assessment:
    risk: float
    evidence: tuple[Evidence, ...]  # the strongest first

    def reasons(self, references: int, acted: bool, prefix: str = "") -> tuple[str, ...]:
        """The strongest evidence in words, each family once (its strongest member, as `combined` counts it):
        each feature rare on its own (`REASON_EVIDENCE`), or, for an account or campaign `acted` on (by the risk
        that sets its action: a replay's is taken over its steps), each that the risk summed (`TRUNCATE`): several
        moderate ones add up to an action."""
        floor = TRUNCATE if acted else REASON_EVIDENCE
        strongest: dict[tuple[str, ...], Evidence] = {}
        for e in self.evidence:
            if e.strength >= floor:
                strongest.setdefault(_family(e.feature), e)
        return tuple(prefix + _reason(e, references) for e in list(strongest.values())[:TOP_REASONS])


def combined(evidence: list[Evidence]) -> float:
    """Zaykin's truncated product: the sum of -log10 p over features with p <= 10^-TRUNCATE, each family of
    correlated features counted once (the many small benign wobbles do not add up to a signal)."""
    strongest: dict[tuple[str, ...], float] = {}
    for e in evidence:
        family = _family(e.feature)
        strongest[family] = max(strongest.get(family, 0.0), e.strength - math.log10(len(family)))
    return sum(strength for strength in strongest.values() if strength >= TRUNCATE)


def _family(feature: str) -> tuple[str, ...]:
    """The features that move with `feature` (`FAMILIES`), itself among them."""
    return _FAMILY_OF.get(feature, (feature,))


def _transformed(name: str, value: float | None) -> float | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    value = float(value)
    if name in LOGGED:
        value = math.log1p(max(value, 0.0))
    return -value if name in LOW else value


class Reference:
    """Benign accounts' features: what each account or campaign is compared with. Fit it on a benign-only log,
    or on a log that is mostly benign (rank statistics: a few extreme accounts move its tails little). With
    `accounts` (the rows' account ids), an account of the reference is compared with the others only. `groups`
    holds benign groups' features, each group taken as one account (`assess.campaign_features`): benign units
    beside the accounts, but their `MEMBER_COUNTS` are compared with no one's (their requests still give their
    size). `phrasing` is what the benign log's crowds write (`linking.common_phrasing`), which links no accounts."""

    def __init__(
        self,
        rows: list[dict[str, float | None]],
        accounts: list[str] | None = None,
        groups: list[dict[str, float | None]] = (),
        phrasing: np.ndarray | None = None,
    ) -> None:
        if len(rows) < 20:
            raise ValueError(f"a reference needs at least 20 benign accounts, got {len(rows)}")
        units = [*rows, *groups]
        self.features = [f for f in (*HIGH, *LOW) if f in rows[0]]
        self.raw = {f: np.array([np.nan if r[f] is None else float(r[f]) for r in units]) for f in self.features}
        self.values = {
            f: np.array([np.nan if (v := _transformed(f, r[f])) is None else v for r in units]) for f in self.features
        }
        self.index = {account: i for i, account in enumerate(accounts or ())}
        self.sizes = np.log1p(np.array([float(r["requests"]) for r in units]))
        self.accounts = len(rows)  # the units before this index are accounts, the rest groups
        self.phrasing = phrasing
        self.scores = np.array(
            [
                combined(self.evidence(r, exclude=i, leave_out=MEMBER_COUNTS if i >= self.accounts else ()))
                for i, r in enumerate(units)
            ]
        )

    def __len__(self) -> int:
        return len(self.sizes)

    def excluding_own(self, accounts: Sequence[str], first: int = 0) -> Reference:
        """This reference with each of `accounts` (the ids of its units `first`, `first` + 1, ...) compared with
        the others only: to score the benign log it was fitted on as if it were new traffic."""
        found = copy.copy(self)
        found.index = {account: first + i for i, account in enumerate(accounts)}
        return found

    def _pool(self, requests: float, exclude: int | None, among: int, nearest: bool) -> np.ndarray:
        """The benign units compared with: of the first `among` (accounts come first) but `exclude`, all, or the
        `NEIGHBOURS` closest in size to `requests`."""
        excluded = exclude is not None and exclude < among
        if not nearest:
            return np.delete(np.arange(among), exclude) if excluded else np.arange(among)
        distance = np.abs(self.sizes[:among] - math.log1p(requests))
        if excluded:
            distance[exclude] = np.inf
        k = min(NEIGHBOURS, among - excluded)
        return np.argpartition(distance, k - 1)[:k]

    def evidence(
        self, row: dict[str, float | None], exclude: int | None = None, leave_out: Collection[str] = ()
    ) -> list[Evidence]:
        """Each feature's benign tail probability, strongest evidence first; features in `leave_out` are no evidence
        (the size that picks the benign accounts compared with is still `requests`). Members' counts are compared
        with accounts only."""
        size = float(row["requests"])
        near = self._pool(size, exclude, len(self.sizes), nearest=True)
        near_accounts = (
            self._pool(size, exclude, self.accounts, nearest=True) if self.accounts < len(self.sizes) else near
        )
        every_account = self._pool(size, exclude, self.accounts, nearest=False)
        found = []
        for name in self.features:
            value = _transformed(name, row.get(name))
            if value is None or name in leave_out:
                continue
            pool = every_account if name in VOLUME else near_accounts if name in MEMBER_COUNTS else near
            sample = self.values[name][pool]
            known = ~np.isnan(sample)
            sample = sample[known]
            if len(sample) < 10:
                continue
            benign = self.raw[name][pool][known]
            found.append(Evidence(name, float(row[name]), benign, tail_probability(sample, value)))
        return sorted(found, key=lambda e: -e.strength)

    def assess(
        self, row: dict[str, float | None], account: str | None = None, leave_out: Collection[str] = ()
    ) -> Assessment:
        """Risk in [0, 1]: 1 - the benign share with at least this account's evidence (interpolated between the
        benign scores it lies between, so that risk orders accounts as their evidence does), and that evidence."""
        evidence = self.evidence(row, exclude=self.index.get(account), leave_out=leave_out)
        return Assessment(1.0 - tail_probability(self.scores, combined(evidence), interpolated=True), tuple(evidence))


def surprise(risk: float) -> float:
    """-log10(1 - risk): the scale on which the benign tail of risk is fitted."""
    return -math.log10(max(1.0 - risk, 10.0**-SURPRISE_CAP))


class RiskOverSteps:
    """Risk for a monitor that judges each account at every step and keeps a flag once raised: the share of benign
    accounts whose highest risk over a replay of benign traffic (the same step and window) stays below it. Each
    step's risk lets 1% of benign accounts past 0.99 anew, and over a week of steps more are past it at some step;
    this risk lets 1% past 0.99 over the whole replay, so the actions keep their benign rates (`THRESHOLDS`)."""

    def __init__(self, highest: Iterable[float]) -> None:
        self.highest = np.array([surprise(risk) for risk in highest])
        if len(self.highest) < 20:
            raise ValueError(f"calibrating over steps needs at least 20 benign accounts, got {len(self.highest)}")

    def __call__(self, risk: float) -> float:
        return 1.0 - tail_probability(self.highest, surprise(risk), interpolated=True)


def action_for(risk: float, requests: int) -> str:
    """The action at fixed benign false-positive rates; small senders (the grey zone: a user making synthetic
    data for their own small model) are at most flagged for review."""
    for action, threshold in THRESHOLDS:
        if risk >= threshold:
            return action if requests >= GREY_ZONE_REQUESTS else "flag"
    return "none"


def _reason(e: Evidence, references: int) -> str:
    rarity = (
        f"fewer than 1 in {references} benign accounts"
        if e.probability * (references + 1) < 1
        else f"{e.probability:.1%} of benign accounts"
    )
    side = "as low" if e.feature in LOW else "as high"
    peers = "benign median" if e.feature in VOLUME else "benign accounts of its size"
    return (
        f"{DESCRIBED.get(e.feature, e.feature)}: {_shown(e.feature, e.value)} "
        f"({peers}: {_shown(e.feature, e.benign_median)}; {rarity} {side})"
    )


def _shown(feature: str, value: float) -> str:
    if feature.endswith("_share") or feature == "prompt_diversity":
        return f"{value:.0%}"
    if float(value).is_integer():
        return f"{int(value):,}"
    return f"{value:,.1f}"
