"""Linked accounts: a graph over accounts from prompts that benign users rarely share, whose connected groups are
campaigns scored as one, each with its evidence by kind and in words.

An edge joins two accounts that sent different texts (not only in case or spacing) of one rare family
(near-duplicates, MinHash LSH, `monitor.near_duplicates`), held by few accounts and each text sent about once: one
prompt set split between them. The same text sent by both is no such evidence: a split set is disjoint, while
popular prompts and public banks (a benchmark, a data set everyone draws from) are what accounts share by chance.
Nor is a match with an account that holds much of every family: one that covers a third of a public bank matches a
third of anyone's prompts from it, so a share counts only when its odds are `COVERAGE_LIFT` times those the other's
coverage gives by chance (for small coverage, that many times the share; in a quiet log, where a campaign's accounts
hold most rare families, a share near one still counts). Popular prompts ("hello", a product-description template
that a thousand calls repeat) and everything that crowds share by accident (VPN and NAT exits, SDK user agents) make
no edge; they are reported per group, weighted by how many accounts outside the group share them, so that an
organisation's keys or a platform's customers read as what they are. One chance match between two groups does not
merge them: a bridge (an edge whose removal disconnects the graph) is cut where both sides hold `BRIDGED_GROUP_MIN`
accounts or more. Two actors drawing on one bank (a public data set, one generator's templates) match each other's
texts as often as one actor's accounts match among themselves, but they also send some of the same texts, which a
split set never does: each rare text two accounts both sent weighs `SAME_TEXT_WEIGHT` matched prompts against
linking them, and accounts are partitioned on that signed graph before its groups are read. A pair's matches and
shared texts weigh relative to the two accounts' sizes: an account drawing hundreds of prompts from a bank matches a
few of everyone's, and must not outweigh a sparse campaign's few matches between its own small accounts. A family is
rare by the log it is read in; hours into a log, phrasing that crowds share (a chat opener's template) has reached
few accounts yet, so prompts near a benign log's `common_phrasing` (a `risk.Reference` carries it) are no evidence
at all.
"""

from __future__ import annotations

import heapq
from collections import defaultdict
from dataclasses import dataclass
from typing import TypeVar

import duckdb
import networkx as nx
import numpy as np
import pyarrow as pa

from alambic.monitor.near_duplicates import Signatures, load_buckets

FAMILY_ACCOUNTS_MAX = 50  # a family sent by more accounts is common phrasing, not one actor's prompt set
FAMILY_REUSE_MAX = 4.0  # requests per distinct text: popular prompts recur, a split prompt set is sent once
EDGE_SHARE_MIN = 0.1  # of an account's distinct prompts: one chance match among a program's thousands is no link
COVERAGE_LIFT = 2.0  # a share's odds must be this many times those of the other's coverage of all rare families
BRIDGED_GROUP_MIN = 3  # a lone edge between groups this large is chance; a smaller side is an account joining
SAME_TEXT_WEIGHT = 30.0  # matched prompts one rare text sent by both outweighs (from 40, benign classrooms split)
REFINE_ROUNDS = 20  # of moving accounts between clusters; it settles in a few

# Families: each LSH bucket of near-duplicates, and each exact text, less the prompts near a benign log's common
# phrasing (`common_prompts`, `near_duplicates.load_buckets`); rare ones are the evidence.
FAMILIES = """
CREATE OR REPLACE TEMP TABLE family_members AS
SELECT * FROM (SELECT bucket AS family, prompt_hash FROM prompt_buckets
               UNION ALL
               SELECT -1 - (prompt_hash >> 2)::BIGINT, prompt_hash FROM prompt_texts)  -- exact texts: negative ids
WHERE prompt_hash NOT IN (SELECT prompt_hash FROM common_prompts)
"""
HELD = """SELECT f.family, ap.account, ap.prompt_hash, ap.requests
          FROM family_members f JOIN account_prompts ap USING (prompt_hash)"""

# What crowds write: the texts of families more accounts hold than one actor's prompt set would (a text one account
# sends over and over, a benchmark's question, is common in the log that holds it, not phrasing everyone shares).
COMMON_PROMPTS = f"""
WITH held AS ({HELD}),
common AS (SELECT family FROM held GROUP BY family HAVING count(DISTINCT account) > {FAMILY_ACCOUNTS_MAX})
SELECT DISTINCT prompt_hash FROM family_members JOIN common USING (family) ORDER BY prompt_hash
"""

RARE_FAMILIES = f"""
CREATE OR REPLACE TEMP TABLE rare_holdings AS
WITH held AS ({HELD}),
rare AS (SELECT family FROM held GROUP BY family
         HAVING count(DISTINCT account) BETWEEN 2 AND {FAMILY_ACCOUNTS_MAX}
            AND sum(requests) / count(DISTINCT prompt_hash) <= {FAMILY_REUSE_MAX})
SELECT DISTINCT family, account, prompt_hash, wording
FROM held JOIN rare USING (family) JOIN prompt_texts USING (prompt_hash);
"""

# A pair's size, which its weights are relative to (as a cosine similarity is): the geometric mean of its accounts'
# distinct prompts.
DISTINCT_PROMPTS = "distinct_prompts AS (SELECT account, count(*) AS prompts FROM account_prompts GROUP BY account)"
PAIR_SIZE = "sqrt(pa.prompts * pb.prompts)"


def _lifted(coverage: str) -> str:
    """The share whose odds are `COVERAGE_LIFT` times those of `coverage` (an SQL expression)."""
    return f"{COVERAGE_LIFT} * {coverage} / (1 + {COVERAGE_LIFT - 1} * {coverage})"


# Two accounts that sent different texts of shared rare families, in `EDGE_SHARE_MIN` of either one's distinct
# prompts and at `COVERAGE_LIFT` times the odds of the share the other's coverage c of all rare families gives by
# chance (share / (1 - share) >= lift c / (1 - c), that is share >= lift c / (1 + (lift - 1) c)); weighed by the
# prompts matched (the fewer of the two sides), relative to the pair's size.
EDGES = f"""
WITH {DISTINCT_PROMPTS},
coverage AS (SELECT account, count(DISTINCT family) / (SELECT count(DISTINCT family) FROM rare_holdings) AS coverage
             FROM rare_holdings GROUP BY account),
matched AS (
    SELECT x.account AS a, y.account AS b, count(DISTINCT x.prompt_hash) AS in_a, count(DISTINCT y.prompt_hash) AS in_b
    FROM rare_holdings x JOIN rare_holdings y
      ON x.family = y.family AND x.account < y.account AND x.wording <> y.wording
    GROUP BY ALL
)
SELECT a, b, least(in_a, in_b) / {PAIR_SIZE} FROM matched
JOIN distinct_prompts pa ON pa.account = a JOIN distinct_prompts pb ON pb.account = b
JOIN coverage ca ON ca.account = a JOIN coverage cb ON cb.account = b
WHERE in_a >= greatest({EDGE_SHARE_MIN}, {_lifted("cb.coverage")}) * pa.prompts
   OR in_b >= greatest({EDGE_SHARE_MIN}, {_lifted("ca.coverage")}) * pb.prompts
"""

# Two accounts that sent the same rare texts, and how many, relative to the pair's size as `EDGES` are: two actors
# drawing on one bank, as a split set is disjoint.
SAME_TEXTS = f"""
WITH {DISTINCT_PROMPTS},
texts AS (SELECT DISTINCT account, wording FROM rare_holdings),
shared AS (SELECT x.account AS a, y.account AS b, count(*) AS texts
           FROM texts x JOIN texts y ON x.wording = y.wording AND x.account < y.account GROUP BY ALL)
SELECT a, b, texts / {PAIR_SIZE} FROM shared
JOIN distinct_prompts pa ON pa.account = a JOIN distinct_prompts pb ON pb.account = b
"""

# Per group: its member that sent first (ties by name), then what its members share and how exclusive it is to them
# (the `membership` table numbers the groups). A group is named after that member, so that a campaign keeps its name
# while other groups come and go between the steps of a replay or a follow, and with it the sample of its prompts
# that content signals read (`content.SAMPLED` picks by a hash of the name).
GROUP_EVIDENCE = """
WITH rows AS (
    SELECT m.grp, r.account, r.t, r.client_ip, r.user_agent, r.prompt_hash, r.system_prompt
    FROM shaped r JOIN membership m USING (account)
),
in_group_families AS (  -- rare families that two or more members of one group hold
    SELECT m.grp, h.family FROM rare_holdings h JOIN membership m USING (account)
    GROUP BY ALL HAVING count(DISTINCT h.account) > 1
),
sliced AS (SELECT DISTINCT g.grp, h.prompt_hash
           FROM in_group_families g JOIN family_members h USING (family)),
same_text AS (SELECT grp, prompt_hash FROM rows GROUP BY ALL HAVING count(DISTINCT account) > 1),
systems AS (SELECT grp, system_prompt, count(*) AS uses FROM rows WHERE system_prompt IS NOT NULL
            GROUP BY grp, system_prompt
            QUALIFY row_number() OVER (PARTITION BY grp ORDER BY uses DESC, system_prompt) = 1),
firsts AS (SELECT grp, account, min(t) AS first_t FROM rows GROUP BY ALL),
addresses AS (SELECT DISTINCT grp, account, client_ip FROM rows),
address_users AS (SELECT client_ip, count(DISTINCT account) AS users FROM shaped GROUP BY ALL),
address_sharing AS (
    SELECT a.grp, avg(CASE WHEN inside > 1 THEN 1.0 ELSE 0.0 END) AS shared, sum(inside) / sum(users) AS exclusive
    FROM (SELECT grp, client_ip, count(*) AS inside FROM addresses GROUP BY ALL) a
    JOIN address_users USING (client_ip) GROUP BY a.grp
),
agents AS (SELECT grp, count(DISTINCT user_agent) AS agents FROM rows GROUP BY grp)
SELECT r.grp,
       (SELECT first(account ORDER BY first_t, account) FROM firsts f WHERE f.grp = r.grp) AS earliest_member,
       count(DISTINCT r.account) AS accounts,
       count(*) AS requests,
       avg(CASE WHEN s.prompt_hash IS NULL THEN 0.0 ELSE 1.0 END) AS sliced_share,
       avg(CASE WHEN x.prompt_hash IS NULL THEN 0.0 ELSE 1.0 END) AS same_text_share,
       count(*) / count(DISTINCT r.prompt_hash) AS requests_per_prompt,
       coalesce(any_value(sy.uses), 0) / count(*) AS system_prompt_share,
       coalesce(any_value(ad.shared), 0.0) AS address_shared_share,  -- no address logged: no such evidence
       coalesce(any_value(ad.exclusive), 0.0) AS address_exclusivity,
       any_value(ag.agents) / count(DISTINCT r.account) AS agents_per_account,
       (SELECT (epoch(quantile_cont(first_t, 0.9)) - epoch(quantile_cont(first_t, 0.1))) / 3600
        FROM firsts f WHERE f.grp = r.grp) AS first_activity_spread_hours
FROM rows r
LEFT JOIN sliced s ON s.grp = r.grp AND s.prompt_hash = r.prompt_hash
LEFT JOIN same_text x ON x.grp = r.grp AND x.prompt_hash = r.prompt_hash
LEFT JOIN systems sy ON sy.grp = r.grp
LEFT JOIN address_sharing ad ON ad.grp = r.grp
LEFT JOIN agents ag ON ag.grp = r.grp
GROUP BY r.grp
"""

EVIDENCE = {
    "accounts": "accounts in the group",
    "requests": "requests the group sent",
    "sliced_share": "requests whose prompt is in a rare near-duplicate family that other members also hold",
    "same_text_share": "requests whose exact prompt another member also sent",
    "requests_per_prompt": "requests per distinct prompt (a program repeats itself; a split prompt set does not)",
    "system_prompt_share": "requests carrying the group's most common system prompt",
    "address_shared_share": "of the members' addresses, those two or more members used",
    "address_exclusivity": "of the accounts using the members' addresses, the share that are members",
    "agents_per_account": "distinct user agents per member",
    "first_activity_spread_hours": "hours between the 10th and 90th percentile of the members' first requests",
}


@dataclass(frozen=True)
class Group:
    """Linked accounts, scored as one: its members, its evidence by kind (`EVIDENCE`), and that in words."""

    id: str
    members: tuple[str, ...]
    evidence: dict[str, float]
    reasons: tuple[str, ...]


@dataclass(frozen=True)
class Linking:
    groups: dict[str, Group]
    campaign_of: dict[str, str]  # account -> group id, for accounts linked to at least one other


def link_accounts(
    connection: duckdb.DuckDBPyConnection, signatures: Signatures | None = None, common: np.ndarray | None = None
) -> Linking:
    """Groups of linked accounts over the tables `tables.load_tables` built from the `requests` relation
    (`monitor.source`), largest first, each named after its member that sent first;
    prompts signed through `signatures` (`load_buckets`).
    Prompts near the `common` signatures (a benign log's `common_phrasing`) are no evidence: in a log known for hours,
    phrasing that crowds share has not yet reached the crowds that show it to be common."""
    load_buckets(connection, signatures, common)
    connection.execute(FAMILIES)
    connection.execute(RARE_FAMILIES)
    edges = connection.execute(EDGES).fetchall()
    actor_of = actors(edges, connection.execute(SAME_TEXTS).fetchall())
    found = linked_groups([(a, b) for a, b, _ in edges if actor_of[a] == actor_of[b]])
    if not found:
        return Linking({}, {})
    numbered = {account: n for n, members in enumerate(found) for account in members}
    connection.register("membership", pa.table({"account": list(numbered), "grp": list(numbered.values())}))
    cursor = connection.execute(GROUP_EVIDENCE)
    kinds = [column[0] for column in cursor.description][2:]
    rows = {row[0]: row[1:] for row in cursor.fetchall()}
    connection.unregister("membership")
    name = {n: f"group-{earliest}" for n, (earliest, *_) in rows.items()}
    groups = {}
    for n, members in enumerate(found):
        evidence = dict(zip(kinds, map(float, rows[n][1:]), strict=True))
        groups[name[n]] = Group(name[n], tuple(members), evidence, _reasons(evidence))
    return Linking(groups, {account: name[n] for account, n in numbered.items()})


def common_phrasing(connection: duckdb.DuckDBPyConnection, signatures: Signatures | None = None) -> np.ndarray:
    """The MinHash signatures of a benign log's prompts in families held by more than `FAMILY_ACCOUNTS_MAX` accounts,
    one row per distinct text, over the tables `tables.load_tables` built from its `requests`; what `link_accounts`
    takes as `common`."""
    signatures = signatures or Signatures()
    load_buckets(connection, signatures)
    connection.execute(FAMILIES)
    return phrasing_in_families(connection, signatures)


def phrasing_in_families(connection: duckdb.DuckDBPyConnection, signatures: Signatures) -> np.ndarray:
    """`common_phrasing` read from the families last built on `connection` (by `link_accounts` given no `common`, or
    by `common_phrasing`) from prompts `signatures` signed: a benign log linked already is not banded again."""
    common = np.asarray(connection.execute(COMMON_PROMPTS).fetchnumpy()["prompt_hash"], dtype=np.uint64)
    return signatures.signatures[np.searchsorted(signatures.hashes, common)]


Node = TypeVar("Node", str, int)
Signed = dict[Node, dict[Node, float]]  # a symmetric weighted graph: node -> neighbour -> weight


def actors(edges: list[tuple[str, str, float]], same_texts: list[tuple[str, str, float]]) -> dict[str, int]:
    """Each account of `edges` -> its actor's number, on the signed graph of prompts matched (`edges`) less
    `SAME_TEXT_WEIGHT` per rare text both sent (each pair's both taken relative to its size alike): greedy additive
    edge contraction, then rounds that move each account to the cluster it weighs most towards and contract the
    clusters again, until none moves (GAEC and Kernighan-Lin-style refinement for correlation clustering, Keuper et
    al. 2015)."""
    weight: Signed[str] = defaultdict(dict)
    for a, b, w in [*edges, *((a, b, -SAME_TEXT_WEIGHT * n) for a, b, n in same_texts)]:
        weight[a][b] = weight[b][a] = weight[a].get(b, 0.0) + w
    accounts = {a for a, _, _ in edges} | {b for _, b, _ in edges}  # the rest have no positive weight to anyone
    contracted = _contracted({a: {b: w for b, w in weight[a].items() if b in accounts} for a in accounts})
    number = {cluster: n for n, cluster in enumerate(sorted(set(contracted.values())))}
    actor_of = {account: number[cluster] for account, cluster in contracted.items()}
    for _ in range(REFINE_ROUNDS):
        moved = _moved(weight, actor_of)
        between: Signed[int] = defaultdict(dict)
        for a in accounts:
            for b, w in weight[a].items():
                x, y = moved[a], moved.get(b)
                if y is not None and x != y:
                    between[x][y] = between[x].get(y, 0.0) + w
        merged = _contracted({x: between[x] for x in set(moved.values())})
        refined = {a: merged[x] for a, x in moved.items()}
        if refined == actor_of:
            break
        actor_of = refined
    return actor_of


def _contracted(weight: Signed[Node]) -> dict[Node, Node]:
    """Node -> its cluster's representative: the heaviest pair of clusters merges, its weights to the others
    summed, until no pair weighs above zero (greedy additive edge contraction). Consumes `weight`."""
    members = {a: [a] for a in weight}
    heap = [(-w, a, b) for a in weight for b, w in weight[a].items() if a < b and w > 0]
    heapq.heapify(heap)
    while heap:
        w, a, b = heapq.heappop(heap)
        if a not in members or b not in members or weight[a].get(b) != -w:
            continue  # merged away, or reweighed since it was pushed
        for c, v in weight.pop(b).items():  # b into a
            del weight[c][b]
            if c != a:
                weight[a][c] = weight[c][a] = weight[a].get(c, 0.0) + v
                if weight[a][c] > 0:
                    heapq.heappush(heap, (-weight[a][c], min(a, c), max(a, c)))
        members[a] += members.pop(b)
    return {node: cluster for cluster, nodes in members.items() for node in nodes}


def _moved(weight: Signed[str], actor_of: dict[str, int]) -> dict[str, int]:
    """One pass over the accounts in order: each joins the cluster it weighs most towards if that beats its own,
    or stands alone (a number no cluster holds) if it weighs against its own."""
    actor_of = dict(actor_of)
    unused = max(actor_of.values(), default=-1) + 1
    for account in sorted(actor_of):
        towards: dict[int, float] = defaultdict(float)
        for other, w in weight[account].items():
            if other in actor_of and other != account:
                towards[actor_of[other]] += w
        own = towards.pop(actor_of[account], 0.0)
        best = max(towards, key=lambda c: (towards[c], c), default=None)
        if best is not None and towards[best] > max(own, 0.0):
            actor_of[account] = best
        elif own < 0:
            actor_of[account], unused = unused, unused + 1
    return actor_of


def linked_groups(edges: list[tuple[str, str]]) -> list[list[str]]:
    """Connected groups of accounts, largest first, once each bridge between two sides of `BRIDGED_GROUP_MIN` or
    more accounts is cut (bridges found in linear time, Tarjan 1974; a side is measured without its bridge)."""
    graph = nx.Graph(edges)
    cut = []
    for a, b in list(nx.bridges(graph)):  # listed first: the loop takes each one out and puts it back
        if min(graph.degree(a), graph.degree(b)) == 1:  # one account joining a group: a side of one
            continue
        graph.remove_edge(a, b)
        sides = len(nx.node_connected_component(graph, a)), len(nx.node_connected_component(graph, b))
        graph.add_edge(a, b)
        if min(sides) >= BRIDGED_GROUP_MIN:
            cut.append((a, b))
    graph.remove_edges_from(cut)
    return sorted((sorted(c) for c in nx.connected_components(graph) if len(c) > 1), key=lambda c: (-len(c), c[0]))


def _reasons(e: dict[str, float]) -> tuple[str, ...]:
    """The group's evidence in words, the strongest kinds first."""
    n = int(e["accounts"])
    said = [
        (
            e["sliced_share"],
            f"{n} accounts sent {e['sliced_share']:.0%} of their requests from one set of rare prompts, "
            f"split between them ({e['requests_per_prompt']:.1f} requests per distinct prompt)",
        ),
        (e["same_text_share"], f"{n} accounts sent {e['same_text_share']:.0%} of the same prompts"),
        (e["system_prompt_share"], f"{e['system_prompt_share']:.0%} of their requests carry one system prompt"),
        (
            e["address_exclusivity"] * e["address_shared_share"],
            f"{e['address_shared_share']:.0%} of their addresses are shared between members; "
            f"{e['address_exclusivity']:.0%} of those addresses' users are members",
        ),
        (
            1 / (1 + e["first_activity_spread_hours"]),
            f"first requests within {e['first_activity_spread_hours']:.1f} hours of each other (10th-90th pct)",
        ),
    ]
    return tuple(words for strength, words in sorted(said, key=lambda s: -s[0]) if strength >= 0.05)
