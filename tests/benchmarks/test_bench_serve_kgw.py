"""KGW's cost on one gateway: blocks alternate between the two accounts, and the log says which were marked."""

from __future__ import annotations

import sys
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
import bench_serve_kgw
from alambic.store import Store, create_account
from alambic.store.schema import Account, RequestLog


def test_blocks_come_in_pairs_whose_order_alternates():
    assert bench_serve_kgw.block_order(3) == [("plain", "marked"), ("marked", "plain"), ("plain", "marked")]


def test_the_log_counts_each_account_s_answers_with_and_without_a_watermark_key(tmp_path):
    store = Store(f"sqlite:///{tmp_path / 'log.db'}")
    for name in bench_serve_kgw.ACCOUNTS:
        create_account(store, name)
    with store.session.begin() as session:
        ids = dict(session.execute(select(Account.name, Account.id)).all())
        for name, key_ids in (("plain", [None, None]), ("marked", ["k1", "k1", None])):
            for key_id in key_ids:
                session.add(
                    RequestLog(
                        created_at=datetime.now(UTC),
                        account_id=ids[name],
                        endpoint="/v1/chat/completions",
                        method="POST",
                        status_code=200,
                        watermark_key_id=key_id,
                    )
                )
    assert bench_serve_kgw.logged_watermarks(store) == {
        "plain": {"with_key": 0, "without_key": 2},
        "marked": {"with_key": 2, "without_key": 1},
    }
