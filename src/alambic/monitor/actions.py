"""Acting on verdicts: flags and policy changes in the store, which the running gateway applies on the next
request (it reads the account's policy at every admission).

The monitor only tightens: a verdict never loosens a policy, and once someone else has changed an account's
policy after the monitor acted on it, their decision stands (the monitor flags it again for review, no more).
An action already taken is not written again. Grey-zone accounts come with `flag` and are left their policy.
"""

from __future__ import annotations

from dataclasses import dataclass

from alambic.monitor.verdict import Verdict
from alambic.store import Policy, Store, flag_account, standings

ACTOR = "monitor"
STRICTNESS = {Policy.ALLOW: 0, Policy.THROTTLE: 1, Policy.BLOCK: 2}
TARGET = {"flag": None, "throttle": Policy.THROTTLE, "block": Policy.BLOCK}


@dataclass(frozen=True)
class PlannedAction:
    account: str
    action: str  # flag | throttle | block, as the verdict says
    policy_before: str | None  # None: the account is not in the store, and nothing is done
    policy_after: str | None
    requests_per_minute: int | None
    verdict: Verdict

    @property
    def reason(self) -> str:
        campaign = f" (campaign {self.verdict.campaign})" if self.verdict.campaign else ""
        return f"risk {self.verdict.risk:.3f}{campaign}: " + "; ".join(self.verdict.reasons)

    def describe(self) -> str:
        if self.policy_before is None:
            return f"{self.account}: {self.action}, but the store has no such account"
        change = (
            f"policy {self.policy_before} -> {self.policy_after}"
            if self.policy_after != self.policy_before
            else f"policy stays {self.policy_before}"
        )
        return f"{self.account}: {self.action}, {change}; {self.reason}"


def plan_actions(store: Store, verdicts: list[Verdict], *, throttle_rpm: int) -> list[PlannedAction]:
    """What acting on `verdicts` would change, in their order; nothing for `none` or an action already taken."""
    acting = [v for v in verdicts if v.action != "none"]
    standing = standings(store, [v.account for v in acting], ACTOR)
    planned = []
    for verdict in acting:
        now = standing.get(verdict.account)
        if now is None:
            planned.append(PlannedAction(verdict.account, verdict.action, None, None, None, verdict))
            continue
        action = "flag" if now.overruled else verdict.action
        target = TARGET[action]
        tighter = target is not None and STRICTNESS[target] > STRICTNESS[now.policy]
        if now.last_flag == action and not tighter:
            continue
        after = target if tighter else now.policy
        rpm = throttle_rpm if after is Policy.THROTTLE and tighter else None
        planned.append(PlannedAction(verdict.account, action, now.policy.value, after.value, rpm, verdict))
    return planned


def apply_actions(store: Store, planned: list[PlannedAction]) -> None:
    """Write each planned action (a flag, and the policy change where there is one), the monitor as actor."""
    for action in planned:
        if action.policy_before is None:
            continue
        changed = action.policy_after != action.policy_before
        flag_account(
            store,
            action.account,
            action.action,
            actor=ACTOR,
            risk=action.verdict.risk,
            campaign=action.verdict.campaign,
            reasons=list(action.verdict.reasons),
            policy=Policy(action.policy_after) if changed else None,
            requests_per_minute=action.requests_per_minute,
            reason=action.reason,
        )
