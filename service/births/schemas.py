"""生育登记 staff API models."""

from __future__ import annotations

from datetime import date, datetime

from pydantic import BaseModel, ConfigDict, Field

from service.models import BirthRegistrationStatus, Sex
from service.schemas import DbId
from service.subjects import PersonName
from service.verification.schemas import Text


class ChildCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    birth_date: date
    sex: Sex
    name: PersonName | None = None


class BirthRegistrationCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    person_id: DbId = Field(description="the mother, in this node's register")
    child: ChildCreate
    commitment_signed_on: date = Field(description="date of the signed commitment (承诺书)")


class BirthReview(BaseModel):
    """A supervisor's decision on a registration the origin did not confirm."""

    model_config = ConfigDict(extra="forbid")

    status: BirthRegistrationStatus
    note: Text


class BirthRegistrationRead(BaseModel):
    id: int
    person_id: int
    child_id: int
    birth_order: int
    child_birth_date: date
    commitment_signed_on: date
    status: BirthRegistrationStatus
    case_id: int | None
    case_status: str | None
    review_note: str | None
    registered_at: datetime
    registered_by: str | None


class BirthPage(BaseModel):
    items: list[BirthRegistrationRead]
    total: int
