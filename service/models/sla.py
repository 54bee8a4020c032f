"""Staff notices of the SLA sweeps: reminders before a deadline, overdue items, escalations."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import Index, Text, UniqueConstraint
from sqlmodel import Field, SQLModel

from service.models.base import utc_field
from service.models.staff import Role
from service.models.verification import Direction


class NoticeKind(StrEnum):
    reminder = "reminder"  # 到期提醒: the deadline is near
    overdue = "overdue"  # 已超期: the deadline passed without the answer or 接收确认
    escalation = "escalation"  # 督办: the same, told to the supervisor (负责人)
    # 查验提示: a certificate look-up by a node without standing was answered (policy any_trusted,
    # docs/protocol.md "Standing"); the item is the person; raised again (unread) at each one.
    flagged_lookup = "flagged_lookup"


class ItemType(StrEnum):
    verification = "verification"  # a 协查 case (verification_case.id)
    notification = "notification"  # a 通报 (notification.id)
    person = "person"  # a person in the register (person.id): flagged_lookup notices


class StaffNotice(SQLModel, table=True):  # 待办提醒
    """One notice to a role about one item; at most one of each kind per item, whatever the clock does."""

    __tablename__ = "staff_notice"
    __table_args__ = (
        UniqueConstraint("kind", "item_type", "item_id", name="uq_staff_notice_item"),
        Index("ix_staff_notice_inbox", "role", "read_at", "created_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    kind: NoticeKind = Field(max_length=16)
    item_type: ItemType = Field(max_length=16)
    item_id: int
    role: Role = Field(max_length=16)  # operator for reminders and overdue, supervisor for escalations
    due_at: datetime = utc_field()  # the item's deadline when the notice was made
    created_at: datetime = utc_field()
    read_at: datetime | None = utc_field(nullable=True)  # the role's notice: read by one, read for all
    read_by: str | None = Field(default=None, max_length=64)


class MonthlyReport(SQLModel, table=True):  # 月报
    """The stored monthly SLA report of one month (``YYYY-MM``, Asia/Shanghai), as JSON."""

    __tablename__ = "monthly_report"

    id: int | None = Field(default=None, primary_key=True)
    month: str = Field(max_length=7, unique=True)
    generated_at: datetime = utc_field()
    content: str = Field(sa_type=Text)


class EarlyWarning(SQLModel, table=True):  # 预警
    """An open item first flagged as likely to miss its deadline (service/sla/warnings.py).

    Kept as raised, once per item, so that a month's warnings can be compared with the items
    that were actually late (precision and recall)."""

    __tablename__ = "early_warning"
    __table_args__ = (
        UniqueConstraint("item_type", "item_id", name="uq_early_warning_item"),
        Index("ix_early_warning_due_at", "due_at"),
    )

    id: int | None = Field(default=None, primary_key=True)
    item_type: ItemType = Field(max_length=16)
    item_id: int
    direction: Direction = Field(max_length=16)
    due_at: datetime = utc_field()  # the item's deadline when the warning was raised
    raised_at: datetime = utc_field()
    reason: str = Field(sa_type=Text)  # the explanation shown to staff, in Chinese
    probability: float | None = None  # the estimated chance of being on time; None: too little history
