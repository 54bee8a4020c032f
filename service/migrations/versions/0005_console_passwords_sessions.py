"""console: staff passwords, password history, console sessions

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 16:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import service.db


revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "console_session",
        sa.Column("id", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("created_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("last_seen_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("ended_at", service.db.UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_console_session_staff_id"), "console_session", ["staff_id"], unique=False)
    op.create_table(
        "password_history",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("staff_id", sa.Integer(), nullable=False),
        sa.Column("password_hash", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=False),
        sa.Column("created_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["staff_id"], ["staff.id"]),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_password_history_staff_id"), "password_history", ["staff_id"], unique=False)
    # Existing accounts get no password (the console refuses them until one is set) and must change it.
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.add_column(sa.Column("password_hash", sqlmodel.sql.sqltypes.AutoString(length=256), nullable=True))
        batch_op.add_column(sa.Column("password_changed_at", service.db.UTCDateTime(timezone=True), nullable=True))
        batch_op.add_column(
            sa.Column("must_change_password", sa.Boolean(), nullable=False, server_default=sa.true())
        )
        batch_op.add_column(sa.Column("failed_logins", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("locked_until", service.db.UTCDateTime(timezone=True), nullable=True))
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.alter_column("must_change_password", server_default=None)
        batch_op.alter_column("failed_logins", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.drop_column("locked_until")
        batch_op.drop_column("failed_logins")
        batch_op.drop_column("must_change_password")
        batch_op.drop_column("password_changed_at")
        batch_op.drop_column("password_hash")
    op.drop_index(op.f("ix_password_history_staff_id"), table_name="password_history")
    op.drop_table("password_history")
    op.drop_index(op.f("ix_console_session_staff_id"), table_name="console_session")
    op.drop_table("console_session")
