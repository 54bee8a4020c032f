"""batch bodies kept as evidence (docs/protocol.md section 18): a message received in a batch can
be re-verified as sent by its sender

The exact body of each batch that brought accepted messages, encrypted at rest like the messages'
bodies, kept once per batch in the transaction that stores them: the sender's signature covers its
Content-Digest, and each of those messages is one of its items. Found by the request's keyid and
nonce (an index, not unique: ``seen_nonce`` forgets a nonce once its signature has expired); an
index on ``received_at`` serves the retention purge.

Revision ID: 0017
Revises: 0016
Create Date: 2026-12-02 04:00:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
import sqlmodel
from alembic import op

import service.db

revision: str = "0017"
down_revision: str | None = "0016"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _string(length: int) -> sqlmodel.sql.sqltypes.AutoString:
    return sqlmodel.sql.sqltypes.AutoString(length=length)


def upgrade() -> None:
    op.create_table(
        "evidence_batch_body",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("keyid", _string(40), nullable=False),
        sa.Column("nonce", _string(128), nullable=False),
        sa.Column("digest", _string(100), nullable=False),
        sa.Column("received_at", service.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("body", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index("ix_evidence_batch_nonce", "evidence_batch_body", ["nonce", "keyid"], unique=False)
    op.create_index(
        "ix_evidence_batch_body_received_at", "evidence_batch_body", ["received_at"], unique=False
    )


def downgrade() -> None:
    # The entries that refer to these bodies stay in the chain (append-only); verify then reports
    # their batch bodies as missing.
    op.drop_index("ix_evidence_batch_body_received_at", table_name="evidence_batch_body")
    op.drop_index("ix_evidence_batch_nonce", table_name="evidence_batch_body")
    op.drop_table("evidence_batch_body")
