"""requests.state: `in_progress` from admission until the final row is written, then `complete`

A row left `in_progress` belongs to a request whose gateway stopped (a crash, kill -9) before it ended.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        # Rows written before this revision were written whole, at the end: complete.
        batch_op.add_column(sa.Column("state", sa.String(length=16), server_default="complete", nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("requests", schema=None) as batch_op:
        batch_op.drop_column("state")
