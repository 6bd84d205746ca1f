"""Opening the store: an engine for any SQLAlchemy URL, SQLite tuned for a concurrent log, migrations applied
(`alambic db upgrade`, or any open but the gateway's, which only checks the schema's revision). Alembic is
imported when a revision is read or applied, not with the store: a command that only names its types skips it.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Engine, create_engine, event, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, NoSuchModuleError
from sqlalchemy.orm import sessionmaker

from alambic.errors import DatabaseOutdatedError, StoreUnavailableError
from alambic.paths import default_database_url

if TYPE_CHECKING:
    from alembic.config import Config

MIGRATIONS = Path(__file__).parent / "migrations"


class Store:
    """A database with alambic's schema at its newest version. Without `create`, an SQLite file that does not exist
    is an error rather than a new store (a command that reads the store, given a mistyped path)."""

    def __init__(self, url: str | None = None, *, migrate: bool = True, create: bool = True) -> None:
        self.url = url or default_database_url()
        self.engine = make_engine(self.url, create=create)
        self.session = sessionmaker(self.engine, expire_on_commit=False)
        try:
            with self.engine.connect():
                pass
        except DBAPIError as error:
            shown = self.engine.url.render_as_string(hide_password=True)
            message = str(error.orig).strip().splitlines()[0] if error.orig else type(error).__name__
            raise StoreUnavailableError(f"The store at {shown} cannot be reached: {message}") from None
        if migrate:
            upgrade(self.engine)

    def revision(self) -> str | None:
        """The schema's Alembic revision; None for a database alambic has never written to."""
        from alembic.runtime.migration import MigrationContext

        with self.engine.connect() as connection:
            return MigrationContext.configure(connection).get_current_revision()

    def upgrade(self) -> str:
        """Apply the migrations not yet applied; returns the revision the database is now at."""
        upgrade(self.engine)
        return newest_revision()

    def require_newest(self) -> None:
        """Raise DatabaseOutdatedError unless the schema is the one this alambic writes."""
        current, newest = self.revision(), newest_revision()
        if current != newest:
            raise DatabaseOutdatedError(
                f"The database at {self.engine.url} is at schema revision {current or 'none (empty)'}; this "
                f"alambic needs {newest}. Run `alambic db upgrade` with the same --db first."
            )

    def close(self) -> None:
        self.engine.dispose()


def open_for_serving(url: str | None = None) -> Store:
    """The gateway's store: its schema checked, not migrated, so replicas starting together never race to
    migrate one database. A new SQLite store (a fresh machine's `make serve`) is the exception: it is created."""
    store = Store(url, migrate=False)
    if store.engine.dialect.name == "sqlite" and store.revision() is None:
        store.upgrade()
    store.require_newest()
    return store


def make_engine(url: str, *, create: bool = True) -> Engine:
    """An engine for `url`; a new SQLite file's directory is made, unless not `create`, where no file is an error."""
    try:
        parsed = make_url(url)
        if parsed.get_backend_name() != "sqlite":
            return create_engine(parsed, pool_size=20, max_overflow=20, pool_pre_ping=True)
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            if not create and not Path(database).is_file():
                raise StoreUnavailableError(
                    f"No store at {database}: check --db (`alambic db upgrade` or `alambic serve` creates one)."
                )
            Path(database).parent.mkdir(parents=True, exist_ok=True)  # a new store in a new directory
        engine = create_engine(parsed, connect_args={"check_same_thread": False, "timeout": 30})
    except (ArgumentError, NoSuchModuleError, ImportError) as error:
        reason = str(error).strip().splitlines()[0]
        raise StoreUnavailableError(
            f"--db: not a store URL alambic can open ({reason}); e.g. sqlite:///alambic.db or "
            "postgresql://user@host/database."
        ) from None
    event.listen(engine, "connect", _tune_sqlite)
    return engine


def _tune_sqlite(connection, _record) -> None:
    # WAL lets the gateway write while the monitor reads; NORMAL sync is durable across a process
    # crash (kill -9), which is the failure the log must survive.
    # A new database takes 16 KiB pages (an existing one keeps its own: the pragma is then a no-op): a log row is
    # ~1 KB and an import writes each page twice (the log written ahead, then the checkpoint), ~13% less CPU a
    # row than with the default 4 KiB.
    cursor = connection.cursor()
    cursor.execute("PRAGMA page_size=16384")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.close()


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Apply every migration not yet applied, up to `revision` (Alembic, run in-process)."""
    from alembic import command

    config = _alembic_config()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def newest_revision() -> str:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config()).get_current_head()


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    return config
