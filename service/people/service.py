"""The migrant register (流动人口个案): one record per person, look-alikes reported, merges by staff."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import date
from typing import Any

from sqlalchemy import func
from sqlmodel import Session, col, select

from service import idnumbers
from service.certificates import service as certificates
from service.clock import utcnow
from service.directory.service import get_peer
from service.errors import DomainError, InvalidState, NotFound, ValidationFailed
from service.models import BirthRegistration, Child, Notification, Person, Sex
from service.notifications import service as notifications
from service.notifications.schemas import NotificationSummary
from service.people.schemas import (
    ChildIn,
    ChildRead,
    PersonCreate,
    PersonRead,
    PersonSummary,
    PersonUpdate,
    check,
)
from service.signing import pii
from service.signing.node import NodeSigner

log = logging.getLogger(__name__)


class DuplicatePerson(DomainError):
    """One person, one record: the ID number is registered already (``existing_id`` names the record)."""

    status_code = 409
    code = "duplicate_person"
    title = "Person already registered"


def validate(data: PersonCreate) -> None:
    """Raise ``validation_failed`` with every rule the record breaks (field and reason only)."""
    errors = check(data)
    if errors:
        raise ValidationFailed("the record does not validate", errors=[e.model_dump() for e in errors])


def person_row(data: PersonCreate, staff_username: str) -> dict[str, Any]:
    """The ``person`` columns of a new record (origin: the number's first 6 digits unless given)."""
    now = utcnow()
    return {
        **data.model_dump(exclude={"children", "origin_node"}),
        "origin_node": data.origin_node or data.id_number[:6],
        "created_at": now,
        "updated_at": now,
        "updated_by": staff_username,
    }


def build_person(data: PersonCreate, staff_username: str) -> Person:
    return Person(**person_row(data, staff_username))


def build_children(person_id: int, children: Iterable[ChildIn]) -> list[Child]:
    return [Child(person_id=person_id, **c.model_dump()) for c in children]


def existing_id(session: Session, id_number: str) -> int | None:
    index = pii.blind_index(id_number, pii.ID_NUMBER)
    return session.exec(select(Person.id).where(Person.id_number_index == index)).first()


def lookalikes(session: Session, name: str, birth_date: date, sex: Sex, id_number: str) -> list[int]:
    """Records that may be this person under a mistyped ID number: same name, birth date and sex."""
    query = select(Person.id).where(
        Person.name_index == pii.blind_index(name, pii.NAME),
        Person.birth_date == birth_date,
        Person.sex == sex,
        Person.id_number_index != pii.blind_index(id_number, pii.ID_NUMBER),
        col(Person.merged_into).is_(None),
    )
    return sorted(i for i in session.exec(query) if i is not None)


def notify_if_arrived(session: Session, signer: NodeSigner, person: Person, staff_username: str) -> bool:
    """An arrival at this node as host tells the origin by itself (流入通报).

    An origin not in the directory cannot be told: the record is still stored, and the gap logged.
    """
    here = signer.node_id
    if person.arrived_on is None or person.host_node != here or person.origin_node == here:
        return False
    if get_peer(session, person.origin_node) is None:
        log.warning(
            "arrival not notified: origin %s not in the directory person=%s", person.origin_node, person.id
        )
        return False
    notifications.notify_arrival(session, signer, person, staff_username)
    return True


def create_person(
    session: Session, signer: NodeSigner, data: PersonCreate, staff_username: str
) -> tuple[Person, list[int]]:
    """Store a new record; refuse a known ID number; return the record and its look-alikes."""
    validate(data)
    found = existing_id(session, data.id_number)
    if found is not None:
        raise DuplicatePerson(f"this ID number is registered already as person {found}", existing_id=found)
    person = build_person(data, staff_username)
    session.add(person)
    session.flush()
    assert person.id is not None
    session.add_all(build_children(person.id, data.children))
    session.flush()
    notify_if_arrived(session, signer, person, staff_username)
    # 信息登记入库即视为婚育证明办理: registering her at her origin issues the certificate.
    certificates.sync_certificate(session, person, staff_username, "registered")
    return person, lookalikes(session, person.name, person.birth_date, person.sex, person.id_number)


def _load(session: Session, person_id: int) -> Person:
    person = session.get(Person, person_id)
    if person is None:
        raise NotFound(f"no person {person_id}")
    return person


def _children_of(session: Session, person_id: int) -> list[Child]:
    query = select(Child).where(Child.person_id == person_id).order_by(col(Child.birth_order))
    return list(session.exec(query))


def get_person(session: Session, person_id: int) -> PersonRead:
    person = _load(session, person_id)
    assert person.id is not None
    children = [ChildRead.model_validate(c, from_attributes=True) for c in _children_of(session, person.id)]
    similar = lookalikes(session, person.name, person.birth_date, person.sex, person.id_number)
    return PersonRead.model_validate(
        {
            **person.model_dump(exclude={"id_number"}),
            "id_number_masked": idnumbers.mask(person.id_number),
            "children": children,
            "possible_duplicates": similar,
        }
    )


def id_number_of(session: Session, person_id: int) -> str:
    """The record's full ID number, for a reveal (service.staff.reveal) or a look-up; reads mask it."""
    return _load(session, person_id).id_number


def update_person(session: Session, person_id: int, patch: PersonUpdate, staff_username: str) -> Person:
    """Apply the given fields, then check the whole record again as if it were new."""
    person = _load(session, person_id)
    assert person.id is not None
    if person.merged_into is not None:
        raise InvalidState(f"person {person_id} was merged into {person.merged_into}; change that record")
    current: dict[str, Any] = person.model_dump(include=set(PersonCreate.model_fields))
    children = _children_of(session, person.id)
    current["children"] = [c.model_dump(include=set(ChildIn.model_fields)) for c in children]
    merged = PersonCreate.model_validate({**current, **patch.model_dump(exclude_unset=True)})
    validate(merged)
    for name, value in merged.model_dump(exclude={"children", "id_number"}).items():
        setattr(person, name, value)
    person.origin_node = merged.origin_node or merged.id_number[:6]
    person.updated_at = utcnow()
    person.updated_by = staff_username
    if "children" in patch.model_fields_set:
        if session.exec(select(BirthRegistration.id).where(BirthRegistration.person_id == person.id)).first():
            raise InvalidState("her children include a birth registration: correct them through that record")
        for child in _children_of(session, person.id):
            session.delete(child)
        session.flush()
        session.add_all(build_children(person.id, merged.children))
    session.add(person)
    session.flush()
    certificates.sync_certificate(session, person, staff_username, "register corrected")
    return person


def search(
    session: Session,
    *,
    id_number: str | None = None,
    name: str | None = None,
    origin_node: str | None = None,
    host_node: str | None = None,
    arrived_from: date | None = None,
    arrived_to: date | None = None,
    include_merged: bool = False,
    page: int = 1,
    page_size: int = 50,
) -> tuple[list[PersonSummary], int]:
    """Records matching every filter given, newest arrival first; the ID number masked."""
    conditions: list[Any] = []
    if id_number is not None:
        conditions.append(Person.id_number_index == pii.blind_index(id_number, pii.ID_NUMBER))
    if name is not None:  # exact, on the normalised name's blind index (the name is encrypted)
        conditions.append(Person.name_index == pii.blind_index(name, pii.NAME))
    if origin_node is not None:
        conditions.append(Person.origin_node == origin_node)
    if host_node is not None:
        conditions.append(Person.host_node == host_node)
    if arrived_from is not None:
        conditions.append(col(Person.arrived_on) >= arrived_from)
    if arrived_to is not None:
        conditions.append(col(Person.arrived_on) <= arrived_to)
    if not include_merged:
        conditions.append(col(Person.merged_into).is_(None))
    total = session.exec(select(func.count()).select_from(Person).where(*conditions)).one()
    query = (
        select(Person)
        .where(*conditions)
        .order_by(col(Person.arrived_on).desc(), col(Person.id).desc())
        .offset((page - 1) * page_size)
        .limit(page_size)
    )
    return [summary(p) for p in session.exec(query)], total


def notifications_of(session: Session, person_id: int, limit: int = 100) -> list[NotificationSummary]:
    """通报 about one record, newest first: those sent for it, and those about its ID number."""
    person = _load(session, person_id)
    query = (
        select(Notification)
        .where(
            (Notification.person_id == person_id)
            | (Notification.subject_id_number_index == person.id_number_index)
        )
        .order_by(col(Notification.sent_at).desc(), col(Notification.id).desc())
        .limit(limit)
    )
    now = utcnow()
    return [notifications.summary(n, now) for n in session.exec(query)]


def summary(person: Person) -> PersonSummary:
    fields = person.model_dump(include=set(PersonSummary.model_fields))
    return PersonSummary.model_validate({**fields, "id_number_masked": idnumbers.mask(person.id_number)})


def merge(session: Session, keep_id: int, duplicate_id: int, staff_username: str) -> Person:
    """清理重复人口信息: fold ``duplicate_id`` into ``keep_id``; the duplicate is kept, marked merged.

    The duplicate's children move to the kept record unless the kept one has a child of that birth order.
    """
    if keep_id == duplicate_id:
        raise ValidationFailed("a record cannot be merged into itself", field="duplicate_id")
    keep, duplicate = _load(session, keep_id), _load(session, duplicate_id)
    if keep.merged_into is not None:
        raise InvalidState(f"person {keep_id} was itself merged into {keep.merged_into}")
    if duplicate.merged_into is not None:
        raise InvalidState(f"person {duplicate_id} was merged already (into {duplicate.merged_into})")
    taken = {c.birth_order for c in _children_of(session, keep_id)}
    for child in _children_of(session, duplicate_id):
        if child.birth_order not in taken:
            child.person_id = keep_id
            taken.add(child.birth_order)
            session.add(child)
    now = utcnow()
    duplicate.merged_into = keep_id
    duplicate.updated_at = keep.updated_at = now
    duplicate.updated_by = keep.updated_by = staff_username
    session.add_all([keep, duplicate])
    session.flush()
    return keep
