"""requests.request_id (a unique string id, v1's `id`), imported_in (the import run that wrote a row), extra

The gateway's earlier rows get `alambic-<row id>` as their request id.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_id", sa.String(length=200), nullable=True))
        batch_op.add_column(sa.Column("imported_in", sa.String(length=32), nullable=True))
        batch_op.add_column(sa.Column("extra", sa.JSON(none_as_null=True), nullable=True))
    op.execute("UPDATE requests SET request_id = 'alambic-' || CAST(id AS VARCHAR(20)) WHERE request_id IS NULL")
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.create_index("ix_requests_request_id", ["request_id"], unique=True)


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_index("ix_requests_request_id")
        batch_op.drop_column("extra")
        batch_op.drop_column("imported_in")
        batch_op.drop_column("request_id")
