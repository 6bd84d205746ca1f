"""Per-account features of the request log, in one SQL pass over the `requests` relation (`monitor.source`).

Written once, in DuckDB's SQL, so the same definitions can be transpiled (SQLGlot) to run where the log
outgrows one machine. Each feature is a column; `FEATURES` says in words what each measures.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

FEATURES = {
    "requests": "requests sent",
    "active_days": "days with at least one request",
    "requests_per_active_day": "requests per day of activity",
    "peak_per_hour": "most requests in one clock hour",
    "hours_of_day": "distinct hours of the day with activity (0-24)",
    "gap_cv": "coefficient of variation of the gaps between requests (1 for Poisson, 0 for a metronome)",
    "burstiness": "(sd - mean) / (sd + mean) of the gaps: -1 regular, 0 random, 1 bursty",
    "single_turn_share": "requests with one user turn",
    "system_prompt_share": "requests with a system prompt",
    "prompt_diversity": "distinct prompts (last user turn) per request",
    "templated_share": "requests whose first 48 characters start at least 5 of the account's requests",
    "shared_prompt_share": "requests whose prompt another account also sent",
    "reasoning_cue_share": "prompts asking for step-by-step reasoning",
    "long_answer_share": "requests asking for 1,000+ tokens, or setting no limit",
    "logprobs_share": "requests asking for logprobs",
    "multi_sample_share": "requests asking for n > 1",
    "mean_temperature": "mean temperature asked for (1 when not set)",
    "answer_prompt_ratio": "completion tokens per prompt token (of one sample, when a request asks for n)",
    "answer_tokens": "mean completion tokens per request (of one sample, when it asks for n)",
    "distinct_addresses": "client addresses used",
    "distinct_user_agents": "user agents used",
    "newest_model_share": "requests to the newest model (released, not first seen, while the log was kept)",
    "hours_to_newest_model": "hours from that model's first request (anyone's) to the account's first",
}
# A model counts as released while the log was kept when its first request comes this long after the log's first:
# in a log known for hours, every model in use appears in its first minutes, and the last of them by chance.
RELEASED_AFTER_HOURS = 24

REASONING_CUES = (  # matched ignoring case: (?i) costs less than lowering the prompt first, on DuckDB and Spark
    "(?i)step.by.step|chain.of.thought|your (full |whole )?reasoning|reason(ing)? (carefully|out loud)|each step"
)

# One row per request, read by every part of the pass (so DuckDB keeps it for the whole pass): its text is read or
# digested here, so that a row costs a few fixed-width values, and what a feature only tests is a boolean. A digest is
# md5 folded to 64 bits (DuckDB's own hash of text collides on templated prompts); only equality is compared.
SHAPED_COLUMNS = f"""
    account, t, model,
    CASE WHEN client_ip IS NOT NULL THEN hash(md5_number(client_ip)) END AS client_ip,
    CASE WHEN user_agent IS NOT NULL THEN hash(md5_number(user_agent)) END AS user_agent,
    hash(md5_number(last_prompt)) AS last_prompt,
    hash(md5_number(left(last_prompt, 48))) AS prefix,
    regexp_matches(last_prompt, '{REASONING_CUES}') AS reasoning_cue,
    coalesce(array_length(list_filter(turns, lambda m: m.role = 'user')), 1) <= 1 AS single_turn,
    coalesce(list_contains(list_transform(turns, lambda m: m.role), 'system'), false) AS has_system,
    coalesce(prompt_tokens, 0) AS prompt_tokens,
    -- one sample's: the log's completion tokens are all `n` samples' together, as OpenAI's usage counts them; to the
    -- millionth, in DECIMAL, so that sums are exact whatever the order
    CAST(coalesce(completion_tokens, 0) / greatest(1, samples) AS DECIMAL(18, 6)) AS sample_tokens,
    coalesce(TRY_CAST(params->>'max_tokens' AS BIGINT), TRY_CAST(params->>'max_completion_tokens' AS BIGINT),
             1000000) >= 1000 AS long_answer,
    -- to the millionth, in DECIMAL: its sum is exact, whatever the order
    CAST(coalesce(TRY_CAST(params->>'temperature' AS DOUBLE), 1.0) AS DECIMAL(18, 6)) AS temperature,
    samples > 1 AS multi_sample,
    coalesce(params->>'logprobs' = 'true', false) AS logprobs"""


def shape(source: str = "requests", extra: str = "") -> str:
    """The query shaping each request of `source` that has an account (`SHAPED_COLUMNS`, then `extra`'s columns)."""
    return f"""SELECT {SHAPED_COLUMNS}{extra}
    FROM (SELECT *, coalesce(turns[array_length(turns)].content, prompt_text, '') AS last_prompt,
                 coalesce(TRY_CAST(params->>'n' AS INTEGER), 1) AS samples  -- read once: two columns use it
          FROM {source}
          WHERE account IS NOT NULL) AS request"""


# The pass over the shaped rows (a relation `shaped` of at least `SHAPED_COLUMNS`).
OVER_SHAPED = f"""
-- Sums of whole microseconds, exact (sum(g^2) <= (sum g)^2 <= the log's span^2 fits DECIMAL(38) for decades):
-- a float sum adds in whatever order the threads meet, and the same log gave features a last bit apart.
timing AS (
    SELECT account, CAST(sum(gap) AS DOUBLE) / count(*) / 1e6 AS mean_gap,
           sqrt(CAST(count(*) * sum(gap * gap) - sum(gap) * sum(gap) AS DOUBLE)
                / nullif(count(*) * (count(*) - 1), 0)) / 1e6 AS sd_gap
    -- only the columns it orders: the window keeps every column it is given for the whole pass
    FROM (SELECT account, CAST(round((ts - lag(ts) OVER (PARTITION BY account ORDER BY ts)) * 1e6) AS DECIMAL(38, 0))
                     AS gap
          FROM (SELECT account, epoch(t) AS ts FROM shaped) AS times) AS gaps
    WHERE gap IS NOT NULL
    GROUP BY account
),
-- Each DISTINCT count reads groups (an account's hours, prompts, clients): DuckDB keeps the input of DISTINCT
-- aggregates whole, and over the rows that would be a second copy of the log
hourly AS (
    SELECT account, max(per_hour) AS peak_per_hour, count(DISTINCT hour_of_day) AS hours_of_day,
           count(DISTINCT day) AS active_days
    FROM (SELECT account, hour(t) AS hour_of_day, date_trunc('day', t) AS day, count(*) AS per_hour FROM shaped
          GROUP BY account, date_trunc('hour', t), hour(t), date_trunc('day', t)) AS hours
    GROUP BY account
),
pairs AS (SELECT account, last_prompt, count(*) AS uses FROM shaped GROUP BY account, last_prompt),
shared AS (SELECT last_prompt FROM pairs GROUP BY last_prompt HAVING count(*) > 1),  -- sent by 2+ accounts
prompts AS (  -- joined per (account, prompt) pair, never per row
    SELECT pairs.account, count(*) AS distinct_prompts,
           sum(CASE WHEN shared.last_prompt IS NULL THEN 0 ELSE pairs.uses END) AS shared_requests
    FROM pairs LEFT JOIN shared ON shared.last_prompt = pairs.last_prompt
    GROUP BY pairs.account
),
clients AS (
    SELECT account, count(DISTINCT client_ip) AS distinct_addresses, count(DISTINCT user_agent) AS distinct_user_agents
    FROM (SELECT account, client_ip, user_agent FROM shaped GROUP BY account, client_ip, user_agent) AS used
    GROUP BY account
),
prefixes AS (SELECT account, prefix, count(*) AS uses FROM shaped GROUP BY account, prefix),
templated AS (
    SELECT account, sum(CASE WHEN uses >= 5 THEN uses ELSE 0 END) AS templated FROM prefixes GROUP BY account
),
newest AS (  -- a model launched while the log was kept; none (NULL features) in a log younger than that
    SELECT model, min(t) AS released FROM shaped GROUP BY model
    HAVING epoch(min(t)) >= (SELECT epoch(min(t)) FROM shaped) + {RELEASED_AFTER_HOURS * 3600}
    ORDER BY released DESC, model LIMIT 1
),
per_account AS (
    SELECT s.account,
           count(*) AS requests,
           avg(CASE WHEN s.single_turn THEN 1 ELSE 0 END) AS single_turn_share,
           avg(CASE WHEN s.has_system THEN 1 ELSE 0 END) AS system_prompt_share,
           avg(CASE WHEN s.reasoning_cue THEN 1 ELSE 0 END) AS reasoning_cue_share,
           avg(CASE WHEN s.long_answer THEN 1 ELSE 0 END) AS long_answer_share,
           avg(CASE WHEN s.logprobs THEN 1 ELSE 0 END) AS logprobs_share,
           avg(CASE WHEN s.multi_sample THEN 1 ELSE 0 END) AS multi_sample_share,
           CAST(avg(s.temperature) AS DOUBLE) AS mean_temperature,
           CAST(sum(s.sample_tokens) AS DOUBLE) / greatest(1, sum(s.prompt_tokens)) AS answer_prompt_ratio,
           CAST(avg(s.sample_tokens) AS DOUBLE) AS answer_tokens,
           avg(CASE WHEN newest.model IS NULL THEN NULL WHEN s.model = newest.model THEN 1 ELSE 0 END)
               AS newest_model_share,
           (epoch(min(CASE WHEN s.model = newest.model THEN s.t END)) - epoch(any_value(newest.released))) / 3600
               AS hours_to_newest_model
    FROM shaped s
    LEFT JOIN newest ON true
    GROUP BY s.account
)
SELECT p.account,
       p.requests,
       hourly.active_days,
       p.requests / hourly.active_days AS requests_per_active_day,
       hourly.peak_per_hour,
       hourly.hours_of_day,
       coalesce(timing.sd_gap / nullif(timing.mean_gap, 0), 0) AS gap_cv,
       coalesce((timing.sd_gap - timing.mean_gap) / nullif(timing.sd_gap + timing.mean_gap, 0), 0) AS burstiness,
       p.single_turn_share, p.system_prompt_share,
       prompts.distinct_prompts / p.requests AS prompt_diversity,
       coalesce(templated.templated, 0) / p.requests AS templated_share,
       prompts.shared_requests / p.requests AS shared_prompt_share,
       p.reasoning_cue_share, p.long_answer_share, p.logprobs_share,
       p.multi_sample_share, p.mean_temperature, p.answer_prompt_ratio, p.answer_tokens,
       clients.distinct_addresses, clients.distinct_user_agents, p.newest_model_share, p.hours_to_newest_model
FROM per_account p
JOIN hourly USING (account)
JOIN prompts USING (account)
JOIN clients USING (account)
LEFT JOIN timing USING (account)
LEFT JOIN templated USING (account)
ORDER BY p.account
"""


ACCOUNT_FEATURES = f"WITH shaped AS ({shape()}),\n{OVER_SHAPED}"  # one pass over `requests`, on any engine


@dataclass(frozen=True)
class AccountFeatures:
    account: str
    values: dict[str, float | None]


def account_features(connection: duckdb.DuckDBPyConnection, *, shaped: bool = False) -> list[AccountFeatures]:
    """Every account's features, in account order: in one pass over `requests`, or with `shaped` over the table
    `shaped` whose rows are shaped already (`monitor.tables`)."""
    cursor = connection.execute(f"WITH {OVER_SHAPED}" if shaped else ACCOUNT_FEATURES)
    names = [column[0] for column in cursor.description]
    return [AccountFeatures(row[0], dict(zip(names[1:], row[1:], strict=True))) for row in cursor.fetchall()]
