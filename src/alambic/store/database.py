"""Opening the store: an engine for any SQLAlchemy URL, SQLite tuned for a concurrent log, migrations applied."""

from __future__ import annotations

from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.orm import sessionmaker

from alambic.paths import default_database_url

MIGRATIONS = Path(__file__).parent / "migrations"


class Store:
    """A database with alambic's schema at its newest version."""

    def __init__(self, url: str | None = None, *, migrate: bool = True) -> None:
        self.url = url or default_database_url()
        self.engine = make_engine(self.url)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        if migrate:
            upgrade(self.engine)

    def close(self) -> None:
        self.engine.dispose()


def make_engine(url: str) -> Engine:
    if url.startswith("sqlite"):
        database = make_url(url).database
        if database and database != ":memory:":
            Path(database).parent.mkdir(parents=True, exist_ok=True)  # a new store in a new directory
        engine = create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
        event.listen(engine, "connect", _tune_sqlite)
        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


def _tune_sqlite(connection, _record) -> None:
    # WAL lets the gateway write while the monitor reads; NORMAL sync is durable across a process
    # crash (kill -9), which is the failure the log must survive.
    cursor = connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def upgrade(engine: Engine) -> None:
    """Apply every migration not yet applied (Alembic, run in-process)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
