"""婚育证明: the origin's electronic certificate, its versions, and the lookups on both sides."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, Text
from sqlmodel import Field, SQLModel

from service.models.base import utc_field
from service.signing import pii
from service.signing.pii import EncryptedBytes, EncryptedText


class CertificateStatus(StrEnum):
    valid = "valid"
    cancelled = "cancelled"
    lapsed = "lapsed"  # computed: the holder is past 49 (never stored)


class LookupPurpose(StrEnum):
    residence_check = "residence_check"
    service = "service"
    birth_registration = "birth_registration"


class LookupStanding(StrEnum):
    """Why the origin answered a look-up (docs/protocol.md, "Standing"), or ``none``."""

    host = "host"  # the register gives the asking node as her host (现居住地)
    arrival = "arrival"  # the asking node notified her arrival (流入通报), and no departure since
    case = "case"  # an open 协查 with the asking node about her (residence_check only)
    none = "none"  # no standing: refused, or answered and flagged (policy any_trusted)


class Certificate(SQLModel, table=True):  # 电子婚育证明 (origin side)
    __tablename__ = "certificate"

    id: int | None = Field(default=None, primary_key=True)
    certificate_no: str = Field(max_length=32, unique=True)
    person_id: int = Field(foreign_key="person.id", unique=True)
    cancelled: bool = False
    version: int = 1
    issued_at: datetime = utc_field(default_now=True)
    updated_at: datetime = utc_field(default_now=True)


class CertificateVersion(SQLModel, table=True):
    """Every change to a certificate: what it said, who changed it, when and why."""

    __tablename__ = "certificate_version"

    id: int | None = Field(default=None, primary_key=True)
    certificate_id: int = Field(foreign_key="certificate.id", index=True)
    version: int
    snapshot: str = Field(sa_type=EncryptedText("certificate_version.snapshot"))  # the certificate as JSON
    changed_by: str | None = Field(default=None, max_length=64)
    changed_at: datetime = utc_field(default_now=True)
    reason: str | None = Field(default=None, max_length=200)


class LookupLog(SQLModel, table=True):
    """Origin side: every lookup answered or refused — who asked, when, for what, with what standing,
    and the outcome; the person (by id) when the number is in the register, found or refused."""

    __tablename__ = "lookup_log"
    __table_args__ = (
        Index("ix_lookup_log_requester_at", "requester", "looked_up_at"),
        Index("ix_lookup_log_person_at", "person_id", "looked_up_at"),  # her page: who looked her up
        Index("ix_lookup_log_looked_up_at", "looked_up_at"),  # the evidence sealer reads by time
    )

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=36, unique=True)
    requester: str = Field(max_length=6)
    keyid: str = Field(max_length=40)
    purpose: LookupPurpose = Field(max_length=32)
    person_id: int | None = Field(default=None, foreign_key="person.id")
    id_number_masked: str = Field(max_length=18)
    found: bool
    looked_up_at: datetime = utc_field()
    # Recorded since migration 0015 (rows before it: standing None, never refused or flagged).
    standing: LookupStanding | None = Field(default=None, max_length=16)
    refused: bool = False
    flagged: bool = False  # told to the staff in a notice
    # For the evidence log, since migration 0016 (rows before it: None, and not sealed): the request
    # as signed (its body is not kept: it holds the ID number; its digest is) and what was answered
    # (status, Content-Digest of the answer body). The answer's signature: ``evidence_sent_answer``.
    request_path: str | None = Field(default=None, max_length=200)
    request_digest: str | None = Field(default=None, max_length=100)
    request_signature_input: str | None = Field(default=None, sa_type=Text)
    request_signature: str | None = Field(default=None, sa_type=Text)
    answer_status: int | None = None
    answer_digest: str | None = Field(default=None, max_length=100)


class CertificateCheck(SQLModel, table=True):  # 婚育证明查验 (host side)
    __tablename__ = "certificate_check"
    __table_args__ = (Index("ix_check_person_at", "person_id", "checked_at"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=36, unique=True)
    person_id: int | None = Field(default=None, foreign_key="person.id")
    id_number: str = Field(max_length=18, sa_type=EncryptedText("certificate_check.id_number"))
    id_number_index: str | None = Field(
        default=None,
        max_length=64,
        index=True,
        nullable=False,
        sa_column_kwargs={"default": pii.blind_index_default("id_number", pii.ID_NUMBER)},
    )
    # as the staff gave it: the 协查 subject if one is sent
    subject_name: str = Field(max_length=64, sa_type=EncryptedText("certificate_check.subject_name"))
    origin_node: str = Field(max_length=6)
    purpose: LookupPurpose = Field(max_length=32)
    found: bool
    discrepancy: str | None = Field(default=None, sa_type=EncryptedText("certificate_check.discrepancy"))
    discrepancy_case_id: int | None = Field(default=None, foreign_key="verification_case.id")
    checked_at: datetime = utc_field()
    checked_by: str | None = Field(default=None, max_length=64)
    # The origin's signed answer, kept as evidence exactly as received.
    response_body: bytes = Field(sa_type=EncryptedBytes("certificate_check.response_body"))
    response_signature_input: str = Field(sa_type=Text)
    response_signature: str = Field(sa_type=Text)


pii.keep_indexed(CertificateCheck, [("id_number", "id_number_index", pii.ID_NUMBER)])
