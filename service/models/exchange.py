"""Outbox, inbox and nonces of the peer exchange (knows nothing of 协查 or 通报)."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, Text
from sqlmodel import Field, SQLModel

from service.models.base import utc_field
from service.signing.pii import EncryptedBytes


class OutboxStatus(StrEnum):
    pending = "pending"  # waiting for its next attempt (or its first)
    delivered = "delivered"  # the peer's signed receipt is stored
    dead = "dead"  # retry budget spent or rejected for good; an admin may re-run it


class OutboxMessage(SQLModel, table=True):
    __tablename__ = "outbox_message"
    __table_args__ = (Index("ix_outbox_due", "status", "next_attempt_at"),)

    message_id: str = Field(primary_key=True, max_length=36)
    type: str = Field(max_length=40)
    recipient: str = Field(max_length=6, index=True)
    path: str = Field(max_length=200)
    conversation_id: str = Field(max_length=36, index=True)
    body: bytes = Field(sa_type=EncryptedBytes("outbox_message.body"))  # encrypted at rest (pii.py)
    digest: str = Field(max_length=100)
    status: OutboxStatus = Field(default=OutboxStatus.pending, max_length=16)
    attempts: int = 0
    next_attempt_at: datetime = utc_field()
    lease_owner: str | None = Field(default=None, max_length=64)
    lease_until: datetime | None = utc_field(nullable=True)
    last_error: str | None = Field(default=None, sa_type=Text)
    created_at: datetime = utc_field(default_now=True)
    delivered_at: datetime | None = utc_field(nullable=True)
    # The peer's signed receipt, kept as evidence exactly as received.
    receipt_status: int | None = None
    receipt_body: bytes | None = Field(default=None, sa_type=EncryptedBytes("outbox_message.receipt_body"))
    receipt_signature_input: str | None = Field(default=None, sa_type=Text)
    receipt_signature: str | None = Field(default=None, sa_type=Text)
    receipt_received_at: datetime | None = utc_field(nullable=True)
    receipt_due_at: datetime | None = utc_field(nullable=True)


class InboxMessage(SQLModel, table=True):
    __tablename__ = "inbox_message"

    message_id: str = Field(primary_key=True, max_length=36)
    type: str = Field(max_length=40)
    sender: str = Field(max_length=6, index=True)
    conversation_id: str = Field(max_length=36, index=True)
    body: bytes = Field(sa_type=EncryptedBytes("inbox_message.body"))  # encrypted at rest (pii.py)
    digest: str = Field(max_length=100)
    keyid: str = Field(max_length=40)
    signature_input: str = Field(sa_type=Text)
    signature: str = Field(sa_type=Text)
    received_at: datetime = utc_field()
    due_at: datetime | None = utc_field(nullable=True)


class SeenNonce(SQLModel, table=True):
    """Replay protection: a (keyid, nonce) pair is accepted once; kept until expiry + skew."""

    __tablename__ = "seen_nonce"

    keyid: str = Field(primary_key=True, max_length=40)
    nonce: str = Field(primary_key=True, max_length=128)
    expires_at: datetime = utc_field(index=True)
