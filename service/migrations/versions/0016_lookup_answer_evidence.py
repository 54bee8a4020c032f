"""origin-side look-up evidence (issue 10 item 1): what the evidence log needs of a look-up answered

The origin keeps, with each look-up it answers or refuses (``lookup_log``), the request's signature
as received (the signed ``@path``, Content-Digest, Signature-Input and Signature: no body, which
holds an ID number) and what it answered (status and the answer's Content-Digest), in the look-up's
own transaction; ``evidence_sent_answer`` keeps the answer's Signature-Input and Signature once it
is signed (after that transaction, in a short one of its own). An index on ``looked_up_at`` serves
the sealer, which reads new look-ups by time.

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-02 03:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    with op.batch_alter_table("lookup_log", schema=None) as batch_op:
        batch_op.add_column(sa.Column("request_path", _string(200), nullable=True))
        batch_op.add_column(sa.Column("request_digest", _string(100), nullable=True))
        batch_op.add_column(sa.Column("request_signature_input", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("request_signature", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("answer_status", sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column("answer_digest", _string(100), nullable=True))
        batch_op.create_index("ix_lookup_log_looked_up_at", ["looked_up_at"], unique=False)
    op.create_table(
        "evidence_sent_answer",
        sa.Column("message_id", _string(36), nullable=False),
        sa.Column("signature_input", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )


def downgrade() -> None:
    op.drop_table("evidence_sent_answer")
    # Their entries stay in the chain (append-only); only the rows' copies go.
    with op.batch_alter_table("lookup_log", schema=None) as batch_op:
        batch_op.drop_index("ix_lookup_log_looked_up_at")
        batch_op.drop_column("answer_digest")
        batch_op.drop_column("answer_status")
        batch_op.drop_column("request_signature")
        batch_op.drop_column("request_signature_input")
        batch_op.drop_column("request_digest")
        batch_op.drop_column("request_path")
