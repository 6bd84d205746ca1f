"""Tables. The request log is the monitor's raw material: one row per request, nothing left out.

Changing a table means a new migration in `migrations/versions/`, never an edit of an old one.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import JSON, BigInteger, Boolean, DateTime, Float, ForeignKey, Index, Integer, String, Text, text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column


def utc_now() -> datetime:
    return datetime.now(UTC)


def new_request_id() -> str:
    return "req-" + uuid.uuid4().hex


class Base(DeclarativeBase):
    # A missing JSON value is SQL NULL, not the JSON text 'null', so `IS NULL` finds it.
    type_annotation_map = {  # noqa: RUF012 (SQLAlchemy reads it from the class)
        datetime: DateTime(timezone=True),
        dict: JSON(none_as_null=True),
        list: JSON(none_as_null=True),
    }


# SQLite only auto-increments INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT for a log that grows.
IdType = BigInteger().with_variant(Integer(), "sqlite")


class Account(Base):
    __tablename__ = "accounts"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    name: Mapped[str] = mapped_column(String(200), unique=True)
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    policy: Mapped[str] = mapped_column(String(16), default="allow")  # allow | throttle | block
    requests_per_minute: Mapped[int | None]
    tokens_per_minute: Mapped[int | None]
    watermark: Mapped[bool | None]  # None: as the server is configured


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)  # sha256 hex of the whole key
    prefix: Mapped[str] = mapped_column(String(16))  # shown to people to tell keys apart
    created_at: Mapped[datetime] = mapped_column(default=utc_now)
    revoked_at: Mapped[datetime | None]


class PolicyChange(Base):
    """Every change of an account's policy: who or what changed it and why (the monitor's actions land here)."""

    __tablename__ = "policy_changes"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    changed_at: Mapped[datetime] = mapped_column(default=utc_now)
    policy: Mapped[str] = mapped_column(String(16))
    requests_per_minute: Mapped[int | None]
    tokens_per_minute: Mapped[int | None]
    actor: Mapped[str] = mapped_column(String(64))  # cli | admin-api | monitor
    reason: Mapped[str | None] = mapped_column(Text)


class RequestLog(Base):
    __tablename__ = "requests"
    __table_args__ = (
        Index("ix_requests_account_time", "account_id", "created_at"),
        # Only rows with a hash (migration 0006): imported rows mostly have none, and lookups are by a hash.
        Index(
            "ix_requests_prompt_hash",
            "prompt_hash",
            sqlite_where=text("prompt_hash IS NOT NULL"),
            postgresql_where=text("prompt_hash IS NOT NULL"),
        ),
    )

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    created_at: Mapped[datetime] = mapped_column(index=True)  # when the request arrived
    account_id: Mapped[int | None] = mapped_column(ForeignKey("accounts.id", ondelete="SET NULL"))
    api_key_id: Mapped[int | None] = mapped_column(ForeignKey("api_keys.id", ondelete="SET NULL"))
    endpoint: Mapped[str] = mapped_column(String(64))
    method: Mapped[str] = mapped_column(String(8))
    status_code: Mapped[int]
    error_type: Mapped[str | None] = mapped_column(String(64))
    error_message: Mapped[str | None] = mapped_column(Text)
    client_address: Mapped[str | None] = mapped_column(String(64))
    user_agent: Mapped[str | None] = mapped_column(String(400))
    model: Mapped[str | None] = mapped_column(String(200))
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    n: Mapped[int | None]
    max_tokens: Mapped[int | None]
    temperature: Mapped[float | None] = mapped_column(Float)
    top_p: Mapped[float | None] = mapped_column(Float)
    seed: Mapped[int | None] = mapped_column(BigInteger)
    stop: Mapped[list | None]
    logprobs: Mapped[bool | None] = mapped_column(Boolean)
    top_logprobs: Mapped[int | None]
    parameters: Mapped[dict | None]  # the whole request body but the prompt, as sent
    prompt: Mapped[list | None]  # chat: the messages; completions: [prompt]
    response_texts: Mapped[list | None]  # one text per choice
    finish_reasons: Mapped[list | None]
    prompt_tokens: Mapped[int | None]
    completion_tokens: Mapped[int | None]
    latency_ms: Mapped[float | None] = mapped_column(Float)
    watermark_scheme: Mapped[str | None] = mapped_column(String(32))
    # in_progress: inserted at admission, the final row not written yet (left so by a gateway that died);
    # complete: the request's final row.
    state: Mapped[str] = mapped_column(String(16), default="complete", server_default="complete")
    # The request's id as a string, unique: v1's `id` for imported rows, generated for the gateway's own.
    request_id: Mapped[str | None] = mapped_column(String(200), index=True, unique=True, default=new_request_id)
    imported_in: Mapped[str | None] = mapped_column(String(32))  # the import run that wrote the row
    extra: Mapped[dict | None]  # fields of an imported row that alambic does not name, kept as they came
    # What the monitor reads (migration 0005): the harvest's prompt_id of the user turns (and system prompt),
    # the same hash of the turns before the last user turn (follow-ups of one opener share it), times, the
    # gateway that served it, the watermark key's id and parameters (never the key).
    prompt_hash: Mapped[str | None] = mapped_column(String(24))
    conversation: Mapped[str | None] = mapped_column(String(24))
    admitted_at: Mapped[datetime | None]
    completed_at: Mapped[datetime | None]
    first_token_ms: Mapped[float | None] = mapped_column(Float)
    gateway_instance: Mapped[str | None] = mapped_column(String(200))
    watermark_key_id: Mapped[str | None] = mapped_column(String(32))
    watermark_params: Mapped[dict | None]
    # Stamped by the reader in commit order, never by the writer: a follower reading `ingest_seq > cursor` misses
    # no row, where `id > cursor` would on PostgreSQL (ids are taken at insert, not in commit order).
    ingest_seq: Mapped[int | None] = mapped_column(BigInteger, index=True, unique=True)


class AccountFlag(Base):
    """What the monitor (the actor) said about an account and did: flag, throttle or block, with its reasons."""

    __tablename__ = "account_flags"

    id: Mapped[int] = mapped_column(IdType, primary_key=True)
    account_id: Mapped[int] = mapped_column(ForeignKey("accounts.id", ondelete="CASCADE"), index=True)
    flagged_at: Mapped[datetime] = mapped_column(default=utc_now)
    action: Mapped[str] = mapped_column(String(16))  # flag | throttle | block
    risk: Mapped[float | None] = mapped_column(Float)
    campaign: Mapped[str | None] = mapped_column(String(200))
    reasons: Mapped[list | None]
    actor: Mapped[str] = mapped_column(String(64))
