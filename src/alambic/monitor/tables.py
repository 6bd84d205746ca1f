"""The tables every pass of the monitor reads, built from the `requests` relation (`monitor.source`): each request
with an account shaped once (`shaped`: the feature pass's columns, `features.SHAPED_COLUMNS`, and its prompt's hash
and system prompt's digest), each account's distinct prompts (`account_prompts(account, prompt_hash, requests,
first_t)`) and their texts (`prompt_texts(prompt_hash, prompt, wording)`, the wording a digest of the text that
ignores case and spacing: "Hello" and "hello " are one text).

Reading a request's JSON is the costly part of a scoring, so it is done once per request: `load_tables` builds the
tables from `requests` whole (unless they were built from the view as it is defined now: one log scored twice, a
benign log calibrated and scored), and `WindowTables` keeps them for a window of a growing log that moves with a
replay's or a follower's steps, shaping only the rows that arrived and dropping those the window left behind. They
live in the schema first on the search path and not as temporary tables, so that a schema ahead of it can hold its
own `shaped` and `account_prompts` (a campaign's, read from these) where a temporary table would shadow it.
"""

from __future__ import annotations

import duckdb

from alambic.monitor.features import shape

# The last user turn of a chat request (a completion's prompt otherwise): what a person or program asked.
LAST_USER_TURN = """coalesce(
    list_filter(list_zip(json_extract_string(messages, '$[*].role'), json_extract_string(messages, '$[*].content')),
                lambda turn: turn[1] = 'user')[-1][2],
    json_extract_string(prompt, '$'), '')"""
SYSTEM_PROMPT = """list_filter(list_zip(json_extract_string(messages, '$[*].role'),
                                     json_extract_string(messages, '$[*].content')),
                            lambda turn: turn[1] = 'system')[1][2]"""
# The texts read beside the feature pass's columns, each once: `shaped` keeps their digests (md5 first: DuckDB's hash
# of text collides on templates), `prompt_texts` the prompt's text.
TEXT_COLUMNS = f""",
    {LAST_USER_TURN} AS asked,
    {SYSTEM_PROMPT} AS system_text"""
DIGESTS = """hash(md5_number(asked)) AS prompt_hash,
    CASE WHEN system_text IS NOT NULL THEN hash(md5_number(system_text)) END AS system_prompt"""
SOURCE_DEFINITION = "SELECT sql FROM duckdb_views() WHERE view_name = 'requests' AND NOT internal"


def load_tables(connection: duckdb.DuckDBPyConnection) -> None:
    """Builds the tables from `requests` as it is defined now, unless they were built from that definition."""
    definition = _requests_definition(connection)
    if definition is None or _built_from(connection) != definition:
        _append(connection, "requests", fresh=True)
        _summarise(connection, definition)


class WindowTables:
    """The tables for the rows of `log` (a relation that gains rows only after the last `until` it was advanced to,
    or is `reset`) with `since < t <= until`, for a window that moves forward: each `advance` shapes the rows after
    the last `until` and drops those at or before `since`."""

    def __init__(self, log: str = "log") -> None:
        self.log = log
        self.since: int | None = None  # the window the tables hold, in microseconds since the epoch (None: all)
        self.until: int | None = None  # None: no tables yet

    def reset(self) -> None:
        """Build the tables again at the next `advance` (the log gained rows at or before the last `until`)."""
        self.until = None

    def advance(self, connection: duckdb.DuckDBPyConnection, since: int | None, until: int) -> None:
        """The tables of the rows with `since < t <= until` (None: from the first). `requests`, defined by the caller
        as those rows, is marked as what they were built from, so that `load_tables` keeps them."""
        moved_back = self.until is not None and (until < self.until or (self.since or 0) > (since or 0))
        fresh = self.until is None or moved_back
        if not fresh and since is not None and since != self.since:
            connection.execute(f"DELETE FROM main.shaped WHERE epoch_us(t) <= {since}")
        after = since if fresh else self.until
        lower = f" AND epoch_us(t) > {after}" if after is not None else ""
        _append(connection, f"(SELECT * FROM {self.log} WHERE epoch_us(t) <= {until}{lower})", fresh=fresh)
        self.since, self.until = since, until
        _summarise(connection, _requests_definition(connection))


def _append(connection: duckdb.DuckDBPyConnection, source: str, *, fresh: bool) -> None:
    """Shapes the rows of `source` (a relation, or a query in parentheses) into `shaped` (a new one if `fresh`), and
    adds the texts `prompt_texts` lacks."""
    connection.execute(f"""
        CREATE OR REPLACE TEMP TABLE arrived_rows AS
        SELECT * EXCLUDE (system_text), {DIGESTS} FROM ({shape(source, TEXT_COLUMNS)})
    """)
    if fresh:
        connection.execute("CREATE OR REPLACE TABLE main.shaped AS SELECT * EXCLUDE (asked) FROM arrived_rows")
        connection.execute(
            "CREATE OR REPLACE TABLE main.prompt_texts (prompt_hash UBIGINT, prompt VARCHAR, wording UBIGINT)"
        )
    else:
        connection.execute("INSERT INTO main.shaped SELECT * EXCLUDE (asked) FROM arrived_rows")
    connection.execute("""
        INSERT INTO main.prompt_texts
        SELECT prompt_hash, asked, hash(md5_number(regexp_replace(lower(trim(asked)), '\\s+', ' ', 'g')))
        FROM (SELECT DISTINCT prompt_hash, asked FROM arrived_rows)
        WHERE prompt_hash NOT IN (SELECT prompt_hash FROM main.prompt_texts)
    """)
    connection.execute("DROP TABLE arrived_rows")


def _summarise(connection: duckdb.DuckDBPyConnection, definition: str | None) -> None:
    """`account_prompts` from `shaped`, `prompt_texts` less the texts no row of it asks, and what they were built
    from."""
    connection.execute("""
        CREATE OR REPLACE TABLE main.account_prompts AS
        SELECT account, prompt_hash, count(*) AS requests, min(t) AS first_t FROM main.shaped GROUP BY ALL
    """)
    connection.execute("DELETE FROM main.prompt_texts WHERE prompt_hash NOT IN (SELECT prompt_hash FROM main.shaped)")
    connection.execute("CREATE OR REPLACE TABLE main.tables_source AS SELECT ?::VARCHAR AS definition", [definition])


def _requests_definition(connection: duckdb.DuckDBPyConnection) -> str | None:
    found = connection.execute(SOURCE_DEFINITION).fetchall()
    return found[0][0] if found else None


def _built_from(connection: duckdb.DuckDBPyConnection) -> str | None:
    try:
        return connection.execute("SELECT definition FROM main.tables_source").fetchall()[0][0]
    except duckdb.CatalogException:
        return None
