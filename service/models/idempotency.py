"""Idempotency keys of staff writes (IETF httpapi ``Idempotency-Key``): the first answer, kept.

A row is written in the same transaction as the write it answers, so there is never a key
without its effect or an effect without its key. Rows older than ``idempotency_key_hours`` are
swept (service/staff/idempotency.py).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import UniqueConstraint
from sqlmodel import Field, SQLModel

from service.models.base import utc_field
from service.signing.pii import EncryptedBytes


class IdempotencyKey(SQLModel, table=True):
    __tablename__ = "idempotency_key"
    __table_args__ = (UniqueConstraint("staff_id", "key", name="uq_idempotency_key_staff_key"),)

    id: int | None = Field(default=None, primary_key=True)
    staff_id: int = Field(foreign_key="staff.id")
    key: str = Field(max_length=255)
    route: str = Field(max_length=200)  # "POST /api/v1/verification-requests" (the route's template)
    # SHA-256 (hex) of the method, the path with its query and the body: the same key with another
    # request is refused (422).
    fingerprint: str = Field(max_length=64)
    response_status: int
    # The JSON answered the first time (it may carry a name): encrypted like the other personal data.
    response_body: bytes = Field(sa_type=EncryptedBytes("idempotency_key.response_body"))
    created_at: datetime = utc_field(index=True)
