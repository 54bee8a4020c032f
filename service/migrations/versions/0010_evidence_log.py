"""evidence log (issue 10 item 1): hash-chained entries, the chain head, signed checkpoints, the
signature of each delivered request, and the time indexes the sealer reads new messages by

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-01 19:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import service.db

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    utc = service.db.UTCDateTime(timezone=True)
    op.create_table(
        "evidence_entry",
        sa.Column("seq", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("kind", _string(16), nullable=False),
        sa.Column("source_id", _string(36), nullable=False),
        sa.Column("message_id", _string(36), nullable=False),
        sa.Column("message_type", _string(40), nullable=False),
        sa.Column("peer", _string(6), nullable=False),
        sa.Column("occurred_at", utc, nullable=False),
        sa.Column("body_digest", _string(100), nullable=False),
        sa.Column("request_keyid", _string(40), nullable=True),
        sa.Column("request_public_key", _string(64), nullable=True),
        sa.Column("request_path", _string(200), nullable=True),
        sa.Column("request_digest", _string(100), nullable=True),
        sa.Column("request_signature_input", sa.Text(), nullable=True),
        sa.Column("request_signature", sa.Text(), nullable=True),
        sa.Column("answer_status", sa.Integer(), nullable=True),
        sa.Column("answer_content_type", _string(64), nullable=True),
        sa.Column("answer_digest", _string(100), nullable=True),
        sa.Column("answer_keyid", _string(40), nullable=True),
        sa.Column("answer_public_key", _string(64), nullable=True),
        sa.Column("answer_signature_input", sa.Text(), nullable=True),
        sa.Column("answer_signature", sa.Text(), nullable=True),
        sa.Column("sealed_at", utc, nullable=False),
        sa.Column("prev_hash", _string(64), nullable=False),
        sa.Column("entry_hash", _string(64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
        sa.UniqueConstraint("kind", "source_id", name="uq_evidence_source"),
    )
    op.create_index("ix_evidence_kind_at", "evidence_entry", ["kind", "occurred_at"], unique=False)
    op.create_table(
        "evidence_head",
        sa.Column("id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("head_hash", _string(64), nullable=False),
        sa.Column("updated_at", utc, nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "evidence_checkpoint",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("node_id", _string(6), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("head_hash", _string(64), nullable=False),
        sa.Column("signed_at", utc, nullable=False),
        sa.Column("keyid", _string(40), nullable=False),
        sa.Column("signature", _string(100), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_evidence_checkpoint_seq", "evidence_checkpoint", ["seq"], unique=False)
    op.create_table(
        "evidence_sent_request",
        sa.Column("message_id", _string(36), nullable=False),
        sa.Column("path", _string(200), nullable=False),
        sa.Column("digest", _string(100), nullable=False),
        sa.Column("signature_input", sa.Text(), nullable=False),
        sa.Column("signature", sa.Text(), nullable=False),
        sa.PrimaryKeyConstraint("message_id"),
    )
    op.create_index("ix_inbox_received_at", "inbox_message", ["received_at"], unique=False)
    op.create_index("ix_outbox_delivered_at", "outbox_message", ["delivered_at"], unique=False)
    op.create_index("ix_check_checked_at", "certificate_check", ["checked_at"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_check_checked_at", table_name="certificate_check")
    op.drop_index("ix_outbox_delivered_at", table_name="outbox_message")
    op.drop_index("ix_inbox_received_at", table_name="inbox_message")
    op.drop_table("evidence_sent_request")
    op.drop_index("ix_evidence_checkpoint_seq", table_name="evidence_checkpoint")
    op.drop_table("evidence_checkpoint")
    op.drop_table("evidence_head")
    op.drop_index("ix_evidence_kind_at", table_name="evidence_entry")
    op.drop_table("evidence_entry")
