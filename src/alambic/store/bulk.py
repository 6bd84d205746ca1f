"""Bulk writes into the request log: one statement a batch whatever its size, in the caller's transaction.

SQLite takes the batch in one executemany of plain values; PostgreSQL by COPY. A batch's ids and account
names travel as one array (JSON text for SQLite), never as one bound parameter each.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy import Connection, Engine

from alambic.errors import InvalidRequestError
from alambic.store.schema import Account, RequestLog, utc_now

REQUESTS, ACCOUNTS = RequestLog.__tablename__, Account.__tablename__
SQLITE_TIME = "%Y-%m-%d %H:%M:%S.%f"  # how SQLAlchemy writes a datetime into SQLite
IMPORT_CHECKPOINT_BYTES = 256 << 20  # of log written ahead between checkpoints (a longer log slows every read)
# SQLite's page cache while importing: a batch's pages (~10 MiB) and the indexes' hot pages stay in it, instead of
# spilling to the log written ahead mid-transaction and being read back (2 MiB by default; ~13% less CPU a row).
IMPORT_CACHE_KIB = 65_536


@contextmanager
def import_connection(engine: Engine) -> Iterator[Connection]:
    """One connection for a whole import, each batch its own transaction on it. On SQLite the log written ahead
    is checkpointed into the database (which syncs it) every `IMPORT_CHECKPOINT_BYTES` instead of every 1,000
    pages, then once at the end: commits stay as safe as the store's others (WAL, synchronous=NORMAL: a
    crash of the process or the machine loses at most the last batches, never the database's consistency).
    The page cache is `IMPORT_CACHE_KIB` meanwhile; both settings are the connection's own, and restored.
    """
    with engine.connect() as connection:
        sqlite = _dialect(connection) == "sqlite"
        if sqlite:
            default = connection.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar()
            cache = connection.exec_driver_sql("PRAGMA cache_size").scalar()
            page = connection.exec_driver_sql("PRAGMA page_size").scalar()
            connection.exec_driver_sql(f"PRAGMA wal_autocheckpoint={IMPORT_CHECKPOINT_BYTES // page}")
            connection.exec_driver_sql(f"PRAGMA cache_size=-{IMPORT_CACHE_KIB}")
            connection.commit()  # SQLAlchemy began a transaction for the pragma; each batch begins its own
        try:
            yield connection
        finally:
            if sqlite:
                connection.exec_driver_sql(f"PRAGMA wal_autocheckpoint={default}")
                connection.exec_driver_sql(f"PRAGMA cache_size={cache}")
                connection.exec_driver_sql("PRAGMA wal_checkpoint(PASSIVE)")
                connection.commit()


def known_requests(connection: Connection, request_ids: list[str]) -> dict[str, str | None]:
    """The ids among `request_ids` that the log has, each with the import run that wrote it (None: the gateway)."""
    if _dialect(connection) == "sqlite":
        query = f"SELECT request_id, imported_in FROM {REQUESTS} WHERE request_id IN (SELECT value FROM json_each(?))"
        rows = connection.exec_driver_sql(query, (json.dumps(request_ids),))
    else:
        query = f"SELECT request_id, imported_in FROM {REQUESTS} WHERE request_id = ANY(%s)"
        rows = connection.exec_driver_sql(query, (request_ids,))
    return dict(rows.all())


def account_ids(connection: Connection, names: list[str]) -> tuple[dict[str, int], int]:
    """The ids of the accounts named, created (without keys) where the store has none; and how many were."""
    if _dialect(connection) == "sqlite":
        given, names_in = (utc_now().strftime(SQLITE_TIME), json.dumps(names)), "SELECT value FROM json_each(?)"
        created = connection.exec_driver_sql(
            f"INSERT INTO {ACCOUNTS} (name, policy, created_at) SELECT value, 'allow', ? FROM json_each(?) "
            f"WHERE value NOT IN (SELECT name FROM {ACCOUNTS})",
            given,
        ).rowcount
        rows = connection.exec_driver_sql(f"SELECT name, id FROM {ACCOUNTS} WHERE name IN ({names_in})", given[1:])
    else:
        created = connection.exec_driver_sql(
            f"INSERT INTO {ACCOUNTS} (name, policy, created_at) SELECT unnest(%s::text[]), 'allow', now() "
            "ON CONFLICT (name) DO NOTHING",
            (names,),
        ).rowcount
        rows = connection.exec_driver_sql(f"SELECT name, id FROM {ACCOUNTS} WHERE name = ANY(%s)", (names,))
    return dict(rows.all()), created


def insert_requests(connection: Connection, columns: dict[str, list]) -> None:
    """Insert a batch of request-log rows: lists of values by column, as the driver binds them with no type of
    SQLAlchemy's between: times as UTC text as SQLAlchemy writes it into SQLite (`%Y-%m-%d %H:%M:%S.%f`, read as
    UTC by PostgreSQL here), booleans as 0 and 1 (an int binds without the SQLite driver's slow path for other
    types), JSON as its text. A column null in every row is left to its default (NULL): most of a log's optional
    columns are, and SQLite's driver takes ~0.4 us to bind each None."""
    rows = len(next(iter(columns.values())))
    names = [  # the first row's value settles most columns without a look at the others
        name
        for name, values in columns.items()
        if values[0] is not None or values.count(None) < rows or _has_default(name)
    ]
    values = zip(*(columns[name] for name in names), strict=True)
    if _dialect(connection) == "sqlite":
        placeholders = ", ".join("?" * len(names))
        cursor = connection.connection.cursor()
        cursor.executemany(f"INSERT INTO {REQUESTS} ({', '.join(names)}) VALUES ({placeholders})", values)
        return
    cursor = connection.connection.driver_connection.cursor()
    with cursor:
        cursor.execute("SET LOCAL TIME ZONE 'UTC'")  # the times' text is UTC; the transaction's end resets it
        with cursor.copy(f"COPY {REQUESTS} ({', '.join(names)}) FROM STDIN") as copy:
            for row in values:
                copy.write_row(row)


def _has_default(column: str) -> bool:
    return RequestLog.__table__.columns[column].server_default is not None


def _dialect(connection: Connection) -> str:
    name = connection.dialect.name
    if name == "postgresql" and connection.dialect.driver != "psycopg":
        raise InvalidRequestError("Importing into PostgreSQL needs the psycopg driver: postgresql+psycopg://...")
    if name not in ("sqlite", "postgresql"):
        raise InvalidRequestError(f"Importing into {name} is not supported; use SQLite or PostgreSQL.")
    return name
