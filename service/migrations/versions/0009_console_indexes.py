"""console indexes: the 已发 list walks outgoing cases and 通报 newest first (keyset on sent_at, id)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-02 18:00:00
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_case_sent", "verification_case", ["direction", "sent_at", "id"], unique=False)
    op.create_index("ix_notification_sent", "notification", ["direction", "sent_at", "id"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_notification_sent", table_name="notification")
    op.drop_index("ix_case_sent", table_name="verification_case")
