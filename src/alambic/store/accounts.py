"""Accounts, their API keys (only a hash is stored) and their policies: allow, throttle or block."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from sqlalchemy import Row, bindparam, func, select

from alambic.errors import AccountNotFoundError, ConflictError, InvalidRequestError
from alambic.store.database import Store
from alambic.store.schema import Account, AccountFlag, ApiKey, PolicyChange, RequestLog, utc_now

KEY_PREFIX = "alb-"


class Policy(StrEnum):
    ALLOW = "allow"
    THROTTLE = "throttle"
    BLOCK = "block"


@dataclass(frozen=True)
class AccountPolicy:
    """What the gateway needs to decide on a request: who is calling and under which policy."""

    account_id: int
    api_key_id: int | None
    name: str
    policy: Policy
    requests_per_minute: int | None
    tokens_per_minute: int | None
    watermark: bool | None = None  # None: as the server is configured


@dataclass(frozen=True)
class Standing:
    """Where an account stands for an actor (the monitor) about to act on it."""

    policy: Policy
    last_flag: str | None  # the actor's latest action on it: flag, throttle or block
    overruled: bool  # someone else changed its policy after that action: their decision stands


@dataclass(frozen=True)
class AccountSummary:
    name: str
    policy: Policy
    requests_per_minute: int | None
    tokens_per_minute: int | None
    created_at: datetime
    active_keys: int
    requests_logged: int


def hash_key(key: str) -> str:
    # Keys carry 256 random bits, so a fast hash is safe; a slow one would only add latency per request.
    return hashlib.sha256(key.encode()).hexdigest()


def create_account(
    store: Store,
    name: str,
    *,
    policy: Policy = Policy.ALLOW,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
) -> str:
    """Create an account with one API key; return the key, which is not stored and cannot be shown again."""
    name = name.strip()
    if not name:
        raise InvalidRequestError("An account name must not be empty.", param="name")
    _check_limits(policy, requests_per_minute, tokens_per_minute)
    with store.session.begin() as session:
        if session.scalar(select(Account.id).where(Account.name == name)) is not None:
            raise ConflictError(f"An account named '{name}' already exists.", param="name")
        account = Account(
            name=name,
            policy=policy.value,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
        )
        session.add(account)
        session.flush()
        return _add_key(session, account.id)


def issue_key(store: Store, name: str) -> str:
    """A new API key for an existing account (the old ones keep working)."""
    with store.session.begin() as session:
        return _add_key(session, _account(session, name).id)


_KEY_LOOKUP = (
    select(
        Account.id,
        ApiKey.id.label("api_key_id"),
        Account.name,
        Account.policy,
        Account.requests_per_minute,
        Account.tokens_per_minute,
        Account.watermark,
    )
    .join(ApiKey, ApiKey.account_id == Account.id)
    .where(ApiKey.key_hash == bindparam("key_hash"), ApiKey.revoked_at.is_(None))
)


def authenticate(store: Store, key: str) -> AccountPolicy | None:
    """The account and policy behind a key, or None for an unknown or revoked key."""
    # Columns, not entities: the gateway asks on every request, and an entity's identity map and loading cost
    # more than the query itself.
    with store.engine.connect() as connection:
        row = connection.execute(_KEY_LOOKUP, {"key_hash": hash_key(key)}).first()
    return None if row is None else _policy_of(row, row.api_key_id)


def set_policy(
    store: Store,
    name: str,
    policy: Policy,
    *,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    actor: str = "cli",
    reason: str | None = None,
) -> AccountPolicy:
    """Change an account's policy; the gateway applies it from the next request on. Recorded with its reason."""
    _check_limits(policy, requests_per_minute, tokens_per_minute)
    with store.session.begin() as session:
        account = _account(session, name)
        _change_policy(session, account, policy, requests_per_minute, tokens_per_minute, actor, reason)
        return _policy_of(account, None)


def flag_account(
    store: Store,
    name: str,
    action: str,
    *,
    actor: str,
    risk: float | None = None,
    campaign: str | None = None,
    reasons: list[str] | None = None,
    policy: Policy | None = None,
    requests_per_minute: int | None = None,
    reason: str | None = None,
) -> None:
    """Record an actor's flag on an account (flag, throttle or block, with its risk, campaign and reasons) and,
    with `policy`, change its policy in the same transaction."""
    _check_limits(policy or Policy.ALLOW, requests_per_minute, None)
    with store.session.begin() as session:
        account = _account(session, name)
        session.add(
            AccountFlag(
                account_id=account.id, action=action, risk=risk, campaign=campaign, reasons=reasons, actor=actor
            )
        )
        if policy is not None:
            _change_policy(session, account, policy, requests_per_minute, None, actor, reason)


def standings(store: Store, names: list[str], actor: str) -> dict[str, Standing]:
    """Each named account's policy, `actor`'s latest flag on it, and whether another actor changed its policy
    since; accounts not in the store are left out."""
    latest_flag = (
        select(AccountFlag.account_id, func.max(AccountFlag.id).label("id"))
        .where(AccountFlag.actor == actor)
        .group_by(AccountFlag.account_id)
        .subquery()
    )
    latest_change = (
        select(PolicyChange.account_id, func.max(PolicyChange.id).label("id"))
        .group_by(PolicyChange.account_id)
        .subquery()
    )
    query = (
        select(Account.name, Account.policy, AccountFlag.action, AccountFlag.flagged_at, PolicyChange)
        .outerjoin(latest_flag, latest_flag.c.account_id == Account.id)
        .outerjoin(AccountFlag, AccountFlag.id == latest_flag.c.id)
        .outerjoin(latest_change, latest_change.c.account_id == Account.id)
        .outerjoin(PolicyChange, PolicyChange.id == latest_change.c.id)
    )
    found = {}
    with store.session() as session:
        for start in range(0, len(names), 500):
            for name, policy, action, flagged_at, change in session.execute(
                query.where(Account.name.in_(names[start : start + 500]))
            ):
                overruled = (
                    flagged_at is not None
                    and change is not None
                    and change.actor != actor
                    and change.changed_at >= flagged_at
                )
                found[name] = Standing(Policy(policy), action, overruled)
    return found


def set_watermark(store: Store, name: str, enabled: bool | None) -> AccountPolicy:
    """Watermark this account's answers (True), never (False), or as the server does (None)."""
    with store.session.begin() as session:
        account = _account(session, name)
        account.watermark = enabled
        return _policy_of(account, None)


def list_accounts(store: Store) -> list[AccountSummary]:
    keys = (
        select(func.count(ApiKey.id))
        .where(ApiKey.account_id == Account.id, ApiKey.revoked_at.is_(None))
        .scalar_subquery()
    )
    logged = select(func.count(RequestLog.id)).where(RequestLog.account_id == Account.id).scalar_subquery()
    with store.session() as session:
        rows = session.execute(select(Account, keys, logged).order_by(Account.name)).all()
    return [
        AccountSummary(a.name, Policy(a.policy), a.requests_per_minute, a.tokens_per_minute, a.created_at, k, n)
        for a, k, n in rows
    ]


def _check_limits(policy: Policy, requests_per_minute: int | None, tokens_per_minute: int | None) -> None:
    for param, limit in (
        ("requests_per_minute", requests_per_minute),
        ("tokens_per_minute", tokens_per_minute),
    ):
        if limit is not None and limit < 1:
            raise InvalidRequestError(f"{param} must be a positive integer.", param=param)
    if policy is Policy.THROTTLE and requests_per_minute is None and tokens_per_minute is None:
        raise InvalidRequestError("A throttle policy needs requests_per_minute or tokens_per_minute.", param="policy")


def _change_policy(
    session,
    account: Account,
    policy: Policy,
    requests_per_minute: int | None,
    tokens_per_minute: int | None,
    actor: str,
    reason: str | None,
) -> None:
    account.policy = policy.value
    account.requests_per_minute = requests_per_minute
    account.tokens_per_minute = tokens_per_minute
    session.add(
        PolicyChange(
            account_id=account.id,
            policy=policy.value,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            actor=actor,
            reason=reason,
        )
    )


def _account(session, name: str) -> Account:
    account = session.scalar(select(Account).where(Account.name == name))
    if account is None:
        raise AccountNotFoundError(name)
    return account


def _add_key(session, account_id: int) -> str:
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    session.add(ApiKey(account_id=account_id, key_hash=hash_key(key), prefix=key[:12], created_at=utc_now()))
    return key


def _policy_of(account: Account | Row, api_key_id: int | None) -> AccountPolicy:
    """The policy of an account, or of a row with its columns."""
    return AccountPolicy(
        account_id=account.id,
        api_key_id=api_key_id,
        name=account.name,
        policy=Policy(account.policy),
        requests_per_minute=account.requests_per_minute,
        tokens_per_minute=account.tokens_per_minute,
        watermark=account.watermark,
    )
