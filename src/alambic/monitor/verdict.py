"""What the monitor says about one account: its risk, why, the campaign it belongs to, and what to do."""

from __future__ import annotations

from dataclasses import dataclass

ACTIONS = ("none", "flag", "throttle", "block")


@dataclass(frozen=True)
class Verdict:
    account: str
    # calibrated on benign traffic: the share of benign accounts scoring at least as high is 1 - risk (over a replay's
    # steps, `risk.RiskOverSteps`: the share reaching it at some step)
    risk: float
    reasons: tuple[str, ...]  # the strongest first, in words
    campaign: str | None  # the id of the linked group it belongs to, None when alone
    action: str  # one of ACTIONS

    def __post_init__(self) -> None:
        if self.action not in ACTIONS:
            raise ValueError(f"action {self.action!r} is not one of {', '.join(ACTIONS)}")
