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


class RateLimitHit(SQLModel, table=True):
    """One counted event of a rate limit (a look-up, a failed sign-in) in its moving window, shared
    by every replica on PostgreSQL (service/rate_windows.py); rows past the window are deleted."""

    __tablename__ = "rate_limit_hit"
    __table_args__ = (Index("ix_rate_limit_hit_key_at", "key", "at"),)

    id: int | None = Field(default=None, primary_key=True)
    key: str = Field(max_length=200)  # the limit and what it counts ("…/peer:411627", "…/source:…")
    at: float  # epoch seconds, as the limits library keeps its windows
    expires_at: float  # when it leaves its window (at + the window's length; a fixed window's end)
