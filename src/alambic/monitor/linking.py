"""Linked accounts: a graph over accounts from prompts that benign users rarely share, whose connected groups are
campaigns scored as one, each with its evidence by kind and in words.

An edge joins two accounts that sent different texts (not only in case or spacing) of one rare family
(near-duplicates, MinHash LSH, `monitor.near_duplicates`), held by few accounts and each text sent about once: one
prompt set split between them. The same text sent by both is no such evidence: a split set is disjoint, while
popular prompts and public banks (a benchmark, a data set everyone draws from) are what accounts share by chance.
Nor is a match with an account that holds much of every family: one that covers a third of a public bank matches a
third of anyone's prompts from it, so a share counts only above `COVERAGE_LIFT` times what the other's coverage
gives by chance. Popular prompts ("hello", a product-description template that a thousand calls repeat) and
everything that crowds share by accident (VPN and NAT exits, SDK user agents) make no edge; they are reported per
group, weighted by how many accounts outside the group share them, so that an organisation's keys or a platform's
customers read as what they are. One chance match between two groups does not merge them: a bridge (an edge whose
removal disconnects the graph) is cut where both sides hold `BRIDGED_GROUP_MIN` accounts or more.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import networkx as nx
import pyarrow as pa

from alambic.monitor.near_duplicates import Signatures, load_buckets
from alambic.monitor.prompts import LAST_USER_TURN

FAMILY_ACCOUNTS_MAX = 50  # a family sent by more accounts is common phrasing, not one actor's prompt set
FAMILY_REUSE_MAX = 4.0  # requests per distinct text: popular prompts recur, a split prompt set is sent once
EDGE_SHARE_MIN = 0.1  # of an account's distinct prompts: one chance match among a program's thousands is no link
COVERAGE_LIFT = 2.0  # a share must be this many times the other account's coverage of all rare families
BRIDGED_GROUP_MIN = 3  # a lone edge between groups this large is chance; a smaller side is an account joining

# Families: each LSH bucket of near-duplicates, and each exact text; rare ones are the evidence.
RARE_FAMILIES = f"""
CREATE OR REPLACE TEMP TABLE family_members AS
SELECT bucket AS family, prompt_hash FROM prompt_buckets
UNION ALL
SELECT -1 - (prompt_hash >> 2)::BIGINT, prompt_hash FROM prompt_texts;  -- exact texts: negative ids

CREATE OR REPLACE TEMP TABLE rare_holdings AS
WITH held AS (SELECT f.family, ap.account, ap.prompt_hash, ap.requests
              FROM family_members f JOIN account_prompts ap USING (prompt_hash)),
rare AS (SELECT family FROM held GROUP BY family
         HAVING count(DISTINCT account) BETWEEN 2 AND {FAMILY_ACCOUNTS_MAX}
            AND sum(requests) / count(DISTINCT prompt_hash) <= {FAMILY_REUSE_MAX})
SELECT DISTINCT family, account, prompt_hash,
       hash(regexp_replace(lower(trim(prompt)), '\\s+', ' ', 'g')) AS wording  -- "Hello" and "hello " are one text
FROM held JOIN rare USING (family) JOIN prompt_texts USING (prompt_hash);
"""

# Two accounts that sent different texts of shared rare families, in `EDGE_SHARE_MIN` of either one's distinct
# prompts and above `COVERAGE_LIFT` times the share the other's coverage of all rare families gives by chance.
EDGES = f"""
WITH distinct_prompts AS (SELECT account, count(*) AS prompts FROM account_prompts GROUP BY account),
coverage AS (SELECT account, count(DISTINCT family) / (SELECT count(DISTINCT family) FROM rare_holdings) AS coverage
             FROM rare_holdings GROUP BY account),
matched AS (
    SELECT x.account AS a, y.account AS b, count(DISTINCT x.prompt_hash) AS in_a, count(DISTINCT y.prompt_hash) AS in_b
    FROM rare_holdings x JOIN rare_holdings y
      ON x.family = y.family AND x.account < y.account AND x.wording <> y.wording
    GROUP BY ALL
)
SELECT a, b FROM matched
JOIN distinct_prompts pa ON pa.account = a JOIN distinct_prompts pb ON pb.account = b
JOIN coverage ca ON ca.account = a JOIN coverage cb ON cb.account = b
WHERE in_a >= greatest({EDGE_SHARE_MIN}, {COVERAGE_LIFT} * cb.coverage) * pa.prompts
   OR in_b >= greatest({EDGE_SHARE_MIN}, {COVERAGE_LIFT} * ca.coverage) * pb.prompts
"""

# Per group: what its members share, and how exclusive it is to them (the `membership` table names groups).
GROUP_EVIDENCE = f"""
WITH rows AS (
    SELECT m.grp, r.account, r.t, r.client_ip, r.user_agent, hash({LAST_USER_TURN}) AS prompt_hash,
           list_filter(list_zip(json_extract_string(r.messages, '$[*].role'),
                                json_extract_string(r.messages, '$[*].content')),
                       lambda turn: turn[1] = 'system')[1][2] AS system_prompt
    FROM requests r JOIN membership m USING (account)
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
address_users AS (SELECT client_ip, count(DISTINCT account) AS users FROM requests GROUP BY ALL),
address_sharing AS (
    SELECT a.grp, avg(CASE WHEN inside > 1 THEN 1.0 ELSE 0.0 END) AS shared, sum(inside) / sum(users) AS exclusive
    FROM (SELECT grp, client_ip, count(*) AS inside FROM addresses GROUP BY ALL) a
    JOIN address_users USING (client_ip) GROUP BY a.grp
),
agents AS (SELECT grp, count(DISTINCT user_agent) AS agents FROM rows GROUP BY grp)
SELECT r.grp,
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


def link_accounts(connection: duckdb.DuckDBPyConnection, signatures: Signatures | None = None) -> Linking:
    """Groups of linked accounts over the `requests` relation (`monitor.source`) and the tables
    `prompts.load_prompts` built from it, largest first; prompts signed through `signatures` (`load_buckets`)."""
    load_buckets(connection, signatures)
    connection.execute(RARE_FAMILIES)
    found = linked_groups(connection.execute(EDGES).fetchall())
    campaign_of = {account: f"group-{n + 1}" for n, members in enumerate(found) for account in members}
    if not campaign_of:
        return Linking({}, {})
    membership = pa.table({"account": list(campaign_of), "grp": list(campaign_of.values())})
    connection.register("membership", membership)
    cursor = connection.execute(GROUP_EVIDENCE)
    names = [column[0] for column in cursor.description]
    evidence = {row[0]: dict(zip(names[1:], map(float, row[1:]), strict=True)) for row in cursor.fetchall()}
    connection.unregister("membership")
    groups = {
        f"group-{n + 1}": Group(f"group-{n + 1}", tuple(members), e, _reasons(e))
        for n, members in enumerate(found)
        for e in [evidence[f"group-{n + 1}"]]
    }
    return Linking(groups, campaign_of)


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
