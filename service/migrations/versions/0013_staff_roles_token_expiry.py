"""staff roles, token expiry and revocation (issue 10 item 4)

An account holds several roles (``staff.roles``, comma-separated; ``staff.role`` stays as its
principal role); a bearer token has an expiry (``token_expires_at``) and can be revoked
(``token_revoked_at``). Tokens that existed before get the default lifetime from this upgrade on
(90 days; ``YIPANQI_STAFF_TOKEN_DAYS`` applies to tokens issued later).

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-01 19:00:00
"""

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
import sqlmodel
from alembic import op

import service.db

revision: str = "0013"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

EXISTING_TOKEN_DAYS = 90


def upgrade() -> None:
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("roles", sqlmodel.sql.sqltypes.AutoString(length=64), nullable=False, server_default="")
        )
        batch_op.add_column(
            sa.Column("token_expires_at", service.db.UTCDateTime(timezone=True), nullable=True)
        )
        batch_op.add_column(
            sa.Column("token_revoked_at", service.db.UTCDateTime(timezone=True), nullable=True)
        )
    staff = sa.table(
        "staff",
        sa.column("role", sa.String()),
        sa.column("roles", sa.String()),
        sa.column("token_expires_at", service.db.UTCDateTime(timezone=True)),
    )
    # The one read of the real clock: the upgrade's moment starts the old tokens' lifetime.
    expires = datetime.now(UTC) + timedelta(days=EXISTING_TOKEN_DAYS)  # real clock
    op.execute(staff.update().values(roles=sa.cast(staff.c.role, sa.String()), token_expires_at=expires))
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.alter_column("roles", server_default=None)


def downgrade() -> None:
    with op.batch_alter_table("staff", schema=None) as batch_op:
        batch_op.drop_column("token_revoked_at")
        batch_op.drop_column("token_expires_at")
        batch_op.drop_column("roles")
