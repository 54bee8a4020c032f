"""Staff API for 协查 cases (thin: the logic is in service.py)."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.db import SessionDep, transaction
from service.errors import staff_errors
from service.exchange.security import SignerDep
from service.models import CaseStatus, Direction
from service.schemas import DbId, PageNumber, PageSize
from service.staff.dependencies import Actor, Reader
from service.staff.idempotency import IdempotentWriteDep
from service.staff.reveal import RevealedIdNumber, RevealRequest, revealed
from service.staff.service import audit
from service.subjects import NodeId
from service.verification import service
from service.verification.schemas import AckCreate, CaseRead, Page, ReplyCreate, VerificationRequestCreate

router = APIRouter(prefix="/api/v1/verification-requests", tags=["协查 verification"])


_errors = staff_errors


@router.post("", status_code=201, response_model=CaseRead, responses=_errors(409, 422))
def create(
    data: VerificationRequestCreate, signer: SignerDep, staff: Actor, write: IdempotentWriteDep
) -> Response:
    """Send a 协查 request to another county (queued in the outbox, delivered by the relay).

    With an ``Idempotency-Key`` a retry answers the first answer and sends nothing more."""
    with write.transaction() as tx:
        case = service.create_outgoing(tx, signer, data, staff.username)
        assert case.id is not None
        write.answer(service.get_case(tx, case.id))  # what was committed, stored with the key
    write.after_commit(audit, staff, "verification.create", f"case:{case.id}")
    return write.response


@router.get("", response_model=Page, responses=_errors())
def list_cases(
    session: SessionDep,
    _staff: Reader,
    direction: Direction | None = None,
    status: CaseStatus | None = None,
    overdue: bool | None = None,
    peer: NodeId | None = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> Page:
    """Cases, soonest deadline first; e.g. ``?direction=incoming&status=received`` is the 待办 queue."""
    items, total = service.list_cases(
        session,
        direction=direction,
        status=status,
        overdue=overdue,
        peer=peer,
        page=page,
        page_size=page_size,
    )
    return Page(items=items, total=total, page=page, page_size=page_size)


@router.get("/{case_id:int}", response_model=CaseRead, responses=_errors(404))
def read(case_id: DbId, session: SessionDep, staff: Reader) -> CaseRead:
    """One case with its full message history and receipts; the subject's ID number masked (the full
    one: ``…/reveal``)."""
    case = service.get_case(session, case_id)
    audit(staff, "verification.read", f"case:{case_id}")
    return case


@router.post("/{case_id:int}/reveal", response_model=RevealedIdNumber, responses=_errors(404, 422))
def reveal(
    case_id: DbId, data: RevealRequest, session: SessionDep, staff: Actor, response: Response
) -> RevealedIdNumber:
    """查看完整身份证号: the subject's full ID number, in this answer only, for a reason from the list
    (operator or supervisor; an auditor may not). Audited as ``verification.reveal_id`` with the case
    and the reason, never the number."""
    number = service.subject_id_number(session, case_id)
    response.headers["Cache-Control"] = "no-store"
    return revealed(staff, "verification.reveal_id", f"case:{case_id}", data.reason, number)


@router.post("/{case_id:int}/ack", response_model=CaseRead, responses=_errors(404, 409))
def acknowledge(case_id: DbId, data: AckCreate, signer: SignerDep, staff: Actor) -> CaseRead:
    """签收 an incoming request, optionally promising an answer date."""
    with transaction() as tx:
        service.acknowledge(tx, signer, case_id, data)
        result = service.get_case(tx, case_id)  # what was committed, read before the commit
    audit(staff, "verification.ack", f"case:{case_id}")
    return result


@router.post("/{case_id:int}/reply", response_model=CaseRead, responses=_errors(404, 409))
def reply(case_id: DbId, data: ReplyCreate, signer: SignerDep, staff: Actor) -> CaseRead:
    """反馈: answer an incoming request (once; an answered case is closed)."""
    with transaction() as tx:
        service.reply(tx, signer, case_id, data)
        result = service.get_case(tx, case_id)  # what was committed, read before the commit
    audit(staff, "verification.reply", f"case:{case_id}")
    return result
