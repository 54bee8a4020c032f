"""协查 message payloads (docs/protocol.md) and the staff API's models."""

from __future__ import annotations

from datetime import date, datetime
from typing import Annotated

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from service.exchange.envelope import PeerDatetime
from service.exchange.history import MessageRead
from service.models import CaseStatus, Direction, Outcome, Priority, Topic
from service.subjects import PLAIN_TEXT, NodeId, Subject, plain_text

Text = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=2000),
    AfterValidator(plain_text),
    PLAIN_TEXT,
]
Reference = Annotated[
    str,
    StringConstraints(strip_whitespace=True, min_length=1, max_length=64),
    AfterValidator(plain_text),
    PLAIN_TEXT,
]


class RequestPayload(BaseModel):  # 协查请求
    model_config = ConfigDict(extra="forbid")

    subject: Subject
    topic: Topic
    priority: Priority
    key_target: bool
    question: Text
    reference: Reference | None = None


class AckPayload(BaseModel):  # 签收
    model_config = ConfigDict(extra="forbid")

    acknowledged_at: PeerDatetime
    promised_by: date | None = Field(default=None, description='"will answer by" (interim answer)')


class ReplyPayload(BaseModel):  # 协查反馈
    model_config = ConfigDict(extra="forbid")

    outcome: Outcome
    findings: Text
    answered_at: PeerDatetime


class VerificationRequestCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    recipient: NodeId = Field(description="the origin county's node code")
    subject: Subject
    topic: Topic
    priority: Priority = Priority.normal
    key_target: bool = False
    question: Text
    reference: Reference | None = None


class AckCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    promised_by: date | None = None


class ReplyCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    outcome: Outcome
    findings: Text


class SubjectRead(BaseModel):
    """The subject as reads show it: the ID number is the masked ``subject_id_number_masked`` beside it
    (the full number: ``POST …/reveal``)."""

    name: str
    sex: str
    birth_date: date


class CaseSummary(BaseModel):
    id: int
    request_id: str
    direction: Direction
    peer: str
    status: CaseStatus
    overdue: bool = Field(description="not answered and due_at has passed (now)")
    overdue_at: datetime | None = Field(description="when the SLA sweep first found it overdue (kept)")
    subject_id_number_masked: str
    topic: Topic
    priority: Priority
    key_target: bool
    reference: str | None
    sent_at: datetime
    received_at: datetime | None
    due_at: datetime | None
    acknowledged_at: datetime | None
    answered_at: datetime | None


class CaseRead(CaseSummary):
    subject: SubjectRead
    question: str
    promised_by: date | None
    outcome: Outcome | None
    findings: str | None
    created_by: str | None
    messages: list[MessageRead] = Field(
        description="the conversation's messages; a payload's subject has id_number_masked, not the number"
    )


class Page(BaseModel):
    items: list[CaseSummary]
    total: int
    page: int
    page_size: int
