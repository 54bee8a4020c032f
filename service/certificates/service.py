"""婚育证明, origin side: the registry of electronic certificates and their versions.

"流出地已婚育龄妇女只要信息登记入库即视为婚育证明办理": a woman aged 18–49 in this node's own
register (``origin_node`` is this node) with her marriage data recorded holds a certificate. It is
valid until cancelled and lapses by itself when she is past 49 (50 or older); ``lapsed`` is worked
out when the certificate is read, never stored. Each change — issue, correction, cancellation — is a
new version whose snapshot is the certificate exactly as the protocol shows it, with who and when.
"""

from __future__ import annotations

import json
from datetime import date
from typing import Any

from sqlalchemy import func
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from service.certificates.schemas import (
    CertificateCorrect,
    CertificateDoc,
    CertificateRead,
    ChildCorrection,
    ChildEntry,
    Contraception,
    Holder,
    VersionRead,
)
from service.clock import utcnow
from service.errors import InvalidState, NotFound, ValidationFailed
from service.exchange.envelope import canonical_json
from service.models import (
    BirthRegistration,
    Certificate,
    CertificateStatus,
    CertificateVersion,
    Child,
    LocalNode,
    Person,
    Sex,
)
from service.sla.deadlines import SHANGHAI

MIN_AGE, MAX_AGE = 18, 49


def today() -> date:
    """The date in China (a certificate lapses on the holder's 50th birthday there)."""
    return utcnow().astimezone(SHANGHAI).date()


def age_on(birth_date: date, on: date) -> int:
    return on.year - birth_date.year - ((on.month, on.day) < (birth_date.month, birth_date.day))


def local_node_id(session: Session) -> str:
    """This node's code ("" in a database without a node, which issues nothing)."""
    node = session.exec(select(LocalNode)).first()
    return node.node_id if node is not None else ""


def ineligibility(person: Person, node_id: str, on: date) -> str | None:
    """Why ``person`` cannot hold a certificate of this node, or None if she can."""
    if person.merged_into is not None:
        return "the record was merged into another one"
    if person.origin_node != node_id:
        return "certificates are issued by the origin: this person's origin is another node"
    if person.sex != Sex.F:
        return "a certificate is for women"
    if not MIN_AGE <= age_on(person.birth_date, on) <= MAX_AGE:
        return f"the holder must be {MIN_AGE}–{MAX_AGE} years old"
    if person.marital_status is None:
        return "marital_status is not recorded"
    return None


def status_of(certificate: Certificate, person: Person, on: date) -> CertificateStatus:
    if certificate.cancelled:
        return CertificateStatus.cancelled
    if age_on(person.birth_date, on) > MAX_AGE:
        return CertificateStatus.lapsed
    return CertificateStatus.valid


def certificate_of(session: Session, person_id: int) -> Certificate | None:
    return session.exec(select(Certificate).where(Certificate.person_id == person_id)).first()


# --- issuing ---------------------------------------------------------------------------------


def ensure_certificate(session: Session, person: Person, staff: str | None) -> Certificate | None:
    """The person's certificate, issued now if she qualifies and has none (None if she does not)."""
    assert person.id is not None
    existing = certificate_of(session, person.id)
    if existing is not None:
        return existing
    if ineligibility(person, local_node_id(session), today()) is not None:
        return None
    for attempt in range(3):
        try:
            with session.begin_nested():  # a concurrent issue took the number: take the next one
                certificate = Certificate(
                    certificate_no=_next_number(session, person.origin_node), person_id=person.id
                )
                session.add(certificate)
                session.flush()
            break
        except IntegrityError:
            existing = certificate_of(session, person.id)
            if existing is not None:
                return existing
            if attempt == 2:
                raise
    _record_version(session, certificate, person, staff, "issued (信息登记入库)", first=True)
    return certificate


def issue(session: Session, person_id: int, staff: str | None) -> Certificate:
    """The staff action: issue the certificate of a person in the register, saying why not if not."""
    person = session.get(Person, person_id)
    if person is None:
        raise NotFound(f"no person {person_id} in the register")
    existing = certificate_of(session, person_id)
    if existing is not None:
        raise InvalidState(f"person {person_id} already holds certificate {existing.id}")
    reason = ineligibility(person, local_node_id(session), today())
    if reason is not None:
        raise ValidationFailed(reason, field="person_id")
    certificate = ensure_certificate(session, person, staff)
    assert certificate is not None
    return certificate


def _next_number(session: Session, node_id: str) -> str:
    prefix = f"{node_id}-{today().year}-"
    last = session.exec(
        select(func.max(Certificate.certificate_no)).where(col(Certificate.certificate_no).startswith(prefix))
    ).one()
    sequence = int(last[len(prefix) :]) + 1 if last else 1
    return f"{prefix}{sequence:06d}"


# --- the certificate document ----------------------------------------------------------------


def document(session: Session, certificate: Certificate, person: Person) -> CertificateDoc:
    """The whole certificate as it reads today (every field set)."""
    children = session.exec(
        select(Child).where(Child.person_id == person.id).order_by(col(Child.birth_order))
    ).all()
    contraception = (
        Contraception(method=person.contraception_method, since=person.contraception_since)
        if person.contraception_method is not None
        else None
    )
    return CertificateDoc(
        certificate_no=certificate.certificate_no,
        holder=Holder(
            id_number=person.id_number, name=person.name, sex=person.sex, birth_date=person.birth_date
        ),
        marital_status=person.marital_status,
        marriage_date=person.marriage_date,
        children=[
            ChildEntry(birth_order=c.birth_order, birth_date=c.birth_date, sex=c.sex) for c in children
        ],
        contraception=contraception,
        status=status_of(certificate, person, today()),
        issued_by=person.origin_node,
        issued_at=certificate.issued_at,
        updated_at=certificate.updated_at,
    )


def _record_version(
    session: Session,
    certificate: Certificate,
    person: Person,
    staff: str | None,
    reason: str,
    *,
    first: bool = False,
) -> None:
    now = utcnow()
    if not first:
        certificate.version += 1
        certificate.updated_at = now
    session.add(certificate)
    session.flush()
    assert certificate.id is not None
    snapshot = canonical_json(document(session, certificate, person).model_dump(mode="json"))
    session.add(
        CertificateVersion(
            certificate_id=certificate.id,
            version=certificate.version,
            snapshot=snapshot.decode("utf-8"),
            changed_by=staff,
            changed_at=now,
            reason=reason,
        )
    )
    session.flush()


def _content(session: Session, certificate: Certificate, person: Person) -> dict[str, Any]:
    """What a change could alter (not the time stamps)."""
    data: dict[str, Any] = document(session, certificate, person).model_dump(mode="json")
    return {k: v for k, v in data.items() if k not in {"updated_at", "issued_at"}}


def sync_certificate(session: Session, person: Person, staff: str | None, reason: str) -> Certificate | None:
    """After the register changed a person: issue her certificate, or version what it now shows."""
    assert person.id is not None
    certificate = certificate_of(session, person.id)
    if certificate is None:
        return ensure_certificate(session, person, staff)
    last = session.exec(
        select(CertificateVersion)
        .where(CertificateVersion.certificate_id == certificate.id)
        .order_by(col(CertificateVersion.version).desc())
    ).first()
    now = _content(session, certificate, person)
    if last is None or {k: v for k, v in json.loads(last.snapshot).items() if k in now} != now:
        _record_version(session, certificate, person, staff, reason)
    return certificate


# --- staff changes ---------------------------------------------------------------------------


def _holder(session: Session, certificate_id: int) -> tuple[Certificate, Person]:
    certificate = session.get(Certificate, certificate_id)
    if certificate is None:
        raise NotFound(f"no certificate {certificate_id}")
    person = session.get(Person, certificate.person_id)
    assert person is not None
    return certificate, person


def correct(
    session: Session, certificate_id: int, data: CertificateCorrect, staff: str | None
) -> Certificate:
    """Correct what the certificate shows (the person's record): a new version with who and why."""
    certificate, person = _holder(session, certificate_id)
    if certificate.cancelled:
        raise InvalidState("a cancelled certificate is not corrected")
    given = data.model_fields_set - {"reason"}
    if not given:
        raise ValidationFailed("give at least one field to correct", field="body")
    before = _content(session, certificate, person)
    _apply(session, person, data, given)
    person.updated_at, person.updated_by = utcnow(), staff
    session.add(person)
    session.flush()
    if _content(session, certificate, person) == before:
        raise ValidationFailed("the correction changes nothing the certificate shows", field="body")
    _record_version(session, certificate, person, staff, data.reason)
    return certificate


def _apply(session: Session, person: Person, data: CertificateCorrect, given: set[str]) -> None:
    on = today()
    if "marital_status" in given:
        if data.marital_status is None:
            raise ValidationFailed("a certificate needs a marital status", field="marital_status")
        person.marital_status = data.marital_status
    if "marriage_date" in given:
        _check_date(data.marriage_date, person, on, "marriage_date")
        person.marriage_date = data.marriage_date
    if "contraception" in given:
        method = data.contraception.method if data.contraception else None
        since = data.contraception.since if data.contraception else None
        _check_date(since, person, on, "contraception.since")
        person.contraception_method, person.contraception_since = method, since
    if "children" in given:
        children = data.children or []
        for i, child in enumerate(children):
            _check_date(child.birth_date, person, on, f"children.{i}.birth_date")
        _replace_children(session, person, children)


def _check_date(value: date | None, person: Person, on: date, field: str) -> None:
    if value is not None and not person.birth_date < value <= on:
        raise ValidationFailed("must lie after the holder's birth date and not in the future", field=field)


def _replace_children(session: Session, person: Person, wanted: list[ChildCorrection]) -> None:
    rows = {c.birth_order: c for c in session.exec(select(Child).where(Child.person_id == person.id))}
    orders = {c.birth_order for c in wanted}
    for order, row in rows.items():
        if order in orders:
            continue
        registered = session.exec(
            select(BirthRegistration).where(BirthRegistration.child_id == row.id)
        ).first()
        if registered is not None:
            raise InvalidState(f"child {order} has a birth registration and cannot be removed")
        session.delete(row)
    session.flush()
    assert person.id is not None
    for child in wanted:
        row = rows.get(child.birth_order) or Child(
            person_id=person.id, birth_order=child.birth_order, birth_date=child.birth_date, sex=child.sex
        )
        row.birth_date, row.sex = child.birth_date, child.sex
        if child.name is not None:
            row.name = child.name
        session.add(row)
    session.flush()


def cancel(session: Session, certificate_id: int, reason: str, staff: str | None) -> Certificate:
    certificate, person = _holder(session, certificate_id)
    if certificate.cancelled:
        raise InvalidState("the certificate is already cancelled")
    certificate.cancelled = True
    _record_version(session, certificate, person, staff, reason)
    return certificate


# --- reading ---------------------------------------------------------------------------------


def read(session: Session, certificate_id: int) -> CertificateRead:
    certificate, person = _holder(session, certificate_id)
    assert certificate.id is not None
    versions = session.exec(
        select(CertificateVersion)
        .where(CertificateVersion.certificate_id == certificate.id)
        .order_by(col(CertificateVersion.version))
    ).all()
    doc = document(session, certificate, person)
    return CertificateRead(
        id=certificate.id,
        person_id=certificate.person_id,
        certificate_no=certificate.certificate_no,
        status=doc.status,
        version=certificate.version,
        certificate=doc.model_dump(mode="json"),
        versions=[
            VersionRead(
                version=v.version,
                changed_by=v.changed_by,
                changed_at=v.changed_at,
                reason=v.reason,
                certificate=json.loads(v.snapshot),
            )
            for v in versions
        ],
    )
