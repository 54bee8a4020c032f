"""Staff API for notices (thin: the logic is in service.py)."""

from __future__ import annotations

from fastapi import APIRouter

from service.clock import utcnow
from service.db import SessionDep, transaction
from service.errors import staff_errors
from service.models import Role
from service.notices import service
from service.notices.schemas import NoticePage, NoticeRead
from service.schemas import DbId, PageNumber, PageSize
from service.staff.dependencies import Actor, Reader

router = APIRouter(prefix="/api/v1/notices", tags=["notices 待办提醒"])


@router.get(
    "",
    response_model=NoticePage,
    responses=staff_errors(422),
)
def list_notices(
    session: SessionDep,
    staff: Reader,
    role: Role | None = None,
    unread: bool | None = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> NoticePage:
    """Reminders, overdue items and (supervisors) escalations, newest first; ``?unread=true``: the inbox."""
    items, total = service.list_notices(
        session, staff, role=role, unread=unread, page=page, page_size=page_size
    )
    return NoticePage(items=items, total=total, page=page, page_size=page_size)


@router.post(
    "/{notice_id:int}/read",
    response_model=NoticeRead,
    responses=staff_errors(404),
)
def mark_read(notice_id: DbId, staff: Actor) -> NoticeRead:
    """Mark a notice read for its role (the first reader and time are kept)."""
    with transaction() as tx:
        return service.mark_read(tx, staff, notice_id, utcnow())
