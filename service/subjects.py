"""The person a peer message is about (``subject`` in docs/protocol.md), validated."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    GetJsonSchemaHandler,
    StringConstraints,
    model_validator,
)
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import CoreSchema

from service import idnumbers
from service.models.verification import Sex


def plain_text(value: str) -> str:
    """Refuse control characters (NUL cannot even be stored in PostgreSQL); keep line breaks and tabs."""
    if any((ord(c) < 32 and c not in "\n\t") or ord(c) == 127 for c in value):
        raise ValueError("contains control characters")
    return value


@dataclass(frozen=True)
class Published:
    """JSON Schema keywords that say a rule a validator enforces, for clients to check in advance."""

    keywords: dict[str, Any]

    def __hash__(self) -> int:
        return hash(tuple(sorted(self.keywords)))

    def __get_pydantic_json_schema__(
        self, schema: CoreSchema, handler: GetJsonSchemaHandler
    ) -> JsonSchemaValue:
        return {**handler(schema), **self.keywords}


# What plain_text() refuses, as a pattern (ECMA-262): no C0 control character but tab and line feed, no DEL.
PLAIN_TEXT = Published({"pattern": r"^[^\u0000-\u0008\u000B-\u001F\u007F]*$"})
ID_NUMBER = Published(
    {
        # The shape, with digits 7-14 a plausible date; the check character cannot be a pattern.
        "pattern": r"^[1-9][0-9]{9}(0[1-9]|1[0-2])(0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx]$",
        "format": "gb11643",
        "description": "居民身份证号 (GB 11643-1999): 17 digits and a check character, a digit or X, that is"
        " the ISO 7064 MOD 11-2 checksum of the 17 digits; digits 7-14 are the birth date (YYYYMMDD)",
    }
)

IdNumber = Annotated[
    str, StringConstraints(min_length=18, max_length=18), AfterValidator(idnumbers.validate), ID_NUMBER
]
PersonName = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(plain_text),
    PLAIN_TEXT,
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
