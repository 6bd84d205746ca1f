"""requests.prompt_hash's index holds only the rows that have a hash

Imported rows mostly have none (a v1 row may carry one; the gateway's own rows always do), and every lookup is
by a hash: the entries of the null rows cost each import's insert and are never read.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

HASHED = sa.text("prompt_hash IS NOT NULL")


def upgrade() -> None:
    op.drop_index("ix_requests_prompt_hash", table_name="requests")
    op.create_index(
        "ix_requests_prompt_hash", "requests", ["prompt_hash"], sqlite_where=HASHED, postgresql_where=HASHED
    )


def downgrade() -> None:
    op.drop_index("ix_requests_prompt_hash", table_name="requests")
    op.create_index("ix_requests_prompt_hash", "requests", ["prompt_hash"])
