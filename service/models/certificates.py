"""婚育证明: the origin's electronic certificate, its versions, and the lookups on both sides."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, LargeBinary, Text
from sqlmodel import Field, SQLModel

from service.models.base import utc_field


class CertificateStatus(StrEnum):
    valid = "valid"
    cancelled = "cancelled"
    lapsed = "lapsed"  # computed: the holder is past 49 (never stored)


class LookupPurpose(StrEnum):
    residence_check = "residence_check"
    service = "service"
    birth_registration = "birth_registration"


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
    snapshot: str = Field(sa_type=Text)  # the certificate as JSON at this version
    changed_by: str | None = Field(default=None, max_length=64)
    changed_at: datetime = utc_field(default_now=True)
    reason: str | None = Field(default=None, max_length=200)


class LookupLog(SQLModel, table=True):
    """Origin side: every lookup answered — who asked, when, for what, found or not."""

    __tablename__ = "lookup_log"
    __table_args__ = (Index("ix_lookup_log_requester_at", "requester", "looked_up_at"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=36, unique=True)
    requester: str = Field(max_length=6)
    keyid: str = Field(max_length=40)
    purpose: LookupPurpose = Field(max_length=32)
    person_id: int | None = Field(default=None, foreign_key="person.id")
    id_number_masked: str = Field(max_length=18)
    found: bool
    looked_up_at: datetime = utc_field()


class CertificateCheck(SQLModel, table=True):  # 婚育证明查验 (host side)
    __tablename__ = "certificate_check"
    __table_args__ = (Index("ix_check_person_at", "person_id", "checked_at"),)

    id: int | None = Field(default=None, primary_key=True)
    message_id: str = Field(max_length=36, unique=True)
    person_id: int | None = Field(default=None, foreign_key="person.id")
    id_number: str = Field(max_length=18, index=True)
    subject_name: str = Field(max_length=64)  # as the staff gave it: the 协查 subject if one is sent
    origin_node: str = Field(max_length=6)
    purpose: LookupPurpose = Field(max_length=32)
    found: bool
    discrepancy: str | None = Field(default=None, sa_type=Text)
    discrepancy_case_id: int | None = Field(default=None, foreign_key="verification_case.id")
    checked_at: datetime = utc_field()
    checked_by: str | None = Field(default=None, max_length=64)
    # The origin's signed answer, kept as evidence exactly as received.
    response_body: bytes = Field(sa_type=LargeBinary)
    response_signature_input: str = Field(sa_type=Text)
    response_signature: str = Field(sa_type=Text)
