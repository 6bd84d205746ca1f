"""A follower of a live store misses no row: it reads by an ingest sequence stamped in commit order, where
`id > cursor` loses a row whose id was taken before a higher one committed (PostgreSQL, or any request still
in progress when a later one ends)."""

from datetime import UTC, datetime, timedelta

from alambic.logs.exporter import rows_after
from alambic.store import RequestRecord, create_account, log_request, start_request
from alambic.store.requestlog import stamp_ingest

START = datetime(2026, 12, 1, tzinfo=UTC)


def record(seconds: int) -> RequestRecord:
    return RequestRecord(created_at=START + timedelta(seconds=seconds), endpoint="/v1/chat/completions", method="POST")


def test_a_row_committed_after_a_higher_id_is_still_read(store):
    create_account(store, "alice")
    slow = record(0)
    slow_row = start_request(store, slow)  # admitted first, still answering
    quick_id = log_request(store, record(1))
    assert stamp_ingest(store) == 1  # only what is final
    [(cursor, row)] = rows_after(store, 0)
    assert row["id"].startswith("req-") and quick_id > slow_row.id
    slow.status_code = 200
    log_request(store, slow, slow_row)  # ends after the quick one: `id > cursor` would never see it again
    assert stamp_ingest(store) == 1
    [(later, row)] = rows_after(store, cursor)
    assert later > cursor and row["time"] == START.isoformat(timespec="microseconds")
    assert stamp_ingest(store) == 0 and rows_after(store, later) == []


def test_rows_are_read_in_pages_in_stamp_order(sqlite_store):
    for second in (3, 1, 2):
        log_request(sqlite_store, record(second))
    assert stamp_ingest(sqlite_store, limit=2) == 2 and stamp_ingest(sqlite_store, limit=2) == 1
    first = rows_after(sqlite_store, 0, limit=2)
    rest = rows_after(sqlite_store, first[-1][0], limit=2)
    times = [row["time"] for _, row in first + rest]
    assert times == sorted(times)  # a batch is stamped in time order


def test_on_postgresql_a_row_whose_insert_commits_late_is_still_read(tmp_path):
    """PostgreSQL takes ids at insert: a transaction holding id 1 that commits after id 2 did."""
    from alambic.store import Store
    from alambic.store.schema import RequestLog
    from conftest import fresh_database

    with fresh_database("postgresql", tmp_path) as url:
        store = Store(url)
        with store.session.begin() as late:
            late.add(row := RequestLog(created_at=START, endpoint="/v1/completions", method="POST", status_code=200))
            late.flush()  # id taken, not committed
            log_request(store, record(1))  # a higher id, committed first
            assert stamp_ingest(store) == 1
            [(cursor, _)] = rows_after(store, 0)
        assert stamp_ingest(store) == 1
        [(_, read)] = rows_after(store, cursor)
        assert read["id"] == row.request_id
        store.close()
