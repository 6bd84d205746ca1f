"""The store: accounts, hashed API keys, policies and the request log, in SQL (SQLite WAL or PostgreSQL)."""

from alambic.store.accounts import (
    AccountPolicy,
    Policy,
    Standing,
    authenticate,
    create_account,
    flag_account,
    issue_key,
    list_accounts,
    set_policy,
    set_watermark,
    standings,
)
from alambic.store.database import Store, open_for_serving
from alambic.store.requestlog import RequestRecord, UsageWindow, log_request, start_request, usage_since

__all__ = [
    "AccountPolicy",
    "Policy",
    "RequestRecord",
    "Standing",
    "Store",
    "UsageWindow",
    "authenticate",
    "create_account",
    "flag_account",
    "issue_key",
    "list_accounts",
    "log_request",
    "open_for_serving",
    "set_policy",
    "set_watermark",
    "standings",
    "start_request",
    "usage_since",
]
