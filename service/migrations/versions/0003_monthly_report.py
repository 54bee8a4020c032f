"""monthly_report: the stored monthly SLA report (月报)

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 12:00:00

Written by helper "rates" against 0002; helper "sweeps" writes a 0003 too: the lead chains them.
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import service.db

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "monthly_report",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("month", sqlmodel.sql.sqltypes.AutoString(length=7), nullable=False),
        sa.Column("generated_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("content", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("month"),
    )


def downgrade() -> None:
    op.drop_table("monthly_report")
