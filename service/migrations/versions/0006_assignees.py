"""assignees: who in the bureau handles an incoming 协查 or 通报 (领取 / 指派)

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 10:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op


revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    for table in ("verification_case", "notification"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.add_column(
                sa.Column("assigned_to", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True)
            )
            batch_op.create_index(op.f(f"ix_{table}_assigned_to"), ["assigned_to"], unique=False)


def downgrade() -> None:
    for table in ("notification", "verification_case"):
        with op.batch_alter_table(table, schema=None) as batch_op:
            batch_op.drop_index(op.f(f"ix_{table}_assigned_to"))
            batch_op.drop_column("assigned_to")
