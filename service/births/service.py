"""生育登记 on commitment (首接责任制、承诺制): the host registers a first or second child at once on
the person's signed commitment, then verifies with the origin by a ``birth_registration`` 协查.

The origin's reply decides: ``confirmed`` confirms the registration; any other outcome puts it in
``review`` for staff, who record their decision with a note.
"""

from __future__ import annotations

from datetime import date

from sqlalchemy import func
from sqlmodel import Session, col, select

from service.births.schemas import BirthRegistrationCreate, BirthRegistrationRead, BirthReview
from service.clock import utcnow
from service.errors import InvalidState, NotFound, ValidationFailed
from service.models import (
    BirthRegistration,
    BirthRegistrationStatus,
    Child,
    Outcome,
    Person,
    Priority,
    Sex,
    Topic,
    VerificationCase,
)
from service.signing.node import NodeSigner
from service.sla.deadlines import SHANGHAI
from service.subjects import Subject
from service.verification import service as verification
from service.verification.schemas import VerificationRequestCreate

MAX_CHILDREN_ON_COMMITMENT = 2


def register_birth(
    session: Session, signer: NodeSigner, data: BirthRegistrationCreate, staff: str | None
) -> BirthRegistration:
    """Register at once and ask the origin to verify (one transaction: child, registration, 协查)."""
    mother = _mother(session, signer, data.person_id)
    today = utcnow().astimezone(SHANGHAI).date()
    _check_dates(mother, data, today)
    children = session.exec(select(func.count()).where(Child.person_id == mother.id)).one()
    if children >= MAX_CHILDREN_ON_COMMITMENT:
        raise ValidationFailed(
            f"registration on commitment covers a first or second child; this would be child {children + 1}",
            field="child",
        )
    assert mother.id is not None
    child = Child(
        person_id=mother.id,
        birth_order=children + 1,
        birth_date=data.child.birth_date,
        sex=data.child.sex,
        name=data.child.name,
    )
    session.add(child)
    session.flush()
    case = verification.create_outgoing(
        session, signer, _request(mother, child, data.commitment_signed_on), staff
    )
    assert child.id is not None
    registration = BirthRegistration(
        person_id=mother.id,
        child_id=child.id,
        commitment_signed_on=data.commitment_signed_on,
        status=BirthRegistrationStatus.registered,
        case_id=case.id,
        registered_by=staff,
    )
    session.add(registration)
    session.flush()
    return registration


def _mother(session: Session, signer: NodeSigner, person_id: int) -> Person:
    mother = session.get(Person, person_id)
    if mother is None or mother.merged_into is not None:
        raise NotFound(f"no person {person_id} in the register")
    if mother.sex != Sex.F:
        raise ValidationFailed("the person registering a birth must be the mother", field="person_id")
    if mother.host_node != signer.node_id or mother.origin_node == signer.node_id:
        raise ValidationFailed(
            "only a migrant living here registers a birth here (首接责任制)", field="person_id"
        )
    return mother


def _check_dates(mother: Person, data: BirthRegistrationCreate, today: date) -> None:
    if data.child.birth_date > today:
        raise ValidationFailed("the child's birth date is in the future", field="child.birth_date")
    if data.child.birth_date.year - mother.birth_date.year < 15:
        raise ValidationFailed(
            "the child's birth date is not plausible for this mother", field="child.birth_date"
        )
    if not data.child.birth_date <= data.commitment_signed_on <= today:
        raise ValidationFailed(
            "the commitment is signed on or after the birth and not in the future",
            field="commitment_signed_on",
        )


def _request(mother: Person, child: Child, signed_on: date) -> VerificationRequestCreate:
    subject = Subject(
        id_number=mother.id_number, name=mother.name, sex=mother.sex, birth_date=mother.birth_date
    )
    question = (
        f"生育登记（承诺制）：本地已于{signed_on.isoformat()}凭本人承诺书登记第{child.birth_order}孩"
        f"（出生日期{child.birth_date.isoformat()}），请核实该对象婚育情况。"
    )
    return VerificationRequestCreate(
        recipient=mother.origin_node,
        subject=subject,
        topic=Topic.birth_registration,
        priority=Priority.normal,
        key_target=True,  # gave birth this year: a key target (重点对象)
        question=question,
    )


def _on_reply(session: Session, case: VerificationCase) -> None:
    if case.topic != Topic.birth_registration:
        return
    registration = session.exec(select(BirthRegistration).where(BirthRegistration.case_id == case.id)).first()
    if registration is None or registration.status != BirthRegistrationStatus.registered:
        return
    if case.outcome == Outcome.confirmed:
        registration.status = BirthRegistrationStatus.confirmed
    else:
        registration.status = BirthRegistrationStatus.review
        registration.review_note = f"户籍地反馈: {case.outcome.value if case.outcome else '-'}"
    session.add(registration)
    session.flush()


verification.on_reply(_on_reply)


def review(session: Session, registration_id: int, decision: BirthReview) -> BirthRegistration:
    registration = session.get(BirthRegistration, registration_id)
    if registration is None:
        raise NotFound(f"no birth registration {registration_id}")
    if registration.status != BirthRegistrationStatus.review:
        raise InvalidState(
            f"only a registration in review can be decided; this one is {registration.status.value}"
        )
    if decision.status == BirthRegistrationStatus.registered:
        raise ValidationFailed("a decision confirms the registration or keeps it in review", field="status")
    registration.status = decision.status
    registration.review_note = decision.note
    session.add(registration)
    session.flush()
    return registration


def read(session: Session, registration: BirthRegistration) -> BirthRegistrationRead:
    child = session.get(Child, registration.child_id)
    case = session.get(VerificationCase, registration.case_id) if registration.case_id else None
    assert child is not None
    assert registration.id is not None
    return BirthRegistrationRead(
        id=registration.id,
        person_id=registration.person_id,
        child_id=registration.child_id,
        birth_order=child.birth_order,
        child_birth_date=child.birth_date,
        commitment_signed_on=registration.commitment_signed_on,
        status=registration.status,
        case_id=registration.case_id,
        case_status=case.status.value if case else None,
        review_note=registration.review_note,
        registered_at=registration.registered_at,
        registered_by=registration.registered_by,
    )


def get(session: Session, registration_id: int) -> BirthRegistrationRead:
    registration = session.get(BirthRegistration, registration_id)
    if registration is None:
        raise NotFound(f"no birth registration {registration_id}")
    return read(session, registration)


def list_registrations(
    session: Session, status: BirthRegistrationStatus | None, page: int, page_size: int
) -> tuple[list[BirthRegistrationRead], int]:
    query = select(BirthRegistration)
    if status is not None:
        query = query.where(BirthRegistration.status == status)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(
        query.order_by(col(BirthRegistration.id).desc()).offset((page - 1) * page_size).limit(page_size)
    ).all()
    return [read(session, r) for r in rows], total
