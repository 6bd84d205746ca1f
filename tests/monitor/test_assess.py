"""The scoring pipeline end to end: a verdict per account, campaigns scored as one account, no benign blocked."""

from __future__ import annotations

import json

import duckdb
import numpy as np
import pytest
from monitor_traffic import HashedWords, opened, row, write

import alambic.monitor.content as content
import alambic.monitor.tables as tables
from alambic.monitor.assess import assess, benign_units, campaign_features, feature_rows, verdicts
from alambic.monitor.embeddings import EmbeddingCache
from alambic.monitor.features import account_features
from alambic.monitor.linking import Linking, link_accounts
from alambic.monitor.risk import MEMBER_COUNTS, Reference, RiskOverSteps, action_for
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
def benign_week(tmp_path_factory):
    out = tmp_path_factory.mktemp("benign") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=14, days=3, scale=0.3, campaigns=())), out)
    return out


@pytest.fixture(scope="module")
def benign_reference(benign_week):
    return Reference([f.values for f in account_features(open_log([benign_week]))])


def test_a_benign_log_calibrates_on_its_accounts_and_on_its_linked_groups_each_taken_as_one_account(benign_week):
    rows, groups, _, ids = benign_units(open_log([benign_week]))
    accounts = {f.account: f.values for f in account_features(open_log([benign_week]))}
    # each row with its account's id (a reference leaves an account's own row out when scoring it: `excluding_own`)
    assert {a: r["requests"] for a, r in zip(ids, rows, strict=True)} == {a: v["requests"] for a, v in accounts.items()}
    connection = open_log([benign_week])
    tables.load_tables(connection)
    members: dict[str, list[str]] = {}
    for account, group in link_accounts(connection).campaign_of.items():
        members.setdefault(group, []).append(account)
    assert groups and len(groups) == len(members)  # an organisation's keys, a class, linked harnesses
    assert sorted(g["requests"] for g in groups) == sorted(
        sum(accounts[a]["requests"] for a in m) for m in members.values()
    )
    assert len(Reference(rows, groups=groups)) == len(rows) + len(groups)


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
    # As one account this short, small hydra is rare in its answers alone (their length and per prompt token: one
    # family of three features, so a Bonferroni factor of 3: about the 2% benign tail); counted as one account, its
    # 90 accounts' addresses, agents and volume would make any group rarer.
    log, labels = simulated
    connection = opened([log])
    rows = {f.account: f.values for f in account_features(connection)}
    reference = Reference([v for a, v in rows.items() if labels[a]["kind"] == "benign"])
    hydra = {a: "hydra" for a, label in labels.items() if label["style"] == "hydra"}
    (group,) = campaign_features(connection, hydra).values()
    campaign = reference.assess(group, leave_out=MEMBER_COUNTS)
    assert campaign.evidence[0].feature in ("answer_tokens", "answer_prompt_ratio") and campaign.risk >= 0.97
    alone = {v.account: v for v in verdicts(connection, rows, reference, Linking({}, {}))}
    linked = {v.account: v for v in verdicts(connection, rows, reference, Linking({}, hydra))}
    assert sum(alone[a].risk < campaign.risk for a in hydra) > 0.5 * len(hydra)
    assert all(linked[a].risk == max(alone[a].risk, campaign.risk) and linked[a].campaign == "hydra" for a in hydra)
    assert all(ACTIONS.index(linked[a].action) >= ACTIONS.index(alone[a].action) for a in hydra)
    lifted = [a for a in hydra if alone[a].risk < campaign.risk]
    assert all(linked[a].reasons[0].startswith(f"its campaign of {len(hydra)} linked accounts") for a in lifted)
    benign = [a for a, label in labels.items() if label["kind"] == "benign"]
    assert [linked[a].risk for a in benign] == [alone[a].risk for a in benign]


def test_over_steps_each_accounts_risk_and_action_are_those_of_a_benign_replays_highest_risks(
    simulated, benign_reference
):
    log, _ = simulated
    static = assess(open_log([log]), benign_reference)
    static_of = {v.account: v for v in static}
    # a replay whose benign accounts climbed high: a tenth past 0.999 at some step
    over = RiskOverSteps(np.concatenate([np.linspace(0.0, 0.999, 90), np.linspace(0.999, 0.99999, 10)]))
    stepped = {v.account: v for v in assess(open_log([log]), benign_reference, over_steps=over)}
    features = {f.account: f.values for f in account_features(open_log([log]))}
    demoted = []
    for verdict in static:
        found = stepped[verdict.account]
        assert found.risk == over(verdict.risk) and found.campaign == verdict.campaign
        if verdict.campaign is None:
            assert found.action == action_for(found.risk, int(features[verdict.account]["requests"]))
            # the reasons are those of the action the replay's risk takes, not of the step's risk
            own = benign_reference.assess(features[verdict.account])
            assert found.reasons == own.reasons(len(benign_reference), acted=found.action != "none")
            if verdict.action != "none" and found.action == "none":
                demoted.append(verdict.account)
    flagged = {v.account for v in static if v.action != "none"}
    assert {a for a, v in stepped.items() if v.action != "none"} < flagged  # fewer, and none that were not
    # an account flagged by its step risk but not over the steps is told only of evidence strong on its own
    assert any(len(stepped[a].reasons) < len(static_of[a].reasons) for a in demoted)


def test_benign_accounts_linked_in_pairs_are_not_flagged_for_having_two_accounts_devices(simulated, benign_reference):
    # An organisation's two keys, or two users who happened to link early in a replay: as one account they have
    # two accounts' addresses and user agents, which says how many accounts the group has, not what it does.
    log, labels = simulated
    connection = opened([log])
    rows = {f.account: f.values for f in account_features(connection)}
    benign = sorted((a for a, label in labels.items() if label["kind"] == "benign"), key=lambda a: rows[a]["requests"])
    pairs = {a: f"pair-{n // 2}" for n, a in enumerate(benign[: len(benign) // 2 * 2])}
    alone = {v.account: v for v in verdicts(connection, rows, benign_reference, Linking({}, {}))}
    linked = {v.account: v for v in verdicts(connection, rows, benign_reference, Linking({}, pairs))}
    raised = {pairs[a] for a in pairs if linked[a].action != "none" and alone[a].action == "none"}
    assert len(raised) <= 0.05 * len(set(pairs.values())), len(raised)


def test_a_group_is_not_judged_by_the_volume_its_members_add_up_to(tmp_path, benign_reference):
    # A class of forty pupils working in the same hour, linked by the homework bank they share: together they send
    # in one hour what no benign account does, as any forty benign accounts would. A group's volume, like its
    # addresses, counts its members; each member's own volume is judged on its own.
    pupils = [f"pupil-{n:02d}" for n in range(40)]
    rows = [row(40 * k + n, pupil, k + n / 40) for k in range(25) for n, pupil in enumerate(pupils)]
    connection = opened(write(tmp_path / "log.jsonl", rows))
    features = {f.account: f.values for f in account_features(connection)}
    class_of = dict.fromkeys(pupils, "class")
    (group,) = campaign_features(connection, class_of).values()
    assert group["requests"] == 1000 and group["peak_per_hour"] == 1000  # past every benign account
    found = verdicts(connection, features, benign_reference, Linking({}, class_of))
    assert all(v.action == "none" and not any("its campaign" in reason for reason in v.reasons) for v in found)


@pytest.fixture(scope="module")
def mimic_week(tmp_path_factory):
    out = tmp_path_factory.mktemp("mimic") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=13, days=3, scale=0.3, campaigns=("mimic",))), out)
    return out, json.loads((out.parent / "labels.json").read_text())


def test_a_campaign_in_a_support_bot_s_template_is_rare_by_the_answers_it_takes(mimic_week, benign_reference):
    # Tasks wrapped in a company's long rules, as a support bot's: the prompt tokens grow with the wrapper, so the
    # answers per prompt token look like an integration's; the answers themselves are as long as a harvest wants.
    log, labels = mimic_week
    connection = opened([log])
    rows = {f.account: f.values for f in account_features(connection)}
    campaign_of = {a: "mimic" for a, label in labels.items() if label["style"] == "mimic"}
    (group,) = campaign_features(connection, campaign_of).values()
    evidence = {e.feature: e for e in benign_reference.assess(group).evidence}
    assert evidence["answer_tokens"].probability <= 0.01 < 0.1 < evidence["answer_prompt_ratio"].probability
    found = verdicts(connection, rows, benign_reference, Linking({}, campaign_of))
    for verdict in found:
        if verdict.account in campaign_of:
            assert verdict.reasons[0].startswith("its campaign of 10 linked accounts, as one: mean completion tokens")


@pytest.fixture(scope="module")
def linked_week(tmp_path_factory):
    out = tmp_path_factory.mktemp("linked") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=13, days=2, scale=0.05, campaigns=("sharded", "hydra"))), out)
    return out, json.loads((out.parent / "labels.json").read_text())


def _one_thread(log):
    """The log on one DuckDB thread: parallel sums of doubles (a mean temperature) may differ in their last bits."""
    return opened([log], duckdb.connect(config={"threads": 1}))


@pytest.fixture(scope="module")
def assessed_with_content(linked_week):
    """An assessment with content signals, the accounts of each pass over sampled prompts, in order, and how many
    times the requests were shaped into the tables every pass reads."""
    log, _ = linked_week
    sampled: list[set[str]] = []
    account_tasks, append, loads = content.account_tasks, tables._append, []

    def counted(connection, sample=content.SAMPLE):
        tasks = account_tasks(connection, sample)
        sampled.append(set(tasks))
        return tasks

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(content, "account_tasks", counted)
        patch.setattr(tables, "_append", lambda *args, **kwargs: loads.append(1) or append(*args, **kwargs))
        found = assess(open_log([log], duckdb.connect(config={"threads": 1})), content=EmbeddingCache(HashedWords()))
    return found, sampled, len(loads)


def test_an_assessment_with_content_samples_and_embeds_each_account_s_prompts_once(linked_week, assessed_with_content):
    # The topics of all traffic and each account's content signals come from one pass over the accounts' sampled
    # prompts; the campaigns, taken as accounts, are sampled apart (a pass of their own).
    _, labels = linked_week
    found, sampled, _ = assessed_with_content
    assert any(v.campaign is not None for v in found) and len(sampled) == 2
    assert sampled.count(set(labels)) == 1


def test_an_assessment_reads_each_request_once(assessed_with_content):
    # every request's JSON is read and shaped once, for the feature, content, linking and campaign passes
    assert assessed_with_content[2] == 1


def test_one_pass_gives_the_verdicts_of_topics_fitted_in_a_pass_of_their_own(linked_week, assessed_with_content):
    log, _ = linked_week
    connection, cache = _one_thread(log), EmbeddingCache(HashedWords())
    topics = content.account_content(connection, cache).topics
    rows = feature_rows(connection, cache, topics)
    reference = Reference(list(rows.values()), list(rows))
    apart = verdicts(connection, rows, reference, link_accounts(connection), cache, topics)
    assert assessed_with_content[0] == apart
