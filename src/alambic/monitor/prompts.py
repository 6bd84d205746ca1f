"""Each account's distinct prompts (the last user turn of a request), as DuckDB tables the content and
linking passes share: `prompt_texts(prompt_hash, prompt)` and `account_prompts(account, prompt_hash, ...)`.

They are built once per scoring (reading every request's JSON is the costly part) by its entry points
(`assess.assess`, `assess.feature_rows`); the passes that read them expect them built, and whoever redefines
`requests` (replay) scores again through an entry point. They live in the schema first on the search path and
not as temporary tables, so that a schema ahead of it can hold its own `account_prompts` (a campaign's, read from
these) where a temporary table would shadow it."""

from __future__ import annotations

import duckdb

# The last user turn of a chat request (a completion's prompt otherwise): what a person or program asked.
LAST_USER_TURN = """coalesce(
    list_filter(list_zip(json_extract_string(messages, '$[*].role'), json_extract_string(messages, '$[*].content')),
                lambda turn: turn[1] = 'user')[-1][2],
    json_extract_string(prompt, '$'), '')"""

ACCOUNT_PROMPTS = f"""
CREATE OR REPLACE TEMP TABLE request_prompts AS
SELECT account, t, {LAST_USER_TURN} AS prompt FROM requests WHERE account IS NOT NULL;

CREATE OR REPLACE TABLE prompt_texts AS
SELECT DISTINCT hash(prompt) AS prompt_hash, prompt FROM request_prompts;

CREATE OR REPLACE TABLE account_prompts AS
SELECT account, hash(prompt) AS prompt_hash, count(*) AS requests, min(t) AS first_t
FROM request_prompts GROUP BY ALL;

DROP TABLE request_prompts;
"""


def load_prompts(connection: duckdb.DuckDBPyConnection) -> None:
    """Builds `prompt_texts` and `account_prompts` from `requests` as it is now (replay redefines it)."""
    connection.execute(ACCOUNT_PROMPTS)
