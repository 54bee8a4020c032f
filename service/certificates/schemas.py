"""婚育证明: the certificate as docs/protocol.md shows it, the lookup message, and the staff API's models."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated, Any

from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    SerializerFunctionWrapHandler,
    StringConstraints,
    field_validator,
    model_serializer,
    model_validator,
)

from service import idnumbers
from service.models import CertificateStatus, ContraceptionMethod, LookupPurpose, MaritalStatus, Sex
from service.schemas import DbId
from service.subjects import PLAIN_TEXT, IdNumber, PersonName, plain_text

Reason = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=200),
    AfterValidator(plain_text),
    PLAIN_TEXT,
]


# --- the certificate (docs/protocol.md "Answers") ------------------------------------------------


class Holder(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id_number: IdNumber
    name: PersonName
    sex: Sex
    birth_date: date


class ChildEntry(BaseModel):  # 子女
    model_config = ConfigDict(extra="forbid")

    birth_order: int = Field(ge=1, le=20)
    birth_date: date
    sex: Sex


class Contraception(BaseModel):  # 避孕节育措施
    model_config = ConfigDict(extra="forbid")

    method: ContraceptionMethod
    since: date | None = None


class CertificateDoc(BaseModel):
    """The certificate; only the fields a purpose may see are set, and only set fields are sent."""

    model_config = ConfigDict(extra="forbid")

    certificate_no: str = Field(max_length=32)
    holder: Holder
    marital_status: MaritalStatus | None = None
    marriage_date: date | None = None
    children: list[ChildEntry] | None = None
    contraception: Contraception | None = None
    status: CertificateStatus
    issued_by: str = Field(pattern=r"^[1-9][0-9]{5}$", description="the origin county's node code")
    issued_at: AwareDatetime
    updated_at: AwareDatetime

    @model_serializer(mode="wrap")
    def _only_disclosed(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        return {k: v for k, v in data.items() if k in self.model_fields_set}


class LookupPayload(BaseModel):  # certificate.lookup
    model_config = ConfigDict(extra="forbid")

    id_number: IdNumber
    name: PersonName
    purpose: LookupPurpose


class LookupAnswer(BaseModel):
    """``{"found": true, "certificate": {...}}`` or ``{"found": false}``."""

    model_config = ConfigDict(extra="forbid")

    found: bool
    certificate: CertificateDoc | None = None

    @model_serializer(mode="wrap")
    def _no_null_certificate(self, handler: SerializerFunctionWrapHandler) -> dict[str, Any]:
        data: dict[str, Any] = handler(self)
        if data.get("certificate") is None:
            data.pop("certificate", None)
        return data

    @model_validator(mode="after")
    def _certificate_iff_found(self) -> LookupAnswer:
        if self.found != (self.certificate is not None):
            raise ValueError("certificate is given exactly when found is true")
        return self


# --- staff API: the origin's registry -------------------------------------------------------


class CertificateIssue(BaseModel):
    model_config = ConfigDict(extra="forbid")

    person_id: DbId


class ChildCorrection(ChildEntry):
    name: PersonName | None = None


class CertificateCorrect(BaseModel):
    """Corrections to what the certificate shows; omitted fields stay as they are."""

    model_config = ConfigDict(extra="forbid")

    reason: Reason
    marital_status: MaritalStatus | None = None
    marriage_date: date | None = None
    contraception: Contraception | None = None
    children: list[ChildCorrection] | None = Field(
        default=None, max_length=20, description="the full list of children (replaces the recorded one)"
    )

    @field_validator("children")
    @classmethod
    def _distinct_orders(cls, value: list[ChildCorrection] | None) -> list[ChildCorrection] | None:
        if value is not None and len({c.birth_order for c in value}) != len(value):
            raise ValueError("birth_order must be distinct")
        return value


class CertificateCancel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    reason: Reason


def masked_holder(certificate: dict[str, Any]) -> dict[str, Any]:
    """A certificate as staff reads show it: ``holder.id_number`` becomes ``holder.id_number_masked``
    (the full number: ``POST /api/v1/people/{person_id}/reveal``)."""
    holder = certificate.get("holder")
    if not isinstance(holder, dict) or not isinstance(holder.get("id_number"), str):
        return certificate
    rest = {k: v for k, v in holder.items() if k != "id_number"}
    return {**certificate, "holder": {"id_number_masked": idnumbers.mask(holder["id_number"]), **rest}}


class VersionRead(BaseModel):
    version: int
    changed_by: str | None
    changed_at: datetime
    reason: str | None
    certificate: dict[str, Any] = Field(
        description="the certificate as it read then (holder.id_number_masked)"
    )

    @field_validator("certificate")
    @classmethod
    def _masked(cls, value: dict[str, Any]) -> dict[str, Any]:
        return masked_holder(value)


class CertificateRead(BaseModel):
    id: int
    person_id: int
    certificate_no: str
    status: CertificateStatus
    version: int
    certificate: dict[str, Any] = Field(
        description="the full certificate as it reads now, the holder's ID number masked (id_number_masked)"
    )
    versions: list[VersionRead]

    @field_validator("certificate")
    @classmethod
    def _masked(cls, value: dict[str, Any]) -> dict[str, Any]:
        return masked_holder(value)


# --- staff API: the host's lookups (查验) ----------------------------------------------------


class LookupCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    id_number: IdNumber
    name: PersonName
    purpose: LookupPurpose = LookupPurpose.residence_check


class Discrepancy(BaseModel):
    field: str
    in_register: Any = Field(description="what this node's register says")
    in_certificate: Any = Field(description="what the origin's certificate says")


class SignedAnswer(BaseModel):
    """The origin's answer exactly as received, with its RFC 9421 signature (evidence)."""

    body: str
    keyid: str
    signature_input: str
    signature: str


class DiscrepancyRequest(BaseModel):
    suggested: bool
    case_id: int | None = None


class CheckSummary(BaseModel):
    id: int
    person_id: int | None
    id_number_masked: str
    origin_node: str
    purpose: LookupPurpose
    found: bool
    discrepancies: list[Discrepancy]
    discrepancy_case_id: int | None
    checked_at: datetime
    checked_by: str | None


class LookupResult(BaseModel):
    check_id: int
    origin_node: str
    found: bool
    certificate: dict[str, Any] | None
    discrepancies: list[Discrepancy]
    discrepancy_request: DiscrepancyRequest
    signed_answer: SignedAnswer


class CheckPage(BaseModel):
    items: list[CheckSummary]
    total: int
    page: int
    page_size: int


class CheckRate(BaseModel):  # 婚育证明查验率
    year: int
    numerator: int
    denominator: int
    rate: float | None = Field(description="numerator / denominator; null when nobody is in scope")


class PersonCheckStatus(BaseModel):
    person_id: int
    year: int
    in_scope: bool = Field(description="counted in the node's denominator for this year")
    first_check_at: datetime | None
    checks_in_year: int
    checked: bool
