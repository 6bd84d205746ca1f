"""The monitor's scoring pipeline: features of every account and of every linked campaign taken as one account,
risk calibrated on benign traffic, reasons in words, an action. `assess` is what the CLI, replay and actions call.
With an embedding cache, what the prompts ask (`monitor.content`) counts beside how they are sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from typing import NamedTuple

import duckdb
import numpy as np

from alambic.monitor.content import CONTENT_FEATURES, Topics, account_content, account_topics
from alambic.monitor.embeddings import EmbeddingCache
from alambic.monitor.features import account_features
from alambic.monitor.linking import Linking, link_accounts, phrasing_in_families
from alambic.monitor.near_duplicates import Signatures
from alambic.monitor.risk import MEMBER_COUNTS, Assessment, Reference, RiskOverSteps, action_for
from alambic.monitor.tables import load_tables
from alambic.monitor.verdict import ACTIONS, Verdict

CAMPAIGN_SCHEMA = "campaign_view"
# A campaign's risk is calibrated against single benign accounts and the few benign groups a reference log holds (an
# organisation's keys, a classroom): alone it flags the members for review; throttling or blocking needs the
# account's own risk.
CAMPAIGN_ACTION_CAP = "flag"


def assess(
    connection: duckdb.DuckDBPyConnection,
    reference: Reference | None = None,
    content: EmbeddingCache | None = None,
    signatures: Signatures | None = None,
    over_steps: RiskOverSteps | None = None,
) -> list[Verdict]:
    """A verdict for every account of the `requests` relation (`monitor.source`), in account order.

    `reference` holds the benign accounts that calibrate risk (`Reference` over a benign-only log's `benign_units`,
    taken with content if these are). By default it is fitted on this log's own accounts, taken
    as mostly benign: risk then says how rare an account is among the log's accounts of its size (rank
    statistics, so a few campaigns move it little; each account is compared with the others, never with itself).
    `signatures` keeps the prompts' MinHash signatures from one scoring of a growing log to the next (replay), and
    `over_steps` calibrates its risk over a benign replay's steps rather than per step.
    """
    load_tables(connection)  # once: every pass reads them
    rows, topics = account_rows(connection, content)
    reference = reference or Reference(list(rows.values()), list(rows))
    linking = link_accounts(connection, signatures, reference.phrasing)
    return verdicts(connection, rows, reference, linking, content, topics, over_steps)


class BenignUnits(NamedTuple):
    """What a benign log gives a `Reference`."""

    rows: list[dict[str, float | None]]  # its accounts' features
    groups: list[dict[str, float | None]]  # its linked groups' features, each group taken as one account
    phrasing: np.ndarray  # its common phrasing (`linking.common_phrasing`)
    accounts: list[str]  # the ids of `rows`, in their order


def benign_units(connection: duckdb.DuckDBPyConnection, content: EmbeddingCache | None = None) -> BenignUnits:
    """What a benign log's `requests` gives a `Reference`: its accounts' features, its linked groups' features (the
    organisations, classrooms and platforms that benign traffic holds), and the phrasing its crowds share."""
    load_tables(connection)
    rows, topics = account_rows(connection, content)
    signatures = Signatures()
    groups = campaign_features(connection, link_accounts(connection, signatures).campaign_of, content, topics)
    # the families linking built hold its common phrasing too: read there rather than banded again
    phrasing = phrasing_in_families(connection, signatures)
    return BenignUnits(list(rows.values()), list(groups.values()), phrasing, list(rows))


def feature_rows(
    connection: duckdb.DuckDBPyConnection,
    content: EmbeddingCache | None = None,
    topics: Topics | None = None,
) -> dict[str, dict[str, float | None]]:
    """Each account's features: the SQL pass's and, given an embedding cache, its content signals (None for an
    account with no prompt text) on `topics` (by default, those of these accounts)."""
    load_tables(connection)
    return account_rows(connection, content, topics)[0]


def account_rows(
    connection: duckdb.DuckDBPyConnection,
    content: EmbeddingCache | None = None,
    topics: Topics | None = None,
) -> tuple[dict[str, dict[str, float | None]], Topics | None]:
    """`feature_rows` from the tables built already (`tables.load_tables`), and the topics its content
    signals were read on (fitted in the same pass unless given; None without content or prompt text), which a
    campaign, taken as one account, is read on too."""
    rows = {f.account: f.values for f in account_features(connection, shaped=True)}
    if content is None:
        return rows, topics
    found = account_content(connection, content, topics=topics)
    for account, values in rows.items():
        values.update(found.features.get(account, dict.fromkeys(CONTENT_FEATURES)))
    return rows, found.topics


def verdicts(
    connection: duckdb.DuckDBPyConnection,
    rows: Mapping[str, dict[str, float | None]],
    reference: Reference,
    linking: Linking,
    content: EmbeddingCache | None = None,
    topics: Topics | None = None,
    over_steps: RiskOverSteps | None = None,
) -> list[Verdict]:
    """Verdicts from account features and a linking: each campaign is scored as if one account had sent all its
    requests, and a member's risk is the larger of its own and its campaign's (with why they are linked), both
    taken `over_steps` when given. The tables are those of `requests` (`tables.load_tables`)."""
    campaign_of = linking.campaign_of
    campaigns = campaign_features(connection, campaign_of, content, topics)
    members = Counter(campaign_of.values())
    judged = {c: reference.assess(values, leave_out=MEMBER_COUNTS) for c, values in campaigns.items()}
    risk_of = over_steps if over_steps is not None else (lambda risk: risk)
    out = []
    for account, values in sorted(rows.items()):
        own = reference.assess(values, account)
        campaign = campaign_of.get(account)
        risk = risk_of(own.risk)
        action = action_for(risk, int(values["requests"]))
        reasons = own.reasons(len(reference), acted=action != "none")
        if campaign is not None and judged[campaign].risk > own.risk:
            group: Assessment = judged[campaign]
            prefix = f"its campaign of {members[campaign]} linked accounts, as one: "
            linked = linking.groups[campaign].reasons[:1] if campaign in linking.groups else ()
            risk = risk_of(group.risk)
            group_action = action_for(risk, int(campaigns[campaign]["requests"]))
            reasons = group.reasons(len(reference), group_action != "none", prefix) + linked + reasons
            action = max(action, min(group_action, CAMPAIGN_ACTION_CAP, key=ACTIONS.index), key=ACTIONS.index)
        out.append(Verdict(account, risk, reasons, campaign, action))
    return out


def campaign_features(
    connection: duckdb.DuckDBPyConnection,
    campaign_of: Mapping[str, str],
    content: EmbeddingCache | None = None,
    topics: Topics | None = None,
) -> dict[str, dict[str, float | None]]:
    """The features of each campaign, its members' requests relabelled as one account's (the same passes). Its
    topics are those of the accounts (`topics`, or fitted here on them), so that a campaign covers as many as its
    members do. Its rows and prompts are the accounts' (the tables `tables.load_tables` built), relabelled."""
    if not campaign_of:
        return {}
    if content is not None and topics is None:
        topics = account_topics(connection, content)
    connection.execute("CREATE OR REPLACE TEMP TABLE campaign_members (account VARCHAR PRIMARY KEY, campaign VARCHAR)")
    connection.executemany("INSERT INTO campaign_members VALUES (?, ?)", list(campaign_of.items()))
    connection.execute(f"CREATE SCHEMA IF NOT EXISTS {CAMPAIGN_SCHEMA}")
    connection.execute(f"""
        CREATE OR REPLACE VIEW {CAMPAIGN_SCHEMA}.shaped AS
        SELECT r.* REPLACE (coalesce(m.campaign, r.account) AS account)
        FROM main.shaped r LEFT JOIN campaign_members m ON r.account = m.account
    """)
    if content is not None:
        connection.execute(f"""
            CREATE OR REPLACE VIEW {CAMPAIGN_SCHEMA}.account_prompts AS
            SELECT coalesce(m.campaign, p.account) AS account, p.prompt_hash, sum(p.requests) AS requests,
                   min(p.first_t) AS first_t
            FROM main.account_prompts p LEFT JOIN campaign_members m ON p.account = m.account
            GROUP BY ALL
        """)
    connection.execute(f"SET search_path = '{CAMPAIGN_SCHEMA},main'")
    try:
        grouped = account_rows(connection, content, topics)[0]
    finally:
        connection.execute("RESET search_path")
    ids = set(campaign_of.values())
    return {c: values for c, values in grouped.items() if c in ids}
