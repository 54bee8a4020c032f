"""通报: one-way notifications of a service or event, and their acknowledgement (接收确认)."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from service.models.base import utc_field
from service.models.verification import Direction, Sex
from service.notifications.kinds import NotificationKind
from service.signing import pii
from service.signing.pii import EncryptedText

__all__ = ["Notification", "NotificationKind", "NotificationStatus"]


class NotificationStatus(StrEnum):
    queued = "queued"  # outgoing, no receipt yet
    delivered = "delivered"  # outgoing, the peer's receipt is stored
    received = "received"  # incoming, waiting for 接收确认
    acknowledged = "acknowledged"  # 已确认 (both sides)


class Notification(SQLModel, table=True):  # 通报
    __tablename__ = "notification"
    __table_args__ = (
        Index("ix_notification_queue", "direction", "status", "due_at"),
        Index("ix_notification_sent", "direction", "sent_at", "id"),  # 已发, newest first (keyset)
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=36, unique=True)
    direction: Direction = Field(max_length=16)
    peer: str = Field(max_length=6, index=True)
    kind: NotificationKind = Field(max_length=32)
    status: NotificationStatus = Field(max_length=16)
    subject_id_number: str = Field(max_length=18, sa_type=EncryptedText("notification.subject_id_number"))
    subject_id_number_index: str | None = Field(
        default=None,
        max_length=64,
        index=True,
        nullable=False,
        sa_column_kwargs={"default": pii.blind_index_default("subject_id_number", pii.ID_NUMBER)},
    )
    subject_name: str = Field(max_length=64, sa_type=EncryptedText("notification.subject_name"))
    subject_sex: Sex = Field(max_length=1)
    subject_birth_date: date
    occurred_on: date
    details: str = Field(sa_type=EncryptedText("notification.details"))  # JSON, validated per kind
    person_id: int | None = Field(default=None, foreign_key="person.id")
    sent_at: datetime = utc_field()
    received_at: datetime | None = utc_field(nullable=True)  # the receipt's: starts the ack clock
    due_at: datetime | None = utc_field(nullable=True)
    acknowledged_at: datetime | None = utc_field(nullable=True)
    ack_received_at: datetime | None = utc_field(nullable=True)
    auto_acknowledged: bool = False
    overdue_at: datetime | None = utc_field(nullable=True)  # when the SLA sweep found it past due_at
    created_by: str | None = Field(default=None, max_length=64)
    assigned_to: str | None = Field(default=None, max_length=64, index=True)  # staff username (领取/指派)
    updated_at: datetime = utc_field(default_now=True)


pii.keep_indexed(Notification, [("subject_id_number", "subject_id_number_index", pii.ID_NUMBER)])
