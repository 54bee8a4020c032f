"""Staff API for 生育登记 on commitment."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import Response

from service.births import service
from service.births.schemas import BirthPage, BirthRegistrationCreate, BirthRegistrationRead, BirthReview
from service.db import SessionDep, transaction
from service.errors import staff_errors
from service.exchange.security import SignerDep
from service.models import BirthRegistrationStatus
from service.schemas import DbId, PageNumber, PageSize
from service.staff.dependencies import Actor, Reader, Supervisor
from service.staff.idempotency import IdempotentWriteDep
from service.staff.service import audit

router = APIRouter(prefix="/api/v1/births", tags=["生育登记 births"])
ERRORS = staff_errors(404, 409, 422)


@router.post("", status_code=201, response_model=BirthRegistrationRead, responses=ERRORS)
def register(
    data: BirthRegistrationCreate, signer: SignerDep, staff: Actor, write: IdempotentWriteDep
) -> Response:
    """Register a first or second child at once on the signed commitment; the origin is asked to verify.

    With an ``Idempotency-Key`` a retry answers the first answer and registers nothing more."""
    with write.transaction() as tx:
        registration = service.register_birth(tx, signer, data, staff.username)
        assert registration.id is not None
        write.answer(service.read(tx, registration))  # what was committed, stored with the key
    write.after_commit(audit, staff, "birth.register", f"birth:{registration.id}")
    return write.response


@router.get("", response_model=BirthPage, responses=ERRORS)
def list_births(
    session: SessionDep,
    _staff: Reader,
    status: BirthRegistrationStatus | None = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> BirthPage:
    """``?status=review``: registrations the origin did not confirm."""
    items, total = service.list_registrations(session, status, page, page_size)
    return BirthPage(items=items, total=total)


@router.get("/{registration_id:int}", response_model=BirthRegistrationRead, responses=ERRORS)
def read(registration_id: DbId, session: SessionDep, staff: Reader) -> BirthRegistrationRead:
    result = service.get(session, registration_id)
    audit(staff, "birth.read", f"birth:{registration_id}")
    return result


@router.post("/{registration_id:int}/review", response_model=BirthRegistrationRead, responses=ERRORS)
def decide(registration_id: DbId, data: BirthReview, staff: Supervisor) -> BirthRegistrationRead:
    """A supervisor confirms a registration in review, or keeps it in review with a note."""
    with transaction() as tx:
        registration = service.review(tx, registration_id, data)
        result = service.read(tx, registration)  # what was committed, read before the commit
    audit(staff, "birth.review", f"birth:{registration_id}")
    return result
