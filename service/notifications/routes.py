"""Staff API for 通报 (thin: the logic is in service.py)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.db import SessionDep, transaction
from service.errors import staff_errors
from service.exchange.security import SignerDep
from service.models import Direction, NotificationKind, NotificationStatus
from service.notifications import service
from service.notifications.schemas import NotificationCreate, NotificationRead, Page
from service.schemas import DbId, PageNumber, PageSize
from service.staff.dependencies import Actor, Reader
from service.staff.idempotency import IdempotentWriteDep
from service.staff.reveal import RevealedIdNumber, RevealRequest, revealed
from service.staff.service import audit
from service.subjects import NodeId

router = APIRouter(prefix="/api/v1/notifications", tags=["通报 notifications"])


_errors = staff_errors


@router.post("", status_code=201, response_model=NotificationRead, responses=_errors(409, 422))
def create(data: NotificationCreate, signer: SignerDep, staff: Actor, write: IdempotentWriteDep) -> Response:
    """Send a 通报 to another county (queued in the outbox, delivered by the relay).

    With an ``Idempotency-Key`` a retry answers the first answer and sends nothing more."""
    with write.transaction() as tx:
        notification = service.create_outgoing(tx, signer, data, staff.username)
        assert notification.id is not None
        write.answer(service.get_notification(tx, notification.id))  # what was committed, stored with the key
    write.after_commit(audit, staff, "notification.create", f"notification:{notification.id}")
    return write.response


@router.get("", response_model=Page, responses=_errors())
def list_notifications(
    session: SessionDep,
    _staff: Reader,
    direction: Direction | None = None,
    status: NotificationStatus | None = None,
    kind: NotificationKind | None = None,
    overdue: bool | None = None,
    peer: NodeId | None = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> Page:
    """Soonest ack deadline first; ``?direction=incoming&status=received`` is the 待办 queue."""
    items, total = service.list_notifications(
        session,
        direction=direction,
        status=status,
        kind=kind,
        overdue=overdue,
        peer=peer,
        page=page,
        page_size=page_size,
    )
    return Page(items=items, total=total, page=page, page_size=page_size)


@router.get("/{notification_id:int}", response_model=NotificationRead, responses=_errors(404))
def read(notification_id: DbId, session: SessionDep, staff: Reader) -> NotificationRead:
    """One notification with its details, message history and receipts; the subject's ID number masked
    (the full one: ``…/reveal``)."""
    notification = service.get_notification(session, notification_id)
    audit(staff, "notification.read", f"notification:{notification_id}")
    return notification


@router.post("/{notification_id:int}/reveal", response_model=RevealedIdNumber, responses=_errors(404, 422))
def reveal(
    notification_id: DbId, data: RevealRequest, session: SessionDep, staff: Actor, response: Response
) -> RevealedIdNumber:
    """查看完整身份证号: the subject's full ID number, in this answer only, for a reason from the list
    (operator or supervisor; an auditor may not). Audited as ``notification.reveal_id`` with the
    notification and the reason, never the number."""
    number = service.subject_id_number(session, notification_id)
    response.headers["Cache-Control"] = "no-store"
    return revealed(staff, "notification.reveal_id", f"notification:{notification_id}", data.reason, number)


@router.post("/{notification_id:int}/ack", response_model=NotificationRead, responses=_errors(404, 409))
def acknowledge(notification_id: DbId, signer: SignerDep, staff: Actor) -> NotificationRead:
    """接收确认: acknowledge an incoming notification (the ack is sent to its sender)."""
    with transaction() as tx:
        service.acknowledge(tx, signer, notification_id)
        result = service.get_notification(tx, notification_id)  # what was committed, read before the commit
    audit(staff, "notification.ack", f"notification:{notification_id}")
    return result
