"""What the monitor reads and writes: per-request fingerprints, times, gateway instance and watermark key id;
an ingest sequence for followers; and the monitor's flags

requests: prompt_hash (the harvest's prompt_id of the request's user turns and system prompt), conversation
(the same hash of the turns before the last user turn: follow-ups of one opener share it), admitted_at,
completed_at, first_token_ms, gateway_instance, watermark_key_id and watermark_params (never the key), and
ingest_seq (stamped in commit order by the reader, so a follower misses no row: see `store.requestlog`).
account_flags: what the monitor (or a person) said about an account, its risk, campaign and reasons.

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

IdType = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("prompt_hash", sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column("conversation", sa.String(length=24), nullable=True))
        batch_op.add_column(sa.Column("admitted_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("completed_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("first_token_ms", sa.Float(), nullable=True))
        batch_op.add_column(sa.Column("gateway_instance", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("watermark_key_id", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("watermark_params", sa.JSON(none_as_null=True), nullable=True))
        batch_op.add_column(sa.Column("ingest_seq", sa.BigInteger(), nullable=True))
        batch_op.create_index("ix_requests_prompt_hash", ["prompt_hash"], unique=False)
        batch_op.create_index("ix_requests_ingest_seq", ["ingest_seq"], unique=True)
    op.create_table(
        "account_flags",
        sa.Column("id", IdType, nullable=False),
        sa.Column("account_id", IdType, nullable=False),
        sa.Column("flagged_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("action", sa.String(length=16), nullable=False),
        sa.Column("risk", sa.Float(), nullable=True),
        sa.Column("campaign", sa.String(length=200), nullable=True),
        sa.Column("reasons", sa.JSON(none_as_null=True), nullable=True),
        sa.Column("actor", sa.String(length=64), nullable=False),
        sa.ForeignKeyConstraint(["account_id"], ["accounts.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    with op.batch_alter_table("account_flags", schema=None) as batch_op:
        batch_op.create_index("ix_account_flags_account_id", ["account_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("account_flags", schema=None) as batch_op:
        batch_op.drop_index("ix_account_flags_account_id")
    op.drop_table("account_flags")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index("ix_requests_ingest_seq")
        batch_op.drop_index("ix_requests_prompt_hash")
        for column in (
            "ingest_seq",
            "watermark_params",
            "watermark_key_id",
            "gateway_instance",
            "first_token_ms",
            "completed_at",
            "admitted_at",
            "conversation",
            "prompt_hash",
        ):
            batch_op.drop_column(column)
