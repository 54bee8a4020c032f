"""Staff API for the migrant register (thin: the logic is in service.py and importer.py)."""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter, Request, UploadFile
from fastapi.responses import Response

from service.db import SessionDep, transaction
from service.errors import PayloadTooLarge, ValidationFailed, staff_errors
from service.exchange.security import SettingsDep, SignerDep
from service.people import importer, service
from service.people.schemas import (
    ImportReport,
    MergeRequest,
    Page,
    PersonCreate,
    PersonRead,
    PersonSearch,
    PersonUpdate,
)
from service.schemas import DbId, PageNumber, PageSize
from service.staff.dependencies import Actor, Reader, Supervisor
from service.staff.idempotency import IdempotentWriteDep
from service.staff.reveal import RevealedIdNumber, RevealRequest, revealed
from service.staff.service import audit
from service.subjects import NodeId

router = APIRouter(prefix="/api/v1/people", tags=["流动人口 register"])


def _errors(*statuses: int) -> dict[int | str, dict[str, Any]]:
    return staff_errors(
        *statuses, codes={409: "duplicate_person, invalid_state", 422: "validation_failed, invalid_file"}
    )


@router.post("", status_code=201, response_model=PersonRead, responses=_errors(409, 422))
def create(data: PersonCreate, signer: SignerDep, staff: Actor, write: IdempotentWriteDep) -> Response:
    """Register a person (one record per ID number); look-alikes come back in ``possible_duplicates``.

    An arrival at this node from another county sends the arrival notification (流入通报) by itself.
    With an ``Idempotency-Key`` a retry answers the first answer (not 409 duplicate_person).
    """
    service.validate(data)  # the rules first, outside the transaction
    with write.transaction() as tx:
        person, _ = service.create_person(tx, signer, data, staff.username)
        assert person.id is not None
        write.answer(service.get_person(tx, person.id))  # what was committed, stored with the key
    write.after_commit(audit, staff, "people.create", f"person:{person.id}")
    return write.response


@router.get("", response_model=Page, responses=_errors(422))
def listing(
    request: Request,
    session: SessionDep,
    staff: Reader,
    origin_node: NodeId | None = None,
    host_node: NodeId | None = None,
    arrived_from: date | None = None,
    arrived_to: date | None = None,
    include_merged: bool = False,
    page: PageNumber = 1,
    page_size: PageSize = 50,
) -> Page:
    """Records by origin, host and arrival, the ID number masked; merged ones left out. A search by
    ID number or name is ``POST /api/v1/people/search`` (never in a URL): ``id_number`` or ``name``
    in the query is refused (422), so that a client still using them learns it."""
    if {"id_number", "name"} & set(request.query_params):
        raise ValidationFailed(
            "search by ID number or name with POST /api/v1/people/search (a URL ends up in access logs)",
            field="id_number" if "id_number" in request.query_params else "name",
        )
    return _search(
        session,
        staff,
        PersonSearch(
            origin_node=origin_node,
            host_node=host_node,
            arrived_from=arrived_from,
            arrived_to=arrived_to,
            include_merged=include_merged,
            page=page,
            page_size=page_size,
        ),
    )


@router.post("/search", response_model=Page, responses=_errors(422))
def search(data: PersonSearch, session: SessionDep, staff: Reader) -> Page:
    """Records matching every filter given: the ID number exact, the name exact after normalising
    (NFKC, no spaces, case-folded; names are encrypted and found by a blind index). The ID number
    comes back masked; merged ones left out unless ``include_merged``."""
    return _search(session, staff, data)


def _search(session: SessionDep, staff: Reader, data: PersonSearch) -> Page:
    items, total = service.search(
        session, **data.model_dump(exclude={"page", "page_size"}), page=data.page, page_size=data.page_size
    )
    used = [k for k, v in (("id_number", data.id_number), ("name", data.name)) if v is not None]
    audit(staff, "people.search", f"filters:{','.join(used) or '-'} results:{total}")
    return Page(items=items, total=total, page=data.page, page_size=data.page_size)


@router.post("/import", response_model=ImportReport, responses=_errors(413, 422))
def import_file(
    file: UploadFile,
    signer: SignerDep,
    settings: SettingsDep,
    staff: Actor,
    dry_run: bool = False,
) -> ImportReport:
    """Import a register file (CSV in UTF-8 or GBK/GB18030, or XLSX); the report lists each bad row.

    Nothing of a bad row is stored; good rows are stored batch by batch; ``dry_run`` stores nothing.
    """
    # Each batch in a short transaction of its own, the file read and checked outside any
    # (importer.import_people): the node answers other requests meanwhile.
    limit = settings.people_import_max_bytes
    content = file.file.read(limit + 1)
    if len(content) > limit:
        raise PayloadTooLarge(f"the file is larger than {limit} bytes")
    table = importer.read_table(content, importer.ImportLimits.of(settings))
    report = importer.import_people(
        signer, table, staff.username, dry_run=dry_run, batch_size=settings.people_import_batch_size
    )
    audit(staff, "people.import", f"rows:{report.rows} stored:{report.stored} bad:{report.bad}")
    return report


@router.get("/{person_id:int}", response_model=PersonRead, responses=_errors(404))
def read(person_id: DbId, session: SessionDep, staff: Reader) -> PersonRead:
    """One record with its children and look-alikes; the ID number masked (the full one: ``…/reveal``)."""
    person = service.get_person(session, person_id)
    audit(staff, "people.read", f"person:{person_id}")
    return person


@router.post("/{person_id:int}/reveal", response_model=RevealedIdNumber, responses=_errors(404, 422))
def reveal(
    person_id: DbId, data: RevealRequest, session: SessionDep, staff: Actor, response: Response
) -> RevealedIdNumber:
    """查看完整身份证号: the record's full ID number, in this answer only, for a reason from the list
    (operator or supervisor; an auditor may not). Audited as ``people.reveal_id`` with the record and
    the reason, never the number."""
    number = service.id_number_of(session, person_id)
    response.headers["Cache-Control"] = "no-store"
    return revealed(staff, "people.reveal_id", f"person:{person_id}", data.reason, number)


@router.patch("/{person_id:int}", response_model=PersonRead, responses=_errors(404, 409, 422))
def update(person_id: DbId, data: PersonUpdate, staff: Actor) -> PersonRead:
    """Change the fields given; the whole record is checked again."""
    with transaction() as tx:
        service.update_person(tx, person_id, data, staff.username)
        result = service.get_person(tx, person_id)  # what was committed, read before the commit
    audit(staff, "people.update", f"person:{person_id}")
    return result


@router.post("/{person_id:int}/merge", response_model=PersonRead, responses=_errors(404, 409, 422))
def merge(person_id: DbId, data: MergeRequest, staff: Supervisor) -> PersonRead:
    """清理重复人口信息: keep this record, fold ``duplicate_id`` into it (supervisor or admin)."""
    with transaction() as tx:
        service.merge(tx, person_id, data.duplicate_id, staff.username)
        result = service.get_person(tx, person_id)  # what was committed, read before the commit
    audit(staff, "people.merge", f"person:{person_id} duplicate:{data.duplicate_id}")
    return result
