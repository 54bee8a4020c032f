"""Staff API over the outbox: see what is stuck, re-run dead messages."""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from fastapi import APIRouter
from pydantic import BaseModel

from service.db import SessionDep, transaction
from service.errors import staff_errors
from service.exchange import outbox
from service.models import OutboxStatus
from service.schemas import PageNumber, PageSize
from service.staff.dependencies import Admin
from service.staff.service import audit

router = APIRouter(prefix="/api/v1/outbox", tags=["exchange"])


class OutboxRead(BaseModel):
    message_id: str
    type: str
    recipient: str
    status: OutboxStatus
    attempts: int
    next_attempt_at: datetime
    created_at: datetime
    delivered_at: datetime | None
    last_error: str | None


class OutboxPage(BaseModel):
    items: list[OutboxRead]
    total: int


class Requeued(BaseModel):
    requeued: int


@router.get("", response_model=OutboxPage, responses=staff_errors(422))
def list_outbox(
    session: SessionDep,
    _staff: Admin,
    status: OutboxStatus | None = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> OutboxPage:
    rows, total = outbox.list_messages(session, status=status, page=page, page_size=page_size)
    return OutboxPage(items=[OutboxRead.model_validate(r, from_attributes=True) for r in rows], total=total)


@router.post("/dead/requeue", response_model=Requeued, responses=staff_errors())
def requeue_all(staff: Admin) -> Requeued:
    """Re-run every dead message with a fresh retry budget."""
    with transaction() as tx:
        count = outbox.requeue_dead(tx)
    audit(staff, "outbox.requeue", f"dead:{count}")
    return Requeued(requeued=count)


@router.post("/{message_id}/requeue", response_model=Requeued, responses=staff_errors(404, 409, 422))
def requeue_one(message_id: UUID, staff: Admin) -> Requeued:
    """Re-run one dead message (409 if it is not dead)."""
    with transaction() as tx:
        count = outbox.requeue_dead(tx, str(message_id))
    audit(staff, "outbox.requeue", f"message:{message_id}")
    return Requeued(requeued=count)
