"""certificate look-up standing and log (issue 10 item 8): each look-up's standing, refusal and flag

The origin records every look-up answered or refused (``lookup_log``): with what standing the asking
node asked (``standing``), whether it was refused, and whether the staff were told (``flagged``, a
``flagged_lookup`` staff notice about the person, policy any_trusted). An index on
(person_id, looked_up_at) serves her page's "who looked her up".

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-01 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STANDING = sa.Enum("host", "arrival", "case", "none", name="lookupstanding")
NOTICE_KINDS = ("reminder", "overdue", "escalation")


def _notice_kind(*extra: str) -> sa.Enum:
    return sa.Enum(*NOTICE_KINDS, *extra, name="noticekind")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        STANDING.create(bind, checkfirst=True)
        # The staff notices' kinds and item types (PostgreSQL 12+ allows this in a transaction).
        op.execute("ALTER TYPE noticekind ADD VALUE IF NOT EXISTS 'flagged_lookup'")
        op.execute("ALTER TYPE itemtype ADD VALUE IF NOT EXISTS 'person'")
    else:  # SQLite: the enum is a VARCHAR as long as its longest value
        with op.batch_alter_table("staff_notice", schema=None) as batch_op:
            batch_op.alter_column(
                "kind",
                existing_type=_notice_kind(),
                type_=_notice_kind("flagged_lookup"),
                existing_nullable=False,
            )
    with op.batch_alter_table("lookup_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("standing", STANDING, nullable=True))
        batch_op.add_column(sa.Column("refused", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.add_column(sa.Column("flagged", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index("ix_lookup_log_person_at", ["person_id", "looked_up_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("lookup_log", schema=None) as batch_op:
        batch_op.drop_index("ix_lookup_log_person_at")
        batch_op.drop_column("flagged")
        batch_op.drop_column("refused")
        batch_op.drop_column("standing")
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":
        STANDING.drop(bind, checkfirst=True)
        # PostgreSQL cannot drop an enum value: noticekind and itemtype keep theirs (unused).
    else:
        op.execute("DELETE FROM staff_notice WHERE kind = 'flagged_lookup'")
        with op.batch_alter_table("staff_notice", schema=None) as batch_op:
            batch_op.alter_column(
                "kind",
                existing_type=_notice_kind("flagged_lookup"),
                type_=_notice_kind(),
                existing_nullable=False,
            )
