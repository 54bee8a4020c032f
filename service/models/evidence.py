"""The evidence log (service/evidence/): an append-only, hash-chained record of every message this
node sent or received, and the node's signed checkpoints of the chain head."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from service.models.base import utc_field
from service.models.certificates import CertificateCheck
from service.models.exchange import InboxMessage, OutboxMessage
from service.signing.pii import EncryptedBytes


class EvidenceEntry(SQLModel, table=True):
    """One message, as needed to verify it again: never updated, never deleted.

    ``entry_hash`` is the SHA-256 of the entry's canonical form (service/evidence/chain.py), which
    includes ``prev_hash``, the ``entry_hash`` of the entry before (``seq - 1``)."""

    __tablename__ = "evidence_entry"
    __table_args__ = (
        UniqueConstraint("kind", "source_id", name="uq_evidence_source"),
        Index("ix_evidence_kind_at", "kind", "occurred_at"),
    )

    seq: int = Field(primary_key=True, sa_column_kwargs={"autoincrement": False})
    kind: str = Field(max_length=16)  # inbox | outbox | lookup
    source_id: str = Field(max_length=36)  # the message_id (inbox, outbox) or the check's id (lookup)
    message_id: str = Field(max_length=36)
    message_type: str = Field(max_length=40)
    peer: str = Field(max_length=6)  # the other node
    occurred_at: datetime = utc_field()  # received, delivered, answered
    body_digest: str = Field(max_length=100)  # Content-Digest of the message (or answer) body
    # The request's signature (sender's for inbox, ours for outbox), over POST request_path with
    # Content-Digest request_digest (the body's, or a batch's that carried it).
    request_keyid: str | None = Field(default=None, max_length=40)
    request_public_key: str | None = Field(default=None, max_length=64)  # the key as sealed
    request_path: str | None = Field(default=None, max_length=200)
    request_digest: str | None = Field(default=None, max_length=100)
    request_signature_input: str | None = Field(default=None, sa_type=Text)
    request_signature: str | None = Field(default=None, sa_type=Text)
    # The peer's signed answer: the receipt of an outbox message, the answer of a look-up.
    answer_status: int | None = None
    answer_content_type: str | None = Field(default=None, max_length=64)
    answer_digest: str | None = Field(default=None, max_length=100)
    answer_keyid: str | None = Field(default=None, max_length=40)
    answer_public_key: str | None = Field(default=None, max_length=64)
    answer_signature_input: str | None = Field(default=None, sa_type=Text)
    answer_signature: str | None = Field(default=None, sa_type=Text)
    sealed_at: datetime = utc_field()
    prev_hash: str = Field(max_length=64)
    entry_hash: str = Field(max_length=64)


class EvidenceHead(SQLModel, table=True):
    """The chain's head, one row (id 1): the sealer locks it (FOR UPDATE) to append."""

    __tablename__ = "evidence_head"

    id: int = Field(default=1, primary_key=True, sa_column_kwargs={"autoincrement": False})
    seq: int = 0
    head_hash: str = Field(max_length=64)
    updated_at: datetime = utc_field()


class EvidenceCheckpoint(SQLModel, table=True):
    """The node's Ed25519 signature over (node, seq, head hash, time) of the chain head."""

    __tablename__ = "evidence_checkpoint"

    id: int | None = Field(default=None, primary_key=True)
    node_id: str = Field(max_length=6)
    seq: int = Field(index=True)
    head_hash: str = Field(max_length=64)
    signed_at: datetime = utc_field()
    keyid: str = Field(max_length=40)
    signature: str = Field(max_length=100)  # base64 of the 64 bytes


class EvidenceSentRequest(SQLModel, table=True):
    """The signature of the attempt that delivered an outbox message (written by the relay)."""

    __tablename__ = "evidence_sent_request"

    message_id: str = Field(primary_key=True, max_length=36)
    path: str = Field(max_length=200)  # the whole path signed: /peer/v1/…
    digest: str = Field(max_length=100)  # the Content-Digest signed (a batch's, if it went in one)
    signature_input: str = Field(sa_type=Text)
    signature: str = Field(sa_type=Text)


class EvidenceSentAnswer(SQLModel, table=True):
    """The signature of a look-up answer this node gave as origin (its Signature-Input and Signature
    as sent), kept once it is signed; the answer's status and digest are in its ``lookup_log`` row."""

    __tablename__ = "evidence_sent_answer"

    message_id: str = Field(primary_key=True, max_length=36)  # the look-up's
    signature_input: str = Field(sa_type=Text)
    signature: str = Field(sa_type=Text)


class EvidenceBatchBody(SQLModel, table=True):
    """The exact body of a batch (``POST /peer/v1/batch``) that brought accepted messages, kept once
    per batch in the transaction that stores them: the sender's signature covers its digest, and
    each of those messages is one of its items (docs/protocol.md section 18). Found from an inbox
    row or an entry by the request's keyid and nonce (its Signature-Input); not unique, since
    ``seen_nonce`` forgets a nonce once its signature has expired."""

    __tablename__ = "evidence_batch_body"
    # Up to 1 MiB a body: re-encrypted a few rows at a time (service/signing/pii_rotation.py).
    __table_args__ = (Index("ix_evidence_batch_nonce", "nonce", "keyid"), {"info": {"pii_rows_at_once": 8}})

    id: int | None = Field(default=None, primary_key=True)
    keyid: str = Field(max_length=40)
    nonce: str = Field(max_length=128)
    digest: str = Field(max_length=100)  # the Content-Digest signed (sha-256 of body)
    received_at: datetime = utc_field(index=True)  # its items' received_at
    body: bytes = Field(sa_type=EncryptedBytes("evidence_batch_body.body"))  # b"" once purged


# The sealer looks for new messages by time (from the last sealed one, less a margin).
Index("ix_inbox_received_at", InboxMessage.__table__.c.received_at)  # type: ignore[attr-defined]
Index("ix_outbox_delivered_at", OutboxMessage.__table__.c.delivered_at)  # type: ignore[attr-defined]
Index("ix_check_checked_at", CertificateCheck.__table__.c.checked_at)  # type: ignore[attr-defined]
