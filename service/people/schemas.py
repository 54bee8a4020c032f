"""The staff API's models for the migrant register (流动人口个案) and the rules a record must keep."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any
from zoneinfo import ZoneInfo

from pydantic import BaseModel, ConfigDict, Field, field_validator
from pydantic.json_schema import SkipJsonSchema

from service import idnumbers
from service.clock import utcnow
from service.errors import ProblemField
from service.models import ContraceptionMethod, MaritalStatus, Sex
from service.schemas import DbId
from service.subjects import IdNumber, NodeId, PersonName

CHINA = ZoneInfo("Asia/Shanghai")
CHILDBEARING_AGE = (15, 49)  # 育龄妇女
# Filled only for women of childbearing age: what the 婚育证明 needs.
WOMEN_ONLY = ("marital_status", "marriage_date", "contraception_method", "contraception_since")


def today() -> date:
    """The calendar date in China (the register's dates are local dates)."""
    return utcnow().astimezone(CHINA).date()


def age_on(birth_date: date, day: date) -> int:
    return day.year - birth_date.year - ((day.month, day.day) < (birth_date.month, birth_date.day))


class ChildIn(BaseModel):  # 子女
    model_config = ConfigDict(extra="forbid")

    birth_order: int = Field(ge=1, le=20, description="1 for the first child, 2 for the second, …")
    birth_date: date
    sex: Sex
    name: PersonName | None = None


class ChildRead(ChildIn):
    id: int


class PersonFields(BaseModel):
    """Everything but the ID number: what a PATCH may change."""

    model_config = ConfigDict(extra="forbid")

    name: PersonName
    sex: Sex
    birth_date: date
    origin_node: NodeId | None = Field(
        default=None, description="户籍地 county code; default: the ID number's first 6 digits"
    )
    host_node: NodeId = Field(description="现居住地 county code")
    arrived_on: date | None = Field(default=None, description="流入日期")
    departed_on: date | None = Field(default=None, description="流出日期")
    marital_status: MaritalStatus | None = None
    marriage_date: date | None = None
    contraception_method: ContraceptionMethod | None = None
    contraception_since: date | None = None
    children: list[ChildIn] = Field(default_factory=list, max_length=20)


class PersonCreate(PersonFields):
    id_number: IdNumber = Field(examples=["411627199503080024"])


# A record always has these: a PATCH may change them, never clear them (null is a 422).
NOT_NULL = ("name", "sex", "birth_date", "host_node", "children")


def _not_null_schema(schema: dict[str, Any]) -> None:
    """The fields of NOT_NULL take no null, so their (unsent) default of null is not published."""
    for name in NOT_NULL:
        schema["properties"][name].pop("default", None)


class PersonUpdate(BaseModel):
    """Only the fields given change; ``null`` clears an optional one; ``children`` replaces the list."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_not_null_schema)

    name: PersonName | SkipJsonSchema[None] = None
    sex: Sex | SkipJsonSchema[None] = None
    birth_date: date | SkipJsonSchema[None] = None
    origin_node: NodeId | None = Field(default=None, description="null: the ID number's first 6 digits")
    host_node: NodeId | SkipJsonSchema[None] = None
    arrived_on: date | None = None
    departed_on: date | None = None
    marital_status: MaritalStatus | None = None
    marriage_date: date | None = None
    contraception_method: ContraceptionMethod | None = None
    contraception_since: date | None = None
    children: Annotated[list[ChildIn], Field(max_length=20)] | SkipJsonSchema[None] = None

    @field_validator(*NOT_NULL, mode="before")
    @classmethod
    def _not_cleared(cls, value: Any) -> Any:
        if value is None:  # only a null that was sent: an omitted field keeps its default unvalidated
            raise ValueError("may be changed but not cleared")
        return value


class PersonSummary(BaseModel):
    id: int
    id_number_masked: str
    name: str
    sex: Sex
    birth_date: date
    origin_node: str
    host_node: str
    arrived_on: date | None
    departed_on: date | None
    merged_into: int | None


class PersonRead(BaseModel):
    id: int
    id_number_masked: str = Field(
        description="the ID number masked (4101**********123X); the full one: POST /api/v1/people/{id}/reveal"
    )
    name: str
    sex: Sex
    birth_date: date
    origin_node: str
    host_node: str
    arrived_on: date | None
    departed_on: date | None
    marital_status: MaritalStatus | None
    marriage_date: date | None
    contraception_method: ContraceptionMethod | None
    contraception_since: date | None
    children: list[ChildRead]
    merged_into: int | None
    possible_duplicates: list[int] = Field(
        description="records with the same name, birth date and sex but another ID number (not merged)"
    )
    created_at: datetime
    updated_at: datetime
    updated_by: str | None


class Page(BaseModel):
    items: list[PersonSummary]
    total: int
    page: int
    page_size: int


class PersonSearch(BaseModel):
    """A search of the register, sent as a body so that an ID number or a name never lands in a URL
    (and so in an access log). The name matches exactly, after normalising (NFKC, no spaces,
    case-folded): names are stored encrypted and found by a keyed blind index, so a partial name
    finds nothing."""

    model_config = ConfigDict(extra="forbid")

    id_number: IdNumber | None = None
    name: PersonName | None = None
    origin_node: NodeId | None = None
    host_node: NodeId | None = None
    arrived_from: date | None = None
    arrived_to: date | None = None
    include_merged: bool = False
    page: int = Field(default=1, ge=1, le=100_000, description="1 for the first page")
    page_size: int = Field(default=50, ge=1, le=200, description="items per page")


class MergeRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    duplicate_id: DbId = Field(description="the record to fold into this one (kept, marked merged)")


class BadRow(BaseModel):
    line: int = Field(description="line in the file (the header is line 1)")
    errors: list[ProblemField]


class LookalikeRow(BaseModel):
    line: int
    id: int | None = Field(description="the stored record (null in a dry run)")
    possible_duplicates: list[int]


class ImportReport(BaseModel):
    format: str = Field(description="csv or xlsx")
    encoding: str | None = Field(description="a CSV's encoding as detected: utf-8, utf-8-sig, gbk, gb18030")
    dry_run: bool
    rows: int
    stored: int
    bad: int
    bad_rows: list[BadRow] = Field(
        description="the first bad rows by line (YIPANQI_PEOPLE_IMPORT_MAX_REPORTED_ERRORS); `bad` counts all"
    )
    error_counts: dict[str, int] = Field(
        default_factory=dict, description="errors in all bad rows (listed or not), by column (field)"
    )
    possible_duplicates: list[LookalikeRow]
    notifications: int = Field(description="arrival notifications queued for the origins")
    certificates: int = Field(default=0, description="婚育证明 issued (women registered at their origin)")


def _dates_in_range(data: PersonCreate, day: date) -> list[ProblemField]:
    errors = []
    for name in ("birth_date", "arrived_on", "departed_on", "marriage_date", "contraception_since"):
        value: date | None = getattr(data, name)
        if value is None:
            continue
        if value > day:
            errors.append(ProblemField(field=name, reason="is in the future"))
        elif name != "birth_date" and value < data.birth_date:
            errors.append(ProblemField(field=name, reason="is before the birth date"))
    if data.arrived_on and data.departed_on and data.departed_on < data.arrived_on:
        errors.append(ProblemField(field="departed_on", reason="is before arrived_on"))
    return errors


def _women_fields(data: PersonCreate, day: date) -> list[ProblemField]:
    low, high = CHILDBEARING_AGE
    childbearing = data.sex is Sex.F and low <= age_on(data.birth_date, day) <= high
    errors = []
    if not childbearing:
        reason = f"only for women of childbearing age ({low}-{high})"
        errors += [ProblemField(field=f, reason=reason) for f in WOMEN_ONLY if getattr(data, f) is not None]
        return errors
    if data.marriage_date is not None and data.marital_status in (None, MaritalStatus.unmarried):
        reason = "needs a marital_status other than unmarried"
        errors.append(ProblemField(field="marriage_date", reason=reason))
    if data.contraception_since is not None and data.contraception_method is None:
        errors.append(ProblemField(field="contraception_since", reason="needs a contraception_method"))
    return errors


def _children(data: PersonCreate, day: date) -> list[ProblemField]:
    if not data.children:
        return []
    if data.sex is not Sex.F:
        return [ProblemField(field="children", reason="are recorded on the mother's record")]
    errors = []
    orders = sorted(c.birth_order for c in data.children)
    if orders != list(range(1, len(orders) + 1)):
        errors.append(ProblemField(field="children", reason="birth_order must be 1..n, each once"))
    for i, child in enumerate(data.children):
        where = f"children.{i}.birth_date"
        if child.birth_date <= data.birth_date:
            errors.append(ProblemField(field=where, reason="is not after the mother's birth"))
        elif child.birth_date > day:
            errors.append(ProblemField(field=where, reason="is in the future"))
    return errors


def check(data: PersonCreate, day: date | None = None) -> list[ProblemField]:
    """The rules across fields (empty when the record may be stored)."""
    day = day or today()
    errors = []
    if idnumbers.birth_date(data.id_number) != data.birth_date:
        errors.append(ProblemField(field="birth_date", reason="disagrees with the ID number (digits 7-14)"))
    if idnumbers.sex(data.id_number) != data.sex.value:
        errors.append(ProblemField(field="sex", reason="disagrees with the ID number (17th digit)"))
    return errors + _dates_in_range(data, day) + _women_fields(data, day) + _children(data, day)
