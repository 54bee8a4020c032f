"""催办: chased_at and chased_by on verification_case

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import service.db


revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("verification_case", schema=None) as batch_op:
        batch_op.add_column(sa.Column("chased_at", service.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("chased_by", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("verification_case", schema=None) as batch_op:
        batch_op.drop_column("chased_by")
        batch_op.drop_column("chased_at")
