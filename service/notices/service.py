"""Reading and marking staff notices: a notice belongs to a role, read by one of it, read for all."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from service.errors import NotFound
from service.models import ItemType, Role, Staff, StaffNotice
from service.notices.schemas import NoticeRead
from service.staff.dependencies import RoleForbidden

ITEM_PATHS = {
    ItemType.verification: "/api/v1/verification-requests/{id}",
    ItemType.notification: "/api/v1/notifications/{id}",
    ItemType.person: "/api/v1/people/{id}",  # flagged_lookup: a look-up of her without standing
}


def visible_roles(staff: Staff) -> tuple[Role, ...]:
    """Operators see the operators' notices; supervisors, admins and auditors also the escalations."""
    if staff.role == Role.operator:
        return (Role.operator,)
    return (Role.operator, Role.supervisor)


def list_notices(
    session: Session, staff: Staff, *, role: Role | None, unread: bool | None, page: int, page_size: int
) -> tuple[list[NoticeRead], int]:
    """Newest first; ``role`` narrows to one role's notices, ``unread`` to the (un)read ones."""
    roles = visible_roles(staff)
    if role is not None:
        if role not in roles:
            raise RoleForbidden(f"role {staff.role.value} may not read the {role.value}s' notices")
        roles = (role,)
    query = select(StaffNotice).where(col(StaffNotice.role).in_(roles))
    if unread is True:
        query = query.where(col(StaffNotice.read_at).is_(None))
    elif unread is False:
        query = query.where(col(StaffNotice.read_at).is_not(None))
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(
        query.order_by(col(StaffNotice.created_at).desc(), col(StaffNotice.id).desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    ).all()
    return [read_model(n) for n in rows], total


def mark_read(session: Session, staff: Staff, notice_id: int, now: datetime) -> NoticeRead:
    """Mark a notice read (once: a second call keeps the first reader and time)."""
    notice = session.get(StaffNotice, notice_id)
    if notice is None or notice.role not in visible_roles(staff):
        raise NotFound(f"no notice {notice_id}")
    if notice.read_at is None:
        notice.read_at, notice.read_by = now, staff.username
        session.add(notice)
        session.flush()
    return read_model(notice)


def read_model(notice: StaffNotice) -> NoticeRead:
    assert notice.id is not None
    return NoticeRead(
        id=notice.id,
        kind=notice.kind,
        item_type=notice.item_type,
        item_id=notice.item_id,
        item_path=ITEM_PATHS[notice.item_type].format(id=notice.item_id),
        role=notice.role,
        due_at=notice.due_at,
        created_at=notice.created_at,
        read_at=notice.read_at,
        read_by=notice.read_by,
    )
