"""`--act`: the monitor's verdicts become flags and policy changes in the store, with their reasons and the
monitor as the actor; the running gateway applies them on the next request. Nothing is loosened, nothing
written twice, and a dry run writes nothing."""

from sqlalchemy import select

from alambic.monitor.actions import apply_actions, plan_actions
from alambic.monitor.verdict import Verdict
from alambic.store import Policy, create_account, set_policy
from alambic.store.schema import Account, AccountFlag, PolicyChange

VERDICTS = [
    Verdict("mallory", 0.999, ("sent 8% of the prompts that 312 other accounts also sent",), "c1", "block"),
    Verdict("trudy", 0.99, ("covers 41 topic clusters in 2 days",), None, "throttle"),
    Verdict("gina", 0.95, ("generates synthetic data",), None, "flag"),
    Verdict("alice", 0.2, (), None, "none"),
    Verdict("stranger", 0.999, ("not in the store",), None, "block"),
]


def state(store) -> tuple[dict, list, list]:
    with store.session() as session:
        policies = {a.name: (a.policy, a.requests_per_minute) for a in session.scalars(select(Account))}
        changes = [(c.account_id, c.policy, c.actor, c.reason) for c in session.scalars(select(PolicyChange))]
        flags = [
            (f.account_id, f.action, f.actor, f.risk, f.campaign, f.reasons)
            for f in session.scalars(select(AccountFlag))
        ]
    return policies, changes, flags


def test_actions_are_written_with_reasons_and_the_monitor_as_actor(store):
    for name in ("mallory", "trudy", "gina", "alice"):
        create_account(store, name)
    planned = plan_actions(store, VERDICTS, throttle_rpm=6)
    assert [(p.account, p.action, p.policy_before, p.policy_after) for p in planned] == [
        ("mallory", "block", "allow", "block"),
        ("trudy", "throttle", "allow", "throttle"),
        ("gina", "flag", "allow", "allow"),
        ("stranger", "block", None, None),  # shown, not acted on: the store has no such account
    ]
    assert state(store)[1:] == ([], [])  # planning (a dry run) writes nothing
    apply_actions(store, planned)
    policies, changes, flags = state(store)
    assert policies == {
        "mallory": ("block", None),
        "trudy": ("throttle", 6),
        "gina": ("allow", None),
        "alice": ("allow", None),
    }
    assert [(policy, actor) for _, policy, actor, _ in changes] == [("block", "monitor"), ("throttle", "monitor")]
    assert "312 other accounts" in changes[0][3] and "campaign c1" in changes[0][3]
    assert [(action, actor, campaign) for _, action, actor, _, campaign, _ in flags] == [
        ("block", "monitor", "c1"),
        ("throttle", "monitor", None),
        ("flag", "monitor", None),  # the grey zone: flagged for review, its policy untouched
    ]
    assert flags[2][5] == ["generates synthetic data"]


def test_acting_again_adds_nothing_and_never_loosens_a_policy(sqlite_store):
    create_account(sqlite_store, "mallory")
    create_account(sqlite_store, "trudy", policy=Policy.BLOCK)  # a person blocked it already
    apply_actions(sqlite_store, plan_actions(sqlite_store, VERDICTS[:2], throttle_rpm=6))
    before = state(sqlite_store)
    assert before[0]["trudy"] == ("block", None)
    assert plan_actions(sqlite_store, VERDICTS[:2], throttle_rpm=6) == []
    set_policy(sqlite_store, "mallory", Policy.ALLOW, actor="cli", reason="reviewed: a false alarm")
    [again] = plan_actions(sqlite_store, VERDICTS[:1], throttle_rpm=6)  # a person's later decision stands...
    assert (again.account, again.policy_before, again.policy_after) == ("mallory", "allow", "allow")
    # ...the monitor flags it again for review but does not block it over the person's decision
