import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import event, inspect, select, text

from alambic.errors import AccountNotFoundError, ConflictError, DatabaseOutdatedError, InvalidRequestError
from alambic.store import (
    Policy,
    RequestRecord,
    Store,
    authenticate,
    create_account,
    issue_key,
    list_accounts,
    log_request,
    open_for_serving,
    set_policy,
    start_request,
    usage_since,
)
from alambic.store.database import newest_revision, upgrade
from alambic.store.schema import ApiKey, PolicyChange, RequestLog
from conftest import fresh_database


def test_migrations_create_every_table(store):
    tables = set(inspect(store.engine).get_table_names())
    assert {"accounts", "api_keys", "policy_changes", "requests", "alembic_version"} <= tables


def test_sqlite_runs_in_wal_mode(sqlite_store):
    with sqlite_store.engine.connect() as connection:
        assert connection.execute(text("PRAGMA journal_mode")).scalar() == "wal"


def test_a_new_sqlite_store_has_16_kib_pages_and_an_older_one_keeps_its_own(tmp_path):
    # Large pages: a log row is ~1 KB, and an import writes each page twice (the log written ahead, then the
    # checkpoint); 16 KiB pages cost ~13% less CPU a row than SQLite's default 4 KiB.
    def page_size(store):
        with store.engine.connect() as connection:
            return connection.exec_driver_sql("PRAGMA page_size").scalar()

    assert page_size(Store(f"sqlite:///{tmp_path / 'new.db'}")) == 16384
    older = tmp_path / "older.db"
    with sqlite3.connect(older) as connection:  # a store created before: SQLite's default pages
        connection.execute("CREATE TABLE t (x)")
    store = Store(f"sqlite:///{older}")
    create_account(store, "alice")
    assert page_size(store) == 4096 and [a.name for a in list_accounts(store)] == ["alice"]


def test_only_rows_with_a_prompt_hash_are_in_its_index(store):
    # Imported rows mostly have none: each would cost the index an entry that no lookup by hash reads.
    with store.engine.connect() as connection:
        if store.engine.dialect.name == "sqlite":
            definition = connection.exec_driver_sql(
                "SELECT sql FROM sqlite_master WHERE name = 'ix_requests_prompt_hash'"
            ).scalar()
            plan = connection.exec_driver_sql(
                "EXPLAIN QUERY PLAN SELECT id FROM requests WHERE prompt_hash = 'x'"
            ).all()
            assert any("ix_requests_prompt_hash" in row[-1] for row in plan)
        else:
            definition = connection.exec_driver_sql(
                "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_requests_prompt_hash'"
            ).scalar()
    assert "WHERE" in definition and "prompt_hash IS NOT NULL" in definition


def test_reopening_an_existing_store_keeps_its_data(tmp_path):
    url = f"sqlite:///{tmp_path / 'a.db'}"
    key = create_account(Store(url), "alice")
    assert authenticate(Store(url), key).name == "alice"


def test_only_a_hash_of_the_key_is_stored(sqlite_store):
    store = sqlite_store
    key = create_account(store, "alice")
    with store.session() as session:
        stored = session.scalars(select(ApiKey)).one()
    assert key not in (stored.key_hash, stored.prefix) and len(stored.key_hash) == 64
    database = Path(store.url.removeprefix("sqlite:///"))
    on_disk = b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*"))  # db, -wal, -shm
    assert stored.key_hash.encode() in on_disk and key.encode() not in on_disk


def test_keys_authenticate_their_account_and_nothing_else(store):
    alice, bob = create_account(store, "alice"), create_account(store, "bob")
    second = issue_key(store, "alice")
    assert authenticate(store, alice).name == authenticate(store, second).name == "alice"
    assert authenticate(store, bob).name == "bob"
    assert authenticate(store, alice + "x") is None


def test_policy_changes_are_applied_and_recorded(store):
    create_account(store, "alice")
    set_policy(store, "alice", Policy.THROTTLE, requests_per_minute=5, actor="admin-api", reason="burst")
    [summary] = list_accounts(store)
    assert (summary.policy, summary.requests_per_minute) == (Policy.THROTTLE, 5)
    with store.session() as session:
        change = session.scalars(select(PolicyChange)).one()
    assert (change.policy, change.actor, change.reason) == ("throttle", "admin-api", "burst")


@pytest.mark.parametrize(
    ("call", "error"),
    [
        (lambda s: create_account(s, "alice"), ConflictError),
        (lambda s: create_account(s, "  "), InvalidRequestError),
        (lambda s: set_policy(s, "nobody", Policy.BLOCK), AccountNotFoundError),
        (lambda s: set_policy(s, "alice", Policy.THROTTLE), InvalidRequestError),
        (lambda s: set_policy(s, "alice", Policy.THROTTLE, requests_per_minute=0), InvalidRequestError),
    ],
)
def test_bad_account_operations_are_clear_errors(store, call, error):
    create_account(store, "alice")
    with pytest.raises(error):
        call(store)


def test_usage_window_counts_served_requests_and_tokens(store):
    create_account(store, "alice")
    account = authenticate(store, issue_key(store, "alice"))
    now = datetime.now(UTC)

    def log(seconds_ago, status, tokens):
        record = RequestRecord(created_at=now - timedelta(seconds=seconds_ago), endpoint="/v1/x", method="POST")
        record.account_id, record.status_code = account.account_id, status
        record.prompt_tokens, record.completion_tokens = tokens, tokens
        log_request(store, record)

    log(90, 200, 100)  # outside the window
    log(30, 200, 10)
    log(20, 429, 0)  # refused: does not count
    log(10, 200, 5)
    in_flight = RequestRecord(created_at=now, endpoint="/v1/x", method="POST", account_id=account.account_id)
    start_request(store, in_flight)  # counted by the gateway serving it, not through the log
    usage = usage_since(store, account.account_id, now - timedelta(minutes=1))
    assert (usage.requests, usage.tokens) == (2, 30)
    assert abs((usage.oldest.replace(tzinfo=UTC) - (now - timedelta(seconds=30))).total_seconds()) < 0.01


def test_the_gateway_checks_the_schema_and_migrates_nothing_but_a_new_sqlite_store(store, tmp_path):
    fresh_sqlite = open_for_serving(f"sqlite:///{tmp_path / 'new' / 'alambic.db'}")
    assert fresh_sqlite.revision() == newest_revision()
    assert open_for_serving(store.url).revision() == newest_revision()
    behind = Store(f"sqlite:///{tmp_path / 'old.db'}", migrate=False)
    upgrade(behind.engine, "0002")
    with pytest.raises(DatabaseOutdatedError, match="alambic db upgrade"):
        open_for_serving(behind.url)
    assert behind.revision() == "0002"  # untouched: only `alambic db upgrade` migrates it
    assert behind.upgrade() == newest_revision()
    assert open_for_serving(behind.url).revision() == newest_revision()


def test_a_new_postgresql_database_is_left_to_alambic_db_upgrade(tmp_path):
    with fresh_database("postgresql", tmp_path) as url:
        with pytest.raises(DatabaseOutdatedError, match="alambic db upgrade"):
            open_for_serving(url)
        store = Store(url, migrate=False)
        assert store.revision() is None
        store.close()


def test_rows_logged_before_the_state_column_are_complete(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'old.db'}", migrate=False)
    upgrade(store.engine, "0002")
    with store.engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO requests (created_at, endpoint, method, status_code, stream) "
                "VALUES ('2026-01-01 00:00:00', '/v1/models', 'GET', 200, 0)"
            )
        )
    store.upgrade()
    with store.session() as session:
        assert session.scalars(select(RequestLog.state)).all() == ["complete"]


def test_a_row_started_at_admission_is_in_progress_until_logged(store):
    record = RequestRecord(created_at=datetime.now(UTC), endpoint="/v1/" + "x" * 100, method="POST")
    record.model, record.user_agent = "m" * 300, "u" * 500
    started_row = start_request(store, record)
    with store.session() as session:
        started = session.get(RequestLog, started_row.id)
    assert (started.state, len(started.endpoint), len(started.model)) == ("in_progress", 64, 200)
    record.status_code = 200
    assert log_request(store, record, started_row) == started_row.id
    with store.session() as session:
        [row] = session.scalars(select(RequestLog)).all()
    assert (row.state, row.status_code, len(row.user_agent)) == ("complete", 200, 400)


def test_the_final_row_sets_only_the_columns_that_changed_since_admission(store):
    # Each indexed column an UPDATE sets costs its index an entry removed and added: ~1 ms a request in SQLite.
    record = RequestRecord(created_at=datetime.now(UTC), endpoint="/v1/chat/completions", method="POST")
    record.prompt_hash, record.prompt = "abc", [{"role": "user", "content": "hi"}]
    started = start_request(store, record)
    record.status_code, record.response_texts, record.completion_tokens = 200, ["hello"], 1
    updates = []

    def seen(_connection, _cursor, statement, *_):
        if statement.startswith("UPDATE requests"):
            updates.append(statement.split(" WHERE ")[0])

    event.listen(store.engine, "before_cursor_execute", seen)
    try:
        log_request(store, record, started)
    finally:
        event.remove(store.engine, "before_cursor_execute", seen)
    [statement] = updates
    set_columns = {part.split("=")[0].strip() for part in statement.split(" SET ")[1].split(",")}
    assert set_columns == {"status_code", "response_texts", "completion_tokens", "state"}
    with store.session() as session:
        row = session.get(RequestLog, started.id)
    assert (row.state, row.status_code, row.response_texts, row.prompt_hash) == ("complete", 200, ["hello"], "abc")
