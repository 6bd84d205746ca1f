"""Linked accounts: every multi-account campaign in one group with no benign account; organisations kept apart."""

from __future__ import annotations

import json
import random
from collections import Counter

import pyarrow as pa
import pytest
from monitor_traffic import opened

from alambic.monitor.assess import assess, benign_units
from alambic.monitor.linking import EVIDENCE, Linking, actors, common_phrasing, link_accounts, linked_groups
from alambic.monitor.risk import Reference
from alambic.monitor.source import open_log
from alambic.monitor.tables import load_tables
from alambic.simulate import Simulation, SimulationSettings, write_jsonl

VISIBLE = ("bulk", "sharded", "chain-of-thought", "pivot", "hydra")


@pytest.fixture(scope="module", params=[0, 1, 2])
def linked(request, tmp_path_factory):
    out = tmp_path_factory.mktemp(f"seed{request.param}") / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=request.param, days=2, scale=0.2, campaigns=VISIBLE)), out)
    labels = json.loads((out.parent / "labels.json").read_text())
    return link_accounts(opened([out])), labels


def _campaigns(labels: dict[str, dict]) -> dict[str, list[str]]:
    """Campaign id -> its accounts."""
    campaigns: dict[str, list[str]] = {}
    for account, label in labels.items():
        if label["kind"] == "campaign":
            campaigns.setdefault(label["campaign_id"], []).append(account)
    return campaigns


def test_each_campaign_is_mostly_one_group_without_benign_accounts(linked):
    """Over two days at this scale, campaigns drawing on one bank share few enough texts that an account or two may
    join another campaign's group (some hydra accounts send one or two of its prompts, with no near-duplicate
    elsewhere); the benchmark measures the 95% target over weeks."""
    linking, labels = linked
    for campaign, accounts in _campaigns(labels).items():
        if len(accounts) == 1:
            continue
        group, members = Counter(linking.campaign_of.get(a) for a in accounts).most_common(1)[0]
        assert group is not None and members > 0.5 * len(accounts), campaign
        assert all(labels[a]["kind"] == "campaign" for a in linking.groups[group].members), campaign


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_two_campaigns_drawing_on_one_bank_are_two_groups(tmp_path, seed):
    """Each sends slices of its own shuffle of the simulator's one task bank: their texts match as often as one
    campaign's accounts match among themselves, but they also share texts, which one split set never does."""
    out = tmp_path / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=seed, days=2, scale=0.2, campaigns=("sharded", "pivot"))), out)
    labels = json.loads((out.parent / "labels.json").read_text())
    linking = link_accounts(opened([out]))
    for campaign, accounts in _campaigns(labels).items():
        groups = {linking.campaign_of.get(a) for a in accounts}
        assert len(groups) == 1 and None not in groups, campaign
        assert {labels[a].get("campaign_id") for a in linking.groups[groups.pop()].members} == {campaign}


def test_a_retried_prompt_does_not_split_an_actor_and_shared_texts_split_two():
    """Four accounts that match each other's texts, one of them resending another's prompt once (a retry), are one
    actor; two such cliques that match across as strongly but share texts are two."""
    one, two = [f"a{i}" for i in range(4)], [f"b{i}" for i in range(4)]
    within = [(x, y, 40) for group in (one, two) for x in group for y in group if x < y]
    across = [(x, y, 40) for x in one for y in two]
    actor_of = actors([*within, *across], [("a0", "a1", 1), *((x, y, 3) for x in one for y in two)])
    assert len({actor_of[a] for a in one}) == len({actor_of[b] for b in two}) == 1
    assert actor_of["a0"] != actor_of["b0"]
    assert len(set(actors([*within, *across], []).values())) == 1


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
    sharded = next(a for a, label in labels.items() if label["style"] == "sharded")
    campaign = linking.groups[linking.campaign_of[sharded]]
    assert any("from one set of rare prompts, split between them" in reason for reason in campaign.reasons)


def test_a_group_keeps_its_name_when_other_groups_leave_the_log(tmp_path):
    """A group is named after its member that sent first, not its size rank, so a campaign keeps its name (and
    the sample of its prompts content signals read) between the steps of a replay as other groups come and go."""
    log = tmp_path / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=0, days=2, scale=0.2, campaigns=VISIBLE)), log)
    connection = open_log([log], name="log")
    connection.execute("CREATE VIEW requests AS SELECT * FROM log")
    load_tables(connection)
    before = link_accounts(connection)
    first = "SELECT account FROM log WHERE list_contains($members, account) ORDER BY t, account LIMIT 1"
    for group in before.groups.values():
        assert group.id == f"group-{connection.execute(first, {'members': list(group.members)}).fetchall()[0][0]}"
    largest = next(iter(before.groups.values()))
    connection.register("left_out", pa.table({"account": list(largest.members)}))
    connection.execute("CREATE OR REPLACE VIEW requests AS SELECT * FROM log WHERE account NOT IN (FROM left_out)")
    load_tables(connection)
    after = link_accounts(connection)
    unchanged = {a.members for a in after.groups.values()}
    kept = [g for g in list(before.groups.values())[1:] if g.members in unchanged]
    assert kept and all(after.groups[g.id].members == g.members for g in kept)


def test_a_lone_account_links_to_nothing(tmp_path):
    log = tmp_path / "log.jsonl"
    row = {"time": "2026-11-02T10:00:00+00:00", "account": "solo", "messages": [{"role": "user", "content": "hi"}]}
    log.write_text(json.dumps(row) + "\n")
    assert link_accounts(opened([log])) == Linking({}, {})


def test_linking_reads_the_relation_as_it_is_now(tmp_path):
    """Replay redefines `requests` on one connection at each step: a later call must see the rows added since."""
    out = tmp_path / "log.jsonl"
    write_jsonl(Simulation(SimulationSettings(seed=4, days=2, scale=0.1, campaigns=("sharded",))), out)
    connection = open_log([out], name="log")
    connection.execute("CREATE VIEW requests AS SELECT * FROM log WHERE t < (SELECT min(t) FROM log) + INTERVAL 2 HOUR")
    load_tables(connection)
    link_accounts(connection)
    connection.execute("CREATE OR REPLACE VIEW requests AS SELECT * FROM log")
    load_tables(connection)
    assert link_accounts(connection).campaign_of == link_accounts(opened([out])).campaign_of


def _public_bank(directory):
    """A data directory laid out as `../shared/data` whose prompts behave as real ones do: a public bank of
    thousands of distinct questions (no two near-duplicates) that campaigns, classrooms and eval harnesses all
    draw from, and chats that people and a hydra's cover traffic share."""
    rng = random.Random(0)
    words = [f"{rng.choice('bcdfgklmnprstvz')}{rng.choice('aeiou')}{rng.choice('lmnrst')}{i}" for i in range(3000)]

    def question() -> str:
        return " ".join(rng.choices(words, k=rng.randint(18, 40))) + "?"

    files = {
        "gsm8k/train.jsonl": [{"question": question()} for _ in range(3000)],
        "sharegpt/conversations.jsonl": [
            {"id": str(i), "turns": [question() for _ in range(rng.randint(1, 4))]} for i in range(600)
        ],
    }
    for name, rows in files.items():
        (directory / name).parent.mkdir(parents=True)
        (directory / name).write_text("".join(json.dumps(row) + "\n" for row in rows))
    return directory


def test_prompts_from_one_public_bank_put_no_benign_account_in_a_campaign(tmp_path):
    """Campaigns, classrooms, eval harnesses and people drawing from one bank share prompts by chance: the same
    text, or a few matches with an account that covers a third of the bank, are no common operator."""
    out = tmp_path / "log.jsonl"
    bank = _public_bank(tmp_path / "data")
    write_jsonl(Simulation(SimulationSettings(seed=0, days=2, scale=0.2, campaigns=VISIBLE, data=bank)), out)
    labels = json.loads((out.parent / "labels.json").read_text())
    linking = link_accounts(opened([out]))
    for group in linking.groups.values():
        kinds = Counter(labels[a]["style"] for a in group.members)
        assert len({labels[a]["kind"] for a in group.members}) == 1, kinds


def test_one_bridging_edge_does_not_merge_two_groups():
    """A class of students who share homework and a campaign that splits one prompt set, joined by one chance match
    between a student and a campaign account: two groups, as a connected-components pass would not give. An account
    or a pair linked to a group by one edge still joins it."""
    campaign = [f"c{i}" for i in range(5)]
    students = [f"s{i}" for i in range(6)]
    edges = [(a, b) for group in (campaign, students) for a in group for b in group if a < b]
    assert linked_groups([*edges, ("c0", "s0")]) == [students, campaign]
    assert linked_groups([*edges, ("c0", "lone"), ("s0", "pair"), ("pair", "mate")]) == [
        sorted([*students, "mate", "pair"]),
        [*campaign, "lone"],
    ]


def _log(path, prompts: dict[str, list[str]]):
    """A v1 log of chat requests, one per prompt, without addresses or user agents (optional in v1)."""
    rows = [
        {"time": f"2026-11-02T10:{n % 60:02d}:00+00:00", "account": a, "messages": [{"role": "user", "content": p}]}
        for n, (a, texts) in enumerate(prompts.items())
        for p in texts
    ]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return [path]


def _split_sets(pairs: int) -> dict[str, list[str]]:
    """Pairs of accounts that split a prompt set between them: variants of one task each."""
    tasks = {p: [" ".join(f"w{p}.{k}.{j}" for j in range(6)) for k in range(5)] for p in range(pairs)}
    sides = {"x": "", "y": " more"}
    return {f"p{p}{side}": [task + tail for task in tasks[p]] for p in range(pairs) for side, tail in sides.items()}


def test_a_log_without_addresses_links_with_no_address_evidence(tmp_path):
    linking = link_accounts(opened(_log(tmp_path / "log.jsonl", _split_sets(12))))
    assert len(linking.groups) == 12
    for group in linking.groups.values():
        assert group.evidence["address_shared_share"] == group.evidence["address_exclusivity"] == 0.0


def test_a_sparse_campaign_stays_one_group_beside_a_heavy_actor_drawing_on_its_families(tmp_path):
    """Six small accounts in a ring, each sending two prompts and matching its neighbours on one (a hydra's), and
    a heavy actor of two accounts that split a hundred tasks and also send other variants of all six accounts'
    tasks, two of their texts word for word (one bank, two actors). Counted in prompts, each small account matches
    each heavy one on both of its prompts and the ring once a side: the heavy actor pulls them in. Relative to the
    accounts' sizes, the ring's matches weigh more, and the campaign is one group of its own."""
    ring = {f"c{i}": [_task(i), _task((i + 1) % 6, " more")] for i in range(6)}
    heavy = {
        f"h{side}": [_task(100 + k, tail) for k in range(100)] + [_task(i, f" {extra}") for i in range(6)]
        for side, (tail, extra) in enumerate([("", "again"), (" more", "now")])
    }
    heavy["h0"] += [ring["c0"][0], ring["c3"][0]]
    linking = link_accounts(opened(_log(tmp_path / "log.jsonl", {**_split_sets(100), **ring, **heavy})))
    groups = {linking.campaign_of.get(a) for a in ring}
    assert len(groups) == 1 and None not in groups, groups
    assert linking.campaign_of["h0"] == linking.campaign_of["h1"] not in groups


def test_a_split_set_holding_most_of_a_quiet_log_s_rare_families_is_one_group(tmp_path):
    """A campaign in a quiet log: each of its three accounts holds over half of the log's rare families (55-85%) and
    matches the others on every prompt, far more than that coverage gives by chance, though no share is twice it."""
    trio = {f"t{side}": [_task(200 + k, tail) for k in range(30)] for side, tail in enumerate(["", " more", " again"])}
    linking = link_accounts(opened(_log(tmp_path / "log.jsonl", {**_split_sets(2), **trio})))
    assert {linking.campaign_of.get(a) for a in trio} == {linking.campaign_of.get("t0")} != {None}
    assert set(linking.groups[linking.campaign_of["t0"]].members) == set(trio)


def _task(family: int, tail: str = "") -> str:
    return " ".join(f"t{family}.{j}" for j in range(6)) + tail


def test_the_same_words_in_another_case_or_spacing_are_one_text(tmp_path):
    """ "hello" and "Hello" are one popular prompt, not two texts of a split set."""
    prompts = _split_sets(12)
    prompts["a"] = [f"Tell me a joke about {k}a {k}b {k}c, please" for k in "VWXYZ"]
    prompts["b"] = [f"tell me a  joke about {k}A {k}B {k}C, Please " for k in "vwxyz"]
    linking = link_accounts(opened(_log(tmp_path / "log.jsonl", prompts)))
    assert "a" not in linking.campaign_of and "b" not in linking.campaign_of
    assert len(linking.groups) == 12


def test_an_account_merged_early_by_its_one_strong_match_moves_to_the_actor_it_weighs_most_towards():
    """Contraction merges x with a1 first (their match is the heaviest), and the rest of a1's actor follows; x's
    weight towards that actor (100 less two shared texts) is less than towards b1 and b2, which it then joins."""
    edges = [("a1", "a2", 50), ("a1", "a3", 50), ("a2", "a3", 50), ("b1", "b2", 50)]
    edges += [("a1", "x", 100), ("b1", "x", 40), ("b2", "x", 40)]
    same_texts = [("a2", "x", 1), ("a3", "x", 1), ("a1", "b1", 2), ("a2", "b2", 2), ("a3", "b1", 2)]
    actor_of = actors(edges, same_texts)
    assert actor_of["x"] == actor_of["b1"] == actor_of["b2"] != actor_of["a1"]
    assert actor_of["a1"] == actor_of["a2"] == actor_of["a3"]


def test_an_account_that_weighs_against_its_own_actor_stands_alone_even_as_its_first_member():
    """a and b merge first (their match is the heaviest), then c and d join through b, each of them sharing texts
    with a: a now weighs against its actor (70 less 120) and leaves it, though the actor was first a's."""
    edges = [("a", "b", 70), ("b", "c", 65), ("b", "d", 65)]
    actor_of = actors(edges, [("a", "c", 2), ("a", "d", 2)])
    assert actor_of["a"] != actor_of["b"] == actor_of["c"] == actor_of["d"]


SUBJECTS = ["coffee", "the sea", "autumn", "old friends", "my cat", "rain", "a city at night", "spring", "mountains"]


def _poems(account: int, count: int) -> list[str]:
    return [f"Write a short poem about {SUBJECTS[(account + k) % len(SUBJECTS)]}." for k in range(count)]


def _crowd_and_young(tmp_path) -> tuple[list, list]:
    """A benign week where sixty accounts ask for poems of one template, and a young log where two people each asked
    for one beside twelve pairs that split a prompt set."""
    crowd = _log(tmp_path / "crowd.jsonl", {f"person{a}": _poems(a, 3) for a in range(60)})
    young = _log(tmp_path / "young.jsonl", {**_split_sets(12), "alice": _poems(0, 1), "bob": _poems(1, 1)})
    return crowd, young


def test_phrasing_a_benign_crowd_shares_links_no_accounts_in_a_log_too_young_to_show_it_common(tmp_path):
    """Hours into a log, two people who each asked for a poem of one template hold a family that only they hold,
    as a split prompt set's accounts do. A benign week, where sixty accounts ask for such poems, knows it for common
    phrasing: given its `common_phrasing`, they are no longer linked, and the split sets still are."""
    crowd, young = _crowd_and_young(tmp_path)
    common = common_phrasing(opened(crowd))
    assert 0 < len(common) <= len(SUBJECTS)
    alone = link_accounts(opened(young))
    assert alone.campaign_of.get("alice") == alone.campaign_of.get("bob") is not None  # what the change prevents
    warned = link_accounts(opened(young), None, common)
    assert "alice" not in warned.campaign_of and "bob" not in warned.campaign_of
    assert len(warned.groups) == 12 and set(warned.campaign_of) == set(_split_sets(12))


def test_a_reference_carries_its_benign_log_s_common_phrasing_into_the_scoring(tmp_path):
    crowd, young = _crowd_and_young(tmp_path)
    rows, groups, phrasing, _ = benign_units(opened(crowd))
    verdicts = {v.account: v for v in assess(opened(young), Reference(rows, groups=groups, phrasing=phrasing))}
    assert verdicts["alice"].campaign is None and verdicts["bob"].campaign is None
    assert verdicts["p0x"].campaign is not None and verdicts["p0x"].campaign == verdicts["p0y"].campaign
    unwarned = {v.account: v for v in assess(opened(young), Reference(rows, groups=groups))}
    assert unwarned["alice"].campaign is not None
