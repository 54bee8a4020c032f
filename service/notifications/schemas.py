"""通报 payloads (docs/protocol.md), each ``kind`` with its own ``details``, and the staff API's models."""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    SkipValidation,
    StringConstraints,
    ValidationError,
    model_validator,
)
from pydantic_core import InitErrorDetails, PydanticCustomError

from service.clock import utcnow
from service.exchange.envelope import PeerDatetime
from service.exchange.history import MessageRead
from service.models import ContraceptionMethod, Direction, NotificationKind, NotificationStatus, Sex
from service.schemas import DbId
from service.sla.deadlines import SHANGHAI
from service.subjects import PLAIN_TEXT, NodeId, Subject, plain_text
from service.verification.schemas import SubjectRead

# The sender's clock may run up to the protocol's 300 s ahead of ours: its "today" may be our tomorrow.
CLOCK_SKEW = timedelta(seconds=300)


def _not_in_future(value: date) -> date:
    if value > (utcnow() + CLOCK_SKEW).astimezone(SHANGHAI).date():
        raise ValueError("must not be in the future")
    return value


# A date something happened: not in the future (and, checked with the subject, not before their birth).
EventDate = Annotated[date, AfterValidator(_not_in_future)]


def _short_text(max_length: int) -> Any:
    return Annotated[
        str,
        StringConstraints(strip_whitespace=True, min_length=1, max_length=max_length),
        AfterValidator(plain_text),
        PLAIN_TEXT,
    ]


class ContraceptionDetails(BaseModel):
    """避孕节育: the method in use and since when."""

    model_config = ConfigDict(extra="forbid")

    method: ContraceptionMethod
    since: EventDate


class PregnancyDetails(BaseModel):
    """妊娠: when the pregnancy was confirmed, the expected delivery and the weeks at confirmation."""

    model_config = ConfigDict(extra="forbid")

    confirmed_on: EventDate
    expected_delivery: date | None = Field(default=None, description="预产期: after confirmed_on")
    weeks: int | None = Field(default=None, ge=1, le=45, description="孕周")

    @model_validator(mode="after")
    def _delivery_after_confirmation(self) -> PregnancyDetails:
        if self.expected_delivery is not None and not (
            self.confirmed_on < self.expected_delivery <= self.confirmed_on + timedelta(weeks=45)
        ):
            raise _field_error("expected_delivery", "must be after confirmed_on and within 45 weeks of it")
        return self


class BirthDetails(BaseModel):
    """生育: the child's birth date, birth order and sex, and whether the birth is registered (生育登记)."""

    model_config = ConfigDict(extra="forbid")

    birth_date: EventDate
    birth_order: int = Field(ge=1, le=20)
    sex: Sex
    birth_registered: bool


class HealthCheckDetails(BaseModel):
    """康检 (三查): IUD (查环), pregnancy (查孕) and disease (查病) results."""

    model_config = ConfigDict(extra="forbid")

    checked_on: EventDate
    iud: Literal["normal", "displaced", "absent", "not_applicable"]
    pregnancy: Literal["positive", "negative"]
    disease: Literal["none", "found", "referred"]


class ArrivalDetails(BaseModel):
    """流入: the day of arrival and where in the host county the person lives."""

    model_config = ConfigDict(extra="forbid")

    arrived_on: EventDate
    address_district: Annotated[str, StringConstraints(pattern=r"^[1-9][0-9]{5}$")] | None = Field(
        default=None, description="6-digit code of the place in the host county"
    )


class DepartureDetails(BaseModel):
    """流出: the day of departure and, where known, the node the person went to."""

    model_config = ConfigDict(extra="forbid")

    departed_on: EventDate
    destination_node: NodeId | None = None


class HealthRecordTransferDetails(BaseModel):
    """健康档案转移: which record went to which institution, and when."""

    model_config = ConfigDict(extra="forbid")

    record_no: _short_text(64)  # type: ignore[valid-type]
    institution: _short_text(100)  # type: ignore[valid-type]
    transferred_on: EventDate


DETAILS: dict[NotificationKind, type[BaseModel]] = {
    NotificationKind.contraception: ContraceptionDetails,
    NotificationKind.pregnancy: PregnancyDetails,
    NotificationKind.birth: BirthDetails,
    NotificationKind.health_check: HealthCheckDetails,
    NotificationKind.arrival: ArrivalDetails,
    NotificationKind.departure: DepartureDetails,
    NotificationKind.health_record_transfer: HealthRecordTransferDetails,
}

Details = (
    ContraceptionDetails
    | PregnancyDetails
    | BirthDetails
    | HealthCheckDetails
    | ArrivalDetails
    | DepartureDetails
    | HealthRecordTransferDetails
)


def _field_error(field: str, reason: str) -> ValidationError:
    """A validation error located at ``field`` (a model validator's own errors have no location)."""
    return _located([_error(field, reason)])


def _error(field: str, reason: str) -> InitErrorDetails:
    return InitErrorDetails(type=PydanticCustomError("value_error", reason), loc=(field,), input=None)


def _located(errors: list[InitErrorDetails], *prefix: str) -> ValidationError:
    line_errors = [{**e, "loc": (*prefix, *e["loc"])} for e in errors]
    return ValidationError.from_exception_data("details", line_errors)  # type: ignore[arg-type]


def _as_init_errors(exc: ValidationError) -> list[InitErrorDetails]:
    return [
        InitErrorDetails(
            type=PydanticCustomError(e["type"], e["msg"]), loc=tuple(e["loc"]), input=e.get("input")
        )
        for e in exc.errors()
    ]


def _per_kind_schema(schema: dict[str, Any]) -> None:
    """Publish which ``details`` each ``kind`` takes (the field's ``anyOf`` alone would not say)."""
    options = schema["properties"]["details"]["anyOf"]
    schema["allOf"] = [
        {
            "if": {"properties": {"kind": {"const": kind.value}}, "required": ["kind"]},
            "then": {"properties": {"details": option}},
        }
        for kind, option in zip(DETAILS, options, strict=True)
    ]


class NotificationPayload(BaseModel):  # 通报
    model_config = ConfigDict(extra="forbid", json_schema_extra=_per_kind_schema)

    subject: Subject
    kind: NotificationKind
    occurred_on: EventDate
    details: Annotated[Details, SkipValidation] = Field(
        description="validated by kind: the kind's details model (see allOf), nothing else"
    )

    @model_validator(mode="before")
    @classmethod
    def _details_by_kind(cls, data: Any) -> Any:
        """Validate ``details`` with the model of ``kind`` (an unknown kind is reported on ``kind``)."""
        if not isinstance(data, dict) or "details" not in data:
            return data
        try:
            model = DETAILS[NotificationKind(str(data.get("kind")))]
        except ValueError:
            return data
        details = data["details"]
        if isinstance(details, BaseModel):
            details = details.model_dump()
        if not isinstance(details, dict):
            raise _field_error("details", "must be an object")
        try:
            return {**data, "details": model.model_validate(details)}
        except ValidationError as exc:
            raise _located(_as_init_errors(exc), "details") from None

    @model_validator(mode="after")
    def _not_before_birth(self) -> NotificationPayload:
        born = self.subject.birth_date
        if self.occurred_on < born:
            raise _field_error("occurred_on", _BEFORE_BIRTH)
        for name, value in self.details:
            if isinstance(value, date) and value < born:
                raise _located([_error(name, _BEFORE_BIRTH)], "details")
        return self


_BEFORE_BIRTH = "must not be before the subject's birth date"


class AckPayload(BaseModel):  # 接收确认
    model_config = ConfigDict(extra="forbid")

    acknowledged_at: PeerDatetime


class NotificationCreate(NotificationPayload):
    recipient: NodeId = Field(description="the county to notify (usually the person's origin)")
    person_id: DbId | None = Field(default=None, description="the register record it is about")


class NotificationSummary(BaseModel):
    id: int
    message_id: str
    direction: Direction
    peer: str
    status: NotificationStatus
    kind: NotificationKind
    overdue: bool = Field(description="incoming or outgoing, not acknowledged by due_at")
    overdue_at: datetime | None = Field(description="when the SLA sweep first found it overdue (kept)")
    subject_id_number_masked: str
    occurred_on: date
    person_id: int | None
    sent_at: datetime
    received_at: datetime | None
    due_at: datetime | None
    acknowledged_at: datetime | None
    ack_received_at: datetime | None
    auto_acknowledged: bool


class NotificationRead(NotificationSummary):
    subject: SubjectRead
    details: dict[str, Any]
    created_by: str | None
    messages: list[MessageRead] = Field(
        description="the conversation's messages; a payload's subject has id_number_masked, not the number"
    )


class Page(BaseModel):
    items: list[NotificationSummary]
    total: int
    page: int
    page_size: int
