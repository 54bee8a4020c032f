"""The person a peer message is about (``subject`` in PROTOCOL.md), validated."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints, model_validator

from service import idnumbers
from service.models.verification import Sex


def plain_text(value: str) -> str:
    """Refuse control characters (NUL cannot even be stored in PostgreSQL); keep line breaks and tabs."""
    if any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in value):
        raise ValueError("contains control characters")
    return value


IdNumber = Annotated[str, StringConstraints(min_length=18, max_length=18), AfterValidator(idnumbers.validate)]
PersonName = Annotated[
    str, StringConstraints(strip_whitespace=True, min_length=1, max_length=64), AfterValidator(plain_text)
]
NodeId = Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{5}$")]


class Subject(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id_number: IdNumber = Field(examples=["411627199503080024"])
    name: PersonName
    sex: Sex
    birth_date: date

    @model_validator(mode="after")
    def _agrees_with_id_number(self) -> Subject:
        if idnumbers.birth_date(self.id_number) != self.birth_date:
            raise ValueError("birth_date disagrees with the ID number (digits 7-14)")
        if idnumbers.sex(self.id_number) != self.sex.value:
            raise ValueError("sex disagrees with the ID number (17th digit)")
        return self
