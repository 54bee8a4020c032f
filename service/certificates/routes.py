"""Staff API for 婚育证明: the origin's registry, the host's lookups (查验) and the check rate."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from fastapi.responses import Response

from service.certificates import lookups, rates, service
from service.certificates.schemas import (
    CertificateCancel,
    CertificateCorrect,
    CertificateIssue,
    CertificateRead,
    CheckPage,
    CheckRate,
    CheckSummary,
    LookupCreate,
    LookupResult,
    PersonCheckStatus,
)
from service.db import SessionDep, transaction
from service.errors import staff_errors
from service.exchange.security import SettingsDep, SignerDep
from service.models import CertificateCheck
from service.schemas import DbId, PageNumber, PageSize
from service.staff.dependencies import Actor, Reader
from service.staff.idempotency import IdempotentWriteDep
from service.staff.service import audit

router = APIRouter(prefix="/api/v1/certificates", tags=["婚育证明 certificates"])

Year = Annotated[int, Query(ge=2000, le=2100, description="calendar year (Asia/Shanghai)")]

_errors = staff_errors


@router.post("", status_code=201, response_model=CertificateRead, responses=_errors(404, 409, 422))
def issue(data: CertificateIssue, staff: Actor, write: IdempotentWriteDep) -> Response:
    """Issue the certificate of a woman 18–49 in this node's own register (origin side).

    With an ``Idempotency-Key`` a retry answers the first answer and issues nothing more."""
    with write.transaction() as tx:
        certificate = service.issue(tx, data.person_id, staff.username)
        assert certificate.id is not None
        write.answer(service.read(tx, certificate.id))  # what was committed, stored with the key
    write.after_commit(audit, staff, "certificate.issue", f"certificate:{certificate.id}")
    return write.response


@router.post("/lookup", response_model=LookupResult, responses=_errors(409, 422, 502))
def lookup(
    data: LookupCreate, session: SessionDep, settings: SettingsDep, signer: SignerDep, staff: Actor
) -> LookupResult:
    """查验: ask the person's origin for her certificate; the signed answer is kept as the check."""
    result = lookups.lookup(session, settings, signer, data, staff.username)
    audit(staff, "certificate.lookup", f"check:{result.check_id}")
    return result


@router.get("/checks", response_model=CheckPage, responses=_errors(404))
def list_checks(
    session: SessionDep,
    _staff: Reader,
    person_id: DbId | None = None,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> CheckPage:
    """Checks made here, newest first; ``?person_id=`` for one person of the register."""
    return lookups.list_checks(session, person_id=person_id, page=page, page_size=page_size)


@router.post(
    "/checks/{check_id:int}/discrepancy-request",
    status_code=201,
    response_model=CheckSummary,
    responses=_errors(404, 409, 422),
)
def discrepancy_request(
    check_id: DbId, signer: SignerDep, staff: Actor, write: IdempotentWriteDep
) -> Response:
    """Send the origin the certificate_discrepancy 协查 this check suggested (7-day deadline).

    With an ``Idempotency-Key`` a retry answers the first answer (not 409) and sends nothing more."""
    with write.transaction() as tx:
        lookups.send_discrepancy(tx, signer, check_id, staff.username)
        check = tx.get(CertificateCheck, check_id)
        assert check is not None
        write.answer(lookups.summary(check))  # what was committed, stored with the key
    write.after_commit(audit, staff, "certificate.discrepancy_request", f"check:{check_id}")
    return write.response


@router.get("/check-rate", response_model=CheckRate, responses=_errors(422))
def check_rate(year: Year, session: SessionDep, _staff: Reader) -> CheckRate:
    """婚育证明查验率 of this node for a calendar year."""
    return rates.node_check_rate(session, year)


@router.get("/check-status", response_model=PersonCheckStatus, responses=_errors(404, 422))
def check_status(person_id: DbId, year: Year, session: SessionDep, staff: Reader) -> PersonCheckStatus:
    """Whether one person counts as checked for a year, and why."""
    status = rates.person_check_status(session, person_id, year)
    audit(staff, "certificate.check_status", f"person:{person_id}")
    return status


@router.get("/{certificate_id:int}", response_model=CertificateRead, responses=_errors(404))
def read(certificate_id: DbId, session: SessionDep, staff: Reader) -> CertificateRead:
    """The certificate as it reads now, with every version (who changed what, when, why)."""
    certificate = service.read(session, certificate_id)
    audit(staff, "certificate.read", f"certificate:{certificate_id}")
    return certificate


@router.patch("/{certificate_id:int}", response_model=CertificateRead, responses=_errors(404, 409, 422))
def correct(certificate_id: DbId, data: CertificateCorrect, staff: Actor) -> CertificateRead:
    """Correct what the certificate shows; each correction is a new version with its reason."""
    with transaction() as tx:
        service.correct(tx, certificate_id, data, staff.username)
        result = service.read(tx, certificate_id)  # what was committed, read before the commit
    audit(staff, "certificate.correct", f"certificate:{certificate_id}")
    return result


@router.post("/{certificate_id:int}/cancel", response_model=CertificateRead, responses=_errors(404, 409, 422))
def cancel(certificate_id: DbId, data: CertificateCancel, staff: Actor) -> CertificateRead:
    """Cancel (注销) a certificate; it stays on record with its versions."""
    with transaction() as tx:
        service.cancel(tx, certificate_id, data.reason, staff.username)
        result = service.read(tx, certificate_id)  # what was committed, read before the commit
    audit(staff, "certificate.cancel", f"certificate:{certificate_id}")
    return result
