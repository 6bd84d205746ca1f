"""Linked accounts: every multi-account campaign in one group with no benign account; organisations kept apart."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from alambic.monitor.linking import EVIDENCE, Linking, link_accounts
from alambic.monitor.source import open_log
from alambic.simulate import Simulation, SimulationSettings, write_jsonl

VISIBLE = ("bulk", "sharded", "chain-of-thought", "pivot", "hydra")


@pytest.fixture(scope="module", params=[0, 1, 2])
def linked(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"seed{request.param}") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=request.param, days=2, scale=0.2, campaigns=VISIBLE)), out)
    labels = json.loads((out.parent / "labels.json").read_text())
    return link_accounts(open_log([out])), labels


def test_each_campaign_is_one_group_without_benign_accounts(linked):
    linking, labels = linked
    campaigns: dict[str, list[str]] = {}
    for account, label in labels.items():
        if label["kind"] == "campaign":
            campaigns.setdefault(label["campaign_id"], []).append(account)
    for campaign, accounts in campaigns.items():
        if len(accounts) == 1:
            continue
        group, members = Counter(linking.campaign_of.get(a) for a in accounts).most_common(1)[0]
        assert group is not None and members >= 0.95 * len(accounts), campaign
        assert all(labels[a]["kind"] == "campaign" for a in linking.groups[group].members), campaign


def test_organisations_and_platforms_are_never_merged_with_a_campaign(linked):
    linking, labels = linked
    for group in linking.groups.values():
        kinds = {labels[a]["kind"] for a in group.members}
        assert len(kinds) == 1, Counter(labels[a]["style"] for a in group.members)


def test_groups_carry_their_evidence_by_kind_and_in_words(linked):
    linking, labels = linked
    assert linking.groups
    for group in linking.groups.values():
        assert set(group.evidence) == set(EVIDENCE) and group.evidence["accounts"] == len(group.members)
        assert all(linking.campaign_of[a] == group.id for a in group.members)
    campaign = next(g for g in linking.groups.values() if labels[g.members[0]]["kind"] == "campaign")
    assert campaign.evidence["sliced_share"] > 0.5
    assert any("from one set of rare prompts, split between them" in reason for reason in campaign.reasons)


def test_a_lone_account_links_to_nothing(tmp_path):
    log = tmp_path / "log.jsonl"
    row = {"time": "2026-11-02T10:00:00+00:00", "account": "solo", "messages": [{"role": "user", "content": "hi"}]}
    log.write_text(json.dumps(row) + "\n")
    assert link_accounts(open_log([log])) == Linking({}, {})
