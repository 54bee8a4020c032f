"""The staff API's models for notices."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from service.models import ItemType, NoticeKind, Role


class NoticeRead(BaseModel):
    id: int
    kind: NoticeKind = Field(
        description="reminder (到期提醒), overdue (已超期), escalation (督办) or flagged_lookup "
        "(a certificate look-up of the person by a node without standing, answered under the "
        "any_trusted policy: docs/protocol.md section 13)"
    )
    item_type: ItemType
    item_id: int
    item_path: str = Field(description="the item in the staff API")
    role: Role = Field(
        description="operator for reminders and overdue items; supervisor for escalations, flagged look-ups"
    )
    due_at: datetime
    created_at: datetime
    read_at: datetime | None
    read_by: str | None


class NoticePage(BaseModel):
    items: list[NoticeRead]
    total: int
    page: int
    page_size: int
