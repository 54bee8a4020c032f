"""婚育证明查验, host side: look a certificate up at the origin, keep the signed answer, compare.

The origin is the person's ``origin_node`` in this node's register, or else the county code in the
ID number's first 6 digits; it must be in the directory. Each lookup is recorded as a
``CertificateCheck`` holding the origin's signed answer byte for byte.

Discrepancies compare what the origin disclosed with what this register holds, and only where the
register holds a value: ``marital_status``, ``marriage_date``, ``contraception`` (method), and
``children_count`` (when the register has the woman's marriage data, i.e. childbearing data was
entered). When the answer is ``found: false`` or disagrees, a ``certificate_discrepancy`` 协查 is
offered, or sent at once with ``certificate_discrepancy_auto_send``.
"""

from __future__ import annotations

import json
import re
from typing import Any

from pydantic import ValidationError
from sqlalchemy import func
from sqlmodel import Session, col, select

from service import idnumbers
from service.certificates.peer import LOOKUP, PATH
from service.certificates.schemas import (
    CertificateDoc,
    CheckPage,
    CheckSummary,
    Discrepancy,
    DiscrepancyRequest,
    LookupAnswer,
    LookupCreate,
    LookupPayload,
    LookupResult,
    SignedAnswer,
)
from service.clock import utcnow
from service.config import Settings
from service.db import transaction
from service.directory.service import get_peer
from service.errors import InvalidState, NotFound, ValidationFailed
from service.evidence.record import bound_request, record_sent
from service.exchange.client import PeerAnswer, PeerUnavailable, query_peer
from service.models import CertificateCheck, Child, Person, Priority, Sex, Topic, VerificationCase
from service.signing import pii
from service.signing.node import NodeSigner
from service.subjects import Subject
from service.verification.schemas import VerificationRequestCreate
from service.verification.service import create_outgoing

LABELS = {
    "marital_status": "婚姻状况",
    "marriage_date": "结婚日期",
    "contraception": "避孕节育措施",
    "children_count": "子女数",
}


def register_person(session: Session, id_number: str) -> Person | None:
    return session.exec(
        select(Person).where(
            Person.id_number_index == pii.blind_index(id_number, pii.ID_NUMBER),
            Person.merged_into == None,  # noqa: E711
        )
    ).first()


def origin_for(session: Session, signer: NodeSigner, id_number: str, person: Person | None) -> str:
    origin = person.origin_node if person is not None else id_number[:6]
    source = "the register" if person is not None else "the ID number's first 6 digits"
    if origin == signer.node_id:
        raise ValidationFailed(
            f"the origin ({source}) is this node: read the certificate in this node's registry",
            field="id_number",
        )
    if get_peer(session, origin) is None:
        raise ValidationFailed(
            f"the origin {origin} (from {source}) is not in the directory", field="id_number"
        )
    return origin


def lookup(
    session: Session, settings: Settings, signer: NodeSigner, data: LookupCreate, staff: str | None
) -> LookupResult:
    """Read (``session`` only reads), ask the origin with no transaction open, check its signed
    answer, then store the check in one short transaction."""
    person = register_person(session, data.id_number)
    origin = origin_for(session, signer, data.id_number, person)
    answer = query_peer(
        session,
        settings,
        signer,
        recipient=origin,
        path=PATH,
        message_type=LOOKUP,
        payload=LookupPayload(**data.model_dump()),
    )
    parsed = _parse(answer, data.id_number, origin)
    differences = discrepancies(session, person, parsed.certificate)
    check = CertificateCheck(
        message_id=answer.message_id,
        person_id=person.id if person is not None else None,
        id_number=data.id_number,
        subject_name=data.name,
        origin_node=origin,
        purpose=data.purpose,
        found=parsed.found,
        discrepancy=json.dumps([d.model_dump() for d in differences], ensure_ascii=False)
        if differences
        else None,
        checked_at=utcnow(),
        checked_by=staff,
        response_body=answer.body,
        response_signature_input=answer.signature.signature_input,
        response_signature=answer.signature.signature,
    )
    with transaction(session) as tx:
        tx.add(check)
        tx.flush()
        record_sent(tx, check.message_id, bound_request(answer.signature))  # for the evidence log
        if _suggested(check) and settings.certificate_discrepancy_auto_send:
            send_discrepancy(tx, signer, check, staff)
    return LookupResult(
        check_id=_id(check),
        origin_node=origin,
        found=parsed.found,
        certificate=parsed.certificate.model_dump(mode="json") if parsed.certificate else None,
        discrepancies=differences,
        discrepancy_request=DiscrepancyRequest(
            suggested=_suggested(check), case_id=check.discrepancy_case_id
        ),
        signed_answer=SignedAnswer(
            body=answer.body.decode("utf-8"),
            keyid=answer.signature.keyid,
            signature_input=answer.signature.signature_input,
            signature=answer.signature.signature,
        ),
    )


def _parse(answer: PeerAnswer, id_number: str, origin: str) -> LookupAnswer:
    try:
        parsed = LookupAnswer.model_validate_json(answer.body)
    except ValidationError as exc:
        raise PeerUnavailable(f"node {origin} answered with a body that does not validate") from exc
    certificate = parsed.certificate
    if certificate is not None and (
        certificate.holder.id_number != id_number or certificate.issued_by != origin
    ):
        raise PeerUnavailable(f"node {origin} answered about another certificate")
    return parsed


def discrepancies(
    session: Session, person: Person | None, certificate: CertificateDoc | None
) -> list[Discrepancy]:
    """Fields where the origin's disclosed certificate and this register both speak and disagree."""
    if person is None or certificate is None:
        return []
    shown = certificate.model_fields_set
    pairs: list[tuple[str, Any, Any]] = []
    if "marital_status" in shown and person.marital_status is not None:
        pairs.append(("marital_status", person.marital_status, certificate.marital_status))
    if "marriage_date" in shown and person.marriage_date is not None:
        pairs.append(("marriage_date", person.marriage_date, certificate.marriage_date))
    if "contraception" in shown and person.contraception_method is not None:
        method = certificate.contraception.method if certificate.contraception else None
        pairs.append(("contraception", person.contraception_method, method))
    if "children" in shown and person.marital_status is not None:
        count = session.exec(select(func.count()).where(Child.person_id == person.id)).one()
        pairs.append(("children_count", count, len(certificate.children or [])))
    return [
        Discrepancy(field=name, in_register=_plain(ours), in_certificate=_plain(theirs))
        for name, ours, theirs in pairs
        if ours != theirs
    ]


def _plain(value: Any) -> Any:
    return value if value is None or isinstance(value, int | str) else str(value)


def _suggested(check: CertificateCheck) -> bool:
    return not check.found or check.discrepancy is not None


def _id(check: CertificateCheck) -> int:
    assert check.id is not None
    return check.id


# --- the certificate_discrepancy 协查 ----------------------------------------------------------


def question(check: CertificateCheck) -> str:
    if not check.found:
        return "婚育证明查验未查到该对象的电子婚育证明，请核实其婚育情况并反馈。"
    parts = [
        f"{LABELS.get(d['field'], d['field'])}（本地登记：{d['in_register']}；"
        f"婚育证明：{d['in_certificate']}）"
        for d in json.loads(check.discrepancy or "[]")
    ]
    return f"婚育证明查验与本地登记不一致：{'；'.join(parts)}。请核实并反馈。"


def send_discrepancy(
    session: Session, signer: NodeSigner, check: CertificateCheck | int, staff: str | None
) -> VerificationCase:
    """Send the origin a certificate_discrepancy 协查 request about this check (once)."""
    if isinstance(check, int):
        # Locked (PostgreSQL): a double-click's second request waits and then finds the case sent.
        found = session.get(CertificateCheck, check, with_for_update=True)
        if found is None:
            raise NotFound(f"no certificate check {check}")
        check = found
    if check.discrepancy_case_id is not None:
        raise InvalidState(
            f"a 协查 request was already sent for this check (case {check.discrepancy_case_id})"
        )
    if not _suggested(check):
        raise InvalidState("the origin's answer agrees with the register: there is nothing to query")
    body = json.loads(check.response_body)
    subject = Subject(
        id_number=check.id_number,
        name=check.subject_name,
        sex=Sex(idnumbers.sex(check.id_number)),
        birth_date=idnumbers.birth_date(check.id_number),
    )
    request = VerificationRequestCreate(
        recipient=check.origin_node,
        subject=subject,
        topic=Topic.certificate_discrepancy,
        priority=Priority.normal,
        key_target=not check.found,  # 重点对象: holding no standard 婚育证明
        question=question(check),
        reference=body["certificate"]["certificate_no"] if check.found else None,
    )
    case = create_outgoing(session, signer, request, staff)
    check.discrepancy_case_id = case.id
    session.add(check)
    session.flush()
    return case


# --- reading ---------------------------------------------------------------------------------


def summary(check: CertificateCheck) -> CheckSummary:
    return CheckSummary(
        id=_id(check),
        person_id=check.person_id,
        id_number_masked=idnumbers.mask(check.id_number),
        origin_node=check.origin_node,
        purpose=check.purpose,
        found=check.found,
        discrepancies=[Discrepancy(**d) for d in json.loads(check.discrepancy or "[]")],
        discrepancy_case_id=check.discrepancy_case_id,
        checked_at=check.checked_at,
        checked_by=check.checked_by,
    )


_KEYID = re.compile(r';keyid="([^"]*)"')


def check_result(session: Session, check_id: int) -> LookupResult:
    """A stored check as its lookup answered it: the origin's signed answer, read back from the record.

    Every stored check's signature was verified when the answer came (``query_peer``), else none is kept.
    """
    check = session.get(CertificateCheck, check_id)
    if check is None:
        raise NotFound(f"no certificate check {check_id}")
    body = check.response_body.decode("utf-8")
    keyid = _KEYID.search(check.response_signature_input)
    return LookupResult(
        check_id=_id(check),
        origin_node=check.origin_node,
        found=check.found,
        # An answer emptied past its retention (service/evidence/) shows no certificate any more.
        certificate=json.loads(body).get("certificate") if check.found and body else None,
        discrepancies=[Discrepancy(**d) for d in json.loads(check.discrepancy or "[]")],
        discrepancy_request=DiscrepancyRequest(
            suggested=_suggested(check), case_id=check.discrepancy_case_id
        ),
        signed_answer=SignedAnswer(
            body=body,
            keyid=keyid.group(1) if keyid else "",
            signature_input=check.response_signature_input,
            signature=check.response_signature,
        ),
    )


def list_checks(session: Session, *, person_id: int | None, page: int, page_size: int) -> CheckPage:
    query = select(CertificateCheck)
    if person_id is not None:
        person = session.get(Person, person_id)
        if person is None:
            raise NotFound(f"no person {person_id} in the register")
        # By number: checks made before the record existed count for the person too.
        query = query.where(CertificateCheck.id_number_index == person.id_number_index)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(
        query.order_by(col(CertificateCheck.checked_at).desc(), col(CertificateCheck.id).desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    ).all()
    return CheckPage(items=[summary(c) for c in rows], total=total, page=page, page_size=page_size)
