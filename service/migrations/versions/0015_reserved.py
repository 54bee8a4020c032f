"""certificate look-up standing and log (issue 10 item 8) -- RESERVED placeholder: the helper that owns it fills it in (rename the file to match)

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 19:00:00
"""

from collections.abc import Sequence

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    pass


def downgrade() -> None:
    pass
