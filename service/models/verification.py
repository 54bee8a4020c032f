"""协查 cases: a verification request and its ack (签收) and reply (反馈), either direction."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import Index
from sqlmodel import Field, SQLModel

from service.models.base import utc_field
from service.signing import pii
from service.signing.pii import EncryptedText


class Direction(StrEnum):
    outgoing = "outgoing"  # we asked (usually as host)
    incoming = "incoming"  # we are asked (usually as origin)


class CaseStatus(StrEnum):
    queued = "queued"  # outgoing: in the outbox, no receipt yet
    delivered = "delivered"  # outgoing: the peer's receipt is stored, its clock runs
    received = "received"  # incoming: waiting for 签收
    acknowledged = "acknowledged"  # 已签收
    answered = "answered"  # 已反馈: final


class Topic(StrEnum):
    marital_status = "marital_status"
    contraception = "contraception"
    birth_registration = "birth_registration"
    reward_eligibility = "reward_eligibility"
    record_accuracy = "record_accuracy"
    certificate_discrepancy = "certificate_discrepancy"


class Priority(StrEnum):
    urgent = "urgent"
    normal = "normal"


class Outcome(StrEnum):
    confirmed = "confirmed"
    not_confirmed = "not_confirmed"
    partially_confirmed = "partially_confirmed"
    not_found = "not_found"


class Sex(StrEnum):
    F = "F"
    M = "M"


class VerificationCase(SQLModel, table=True):  # 协查个案
    __tablename__ = "verification_case"
    __table_args__ = (
        Index("ix_case_queue", "direction", "status", "due_at"),
        Index("ix_case_sent", "direction", "sent_at", "id"),  # 已发, newest first (keyset)
    )

    id: int | None = Field(default=None, primary_key=True)
    request_message_id: str = Field(unique=True, max_length=36)
    direction: Direction = Field(max_length=16)
    peer: str = Field(max_length=6, index=True)  # the other county
    status: CaseStatus = Field(max_length=16)
    subject_id_number: str = Field(
        max_length=18, sa_type=EncryptedText("verification_case.subject_id_number")
    )
    subject_id_number_index: str | None = Field(
        default=None,
        max_length=64,
        index=True,
        nullable=False,
        sa_column_kwargs={"default": pii.blind_index_default("subject_id_number", pii.ID_NUMBER)},
    )
    subject_name: str = Field(max_length=64, sa_type=EncryptedText("verification_case.subject_name"))
    subject_sex: Sex = Field(max_length=1)
    subject_birth_date: date
    topic: Topic = Field(max_length=32)
    priority: Priority = Field(max_length=16)
    key_target: bool
    question: str = Field(sa_type=EncryptedText("verification_case.question"))
    reference: str | None = Field(default=None, max_length=64)
    sent_at: datetime = utc_field()
    received_at: datetime | None = utc_field(nullable=True)  # the receipt's: starts the clock
    due_at: datetime | None = utc_field(nullable=True)
    acknowledged_at: datetime | None = utc_field(nullable=True)
    promised_by: date | None = None
    answered_at: datetime | None = utc_field(nullable=True)
    reply_received_at: datetime | None = utc_field(nullable=True)  # the reply's receipt: judged on time
    outcome: Outcome | None = Field(default=None, max_length=32)
    overdue_at: datetime | None = utc_field(nullable=True)  # when the SLA sweep found it past due_at
    findings: str | None = Field(default=None, sa_type=EncryptedText("verification_case.findings"))
    created_by: str | None = Field(default=None, max_length=64)
    assigned_to: str | None = Field(default=None, max_length=64, index=True)  # staff username (领取/指派)
    updated_at: datetime = utc_field(default_now=True)
    # 催办 of an overdue outgoing request, recorded here (the protocol has no reminder message):
    # the latest chase and who made it (a staff user name).
    chased_at: datetime | None = utc_field(nullable=True)
    chased_by: str | None = Field(default=None, max_length=64)


pii.keep_indexed(VerificationCase, [("subject_id_number", "subject_id_number_index", pii.ID_NUMBER)])
