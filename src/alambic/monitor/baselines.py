"""What a provider has without alambic, scored on the same traffic: a volume score and per-account rules.

The rules are the usual ones (volume, rate, single-turn share, long answers, logprobs or `n`, prompt
diversity) with thresholds fixed in advance, never tuned on campaign labels. They are the bar the monitor
must clear.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import duckdb

from alambic.monitor.verdict import Verdict

ACCOUNT_SUMMARY = """
WITH shaped AS (
    SELECT account, t,
           json_extract_string(messages, '$[*].role') AS roles,
           coalesce(json_extract_string(messages, '$[-1].content'), CAST(prompt AS VARCHAR)) AS last_prompt,
           coalesce(TRY_CAST(params->>'max_tokens' AS BIGINT), TRY_CAST(params->>'max_completion_tokens' AS BIGINT))
               AS max_tokens,
           params->>'logprobs' = 'true' OR coalesce(TRY_CAST(params->>'n' AS INTEGER), 1) > 1 AS asks_logprobs_or_n
    FROM requests
    WHERE account IS NOT NULL
),
hourly AS (
    SELECT account, max(per_hour) AS peak_per_hour
    FROM (SELECT account, count(*) AS per_hour FROM shaped GROUP BY account, date_trunc('hour', t))
    GROUP BY account
)
SELECT account,
       count(*) AS requests,
       count(DISTINCT date_trunc('day', t)) AS active_days,
       any_value(peak_per_hour) AS peak_per_hour,
       avg(CASE WHEN len(list_filter(roles, lambda r: r = 'user')) <= 1 THEN 1 ELSE 0 END) AS single_turn_share,
       avg(CASE WHEN coalesce(max_tokens, 1000000) >= 1000 THEN 1 ELSE 0 END) AS long_answer_share,
       avg(CASE WHEN asks_logprobs_or_n THEN 1 ELSE 0 END) AS logprobs_or_n_share,
       count(DISTINCT hash(last_prompt)) / count(*) AS prompt_diversity
FROM shaped JOIN hourly USING (account)
GROUP BY account
ORDER BY account
"""


@dataclass(frozen=True)
class AccountSummary:
    account: str
    requests: int
    active_days: int
    peak_per_hour: int
    single_turn_share: float
    long_answer_share: float
    logprobs_or_n_share: float
    prompt_diversity: float


@dataclass(frozen=True)
class Rule:
    name: str
    description: str
    fires: Callable[[AccountSummary], bool]


RULES = (
    Rule("volume", "more than 2,000 requests per active day", lambda a: a.requests / max(1, a.active_days) > 2000),
    Rule("rate", "more than 500 requests in one hour", lambda a: a.peak_per_hour > 500),
    Rule(
        "diverse-single-turn",
        "over 200 requests, 95% single-turn, 90% distinct prompts",
        lambda a: a.requests > 200 and a.single_turn_share > 0.95 and a.prompt_diversity > 0.9,
    ),
    Rule(
        "long-answers",
        "over 100 requests, most asking for 1,000+ tokens or no limit",
        lambda a: a.requests > 100 and a.long_answer_share > 0.5,
    ),
    Rule(
        "logprobs-or-n",
        "over 100 requests, most asking for logprobs or several samples",
        lambda a: a.requests > 100 and a.logprobs_or_n_share > 0.5,
    ),
)


def account_summaries(connection: duckdb.DuckDBPyConnection) -> list[AccountSummary]:
    """One summary per account of the `requests` relation (see `monitor.source`)."""
    return [AccountSummary(*row) for row in connection.execute(ACCOUNT_SUMMARY).fetchall()]


def volume_scores(summaries: list[AccountSummary]) -> dict[str, float]:
    return {a.account: float(a.requests) for a in summaries}


def rule_scores(summaries: list[AccountSummary]) -> dict[str, float]:
    """Rules fired, with volume breaking ties (below one rule's worth)."""
    most = max((a.requests for a in summaries), default=0) + 1
    return {a.account: sum(rule.fires(a) for rule in RULES) + a.requests / most for a in summaries}


def rule_verdicts(connection: duckdb.DuckDBPyConnection) -> list[Verdict]:
    """The rules as a monitor (what `replay.SteppedMonitor` steps): an account is flagged when any rule fires on
    it, with the rules that fired as its reasons."""
    verdicts = []
    for summary in account_summaries(connection):
        fired = tuple(rule.description for rule in RULES if rule.fires(summary))
        verdicts.append(Verdict(summary.account, float(bool(fired)), fired, None, "flag" if fired else "none"))
    return verdicts


BASELINES = {"volume": volume_scores, "rules": rule_scores}
