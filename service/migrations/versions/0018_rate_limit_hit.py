"""rate limits shared by the replicas: the moving windows of the per-peer look-up limit and of the
failed sign-in limits in the database (service/rate_windows.py; used on PostgreSQL, where several
replicas serve one node; SQLite has one process and keeps them in memory)

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-02 03:30:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_hit",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=False),
        sa.Column("at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_rate_limit_hit_key_at", "rate_limit_hit", ["key", "at"], unique=False)


def downgrade() -> None:
    # The windows go back to each process's memory: what was counted here is forgotten.
    op.drop_index("ix_rate_limit_hit_key_at", table_name="rate_limit_hit")
    op.drop_table("rate_limit_hit")
