"""生育登记 on commitment (首接责任制、承诺制): registered at once, verified with the origin after."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlmodel import Field, SQLModel

from service.models.base import utc_field
from service.signing.pii import EncryptedText


class BirthRegistrationStatus(StrEnum):
    registered = "registered"  # on the commitment; the origin is being asked
    confirmed = "confirmed"  # the origin's reply confirmed it
    review = "review"  # the origin's reply did not confirm: staff must look


class BirthRegistration(SQLModel, table=True):  # 生育登记
    __tablename__ = "birth_registration"

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True)
    child_id: int = Field(foreign_key="child.id", unique=True)
    commitment_signed_on: date  # 承诺书 date
    status: BirthRegistrationStatus = Field(max_length=16)
    case_id: int | None = Field(default=None, foreign_key="verification_case.id", unique=True)
    # staff's free text: may name her (encrypted at rest, service/signing/pii.py)
    review_note: str | None = Field(default=None, sa_type=EncryptedText("birth_registration.review_note"))
    registered_at: datetime = utc_field(default_now=True)
    registered_by: str | None = Field(default=None, max_length=64)
