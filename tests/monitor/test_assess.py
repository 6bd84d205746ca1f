"""The scoring pipeline end to end: a verdict per account, campaigns scored as one account, no benign blocked."""

from __future__ import annotations

import json

import pytest

from alambic.monitor.assess import assess, campaign_features, verdicts
from alambic.monitor.features import account_features
from alambic.monitor.linking import Linking
from alambic.monitor.risk import Reference
from alambic.monitor.source import open_log
from alambic.monitor.verdict import ACTIONS
from alambic.simulate import Simulation, SimulationSettings, write_jsonl


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    out = tmp_path_factory.mktemp("week") / "log.jsonl"
    settings = SimulationSettings(seed=13, days=3, scale=0.3, campaigns=("bulk", "chain-of-thought", "hydra"))
    write_jsonl(Simulation(settings), out)
    return out, json.loads((out.parent / "labels.json").read_text())


@pytest.fixture(scope="module")
def benign_reference(tmp_path_factory):
    out = tmp_path_factory.mktemp("benign") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=14, days=3, scale=0.3, campaigns=())), out)
    return Reference([f.values for f in account_features(open_log([out]))])


def test_without_a_reference_every_account_gets_a_verdict_calibrated_on_the_log_itself(simulated):
    log, labels = simulated
    found = assess(open_log([log]))
    assert [v.account for v in found] == sorted(labels)
    assert all(0 <= v.risk <= 1 and v.action in ACTIONS for v in found)
    alone = [v.risk for v in found if labels[v.account]["kind"] == "benign" and v.campaign is None]
    assert sum(risk >= 0.99 for risk in alone) <= 0.03 * len(alone)  # linked groups are scored as one: below


def test_against_a_benign_reference_the_loud_campaigns_are_flagged_with_reasons_and_no_benign_blocked(
    simulated, benign_reference
):
    log, labels = simulated
    by_account = {v.account: v for v in assess(open_log([log]), benign_reference)}
    for account, label in labels.items():
        if label["style"] in ("bulk", "chain-of-thought"):
            assert by_account[account].action != "none" and by_account[account].reasons
        if label["kind"] == "benign":
            assert by_account[account].action != "block"


def test_a_hydra_s_accounts_take_the_risk_of_their_campaign_scored_as_one(simulated):
    # As one account this short, small hydra is rare in its answers per prompt alone (one feature: about the 1%
    # benign tail); counted as one account, its 90 accounts' addresses and agents would make any group rarer.
    log, labels = simulated
    connection = open_log([log])
    rows = {f.account: f.values for f in account_features(connection)}
    reference = Reference([v for a, v in rows.items() if labels[a]["kind"] == "benign"])
    hydra = {a: "hydra" for a, label in labels.items() if label["style"] == "hydra"}
    (group,) = campaign_features(connection, hydra).values()
    campaign = reference.assess(group)
    assert campaign.evidence[0].feature == "answer_prompt_ratio" and campaign.risk >= 0.98
    alone = {v.account: v for v in verdicts(connection, rows, reference, Linking({}, {}))}
    linked = {v.account: v for v in verdicts(connection, rows, reference, Linking({}, hydra))}
    assert sum(alone[a].risk < campaign.risk for a in hydra) > 0.5 * len(hydra)
    assert all(linked[a].risk == max(alone[a].risk, campaign.risk) and linked[a].campaign == "hydra" for a in hydra)
    assert all(ACTIONS.index(linked[a].action) >= ACTIONS.index(alone[a].action) for a in hydra)
    lifted = [a for a in hydra if alone[a].risk < campaign.risk]
    assert all(linked[a].reasons[0].startswith(f"its campaign of {len(hydra)} linked accounts") for a in lifted)
    benign = [a for a, label in labels.items() if label["kind"] == "benign"]
    assert [linked[a].risk for a in benign] == [alone[a].risk for a in benign]


def test_benign_accounts_linked_in_pairs_are_not_flagged_for_having_two_accounts_devices(simulated, benign_reference):
    # An organisation's two keys, or two users who happened to link early in a replay: as one account they have
    # two accounts' addresses and user agents, which says how many accounts the group has, not what it does.
    log, labels = simulated
    connection = open_log([log])
    rows = {f.account: f.values for f in account_features(connection)}
    benign = sorted((a for a, label in labels.items() if label["kind"] == "benign"), key=lambda a: rows[a]["requests"])
    pairs = {a: f"pair-{n // 2}" for n, a in enumerate(benign[: len(benign) // 2 * 2])}
    alone = {v.account: v for v in verdicts(connection, rows, benign_reference, Linking({}, {}))}
    linked = {v.account: v for v in verdicts(connection, rows, benign_reference, Linking({}, pairs))}
    raised = {pairs[a] for a in pairs if linked[a].action != "none" and alone[a].action == "none"}
    assert len(raised) <= 0.05 * len(set(pairs.values())), len(raised)
