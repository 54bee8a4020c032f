"""early warning: open items first flagged as likely to miss their deadline (预警)

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-02 12:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import service.db


revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _existing_enum(name: str, *values: str) -> sa.Enum:
    """A type made by an earlier revision: used, not created again, on PostgreSQL."""
    return sa.Enum(*values, name=name).with_variant(
        postgresql.ENUM(*values, name=name, create_type=False), "postgresql"
    )


def upgrade() -> None:
    op.create_table(
        "early_warning",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("item_type", _existing_enum("itemtype", "verification", "notification"), nullable=False),
        sa.Column("item_id", sa.Integer(), nullable=False),
        sa.Column("direction", _existing_enum("direction", "outgoing", "incoming"), nullable=False),
        sa.Column("due_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("raised_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("probability", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("item_type", "item_id", name="uq_early_warning_item"),
    )
    with op.batch_alter_table("early_warning", schema=None) as batch_op:
        batch_op.create_index("ix_early_warning_due_at", ["due_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("early_warning", schema=None) as batch_op:
        batch_op.drop_index("ix_early_warning_due_at")
    op.drop_table("early_warning")
