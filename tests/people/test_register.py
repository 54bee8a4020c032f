"""The register's rules: validation, one record per person, look-alikes, updates, search and merge."""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from pydantic import ValidationError
from sqlmodel import Session, select

from service.clock import utcnow
from service.errors import InvalidState, NotFound, ValidationFailed
from service.models import Child, Notification, Person
from service.people import service
from service.people.schemas import PersonCreate, PersonUpdate, check, today
from service.signing.node import NodeSigner
from tests.people.factories import HERE, ORIGIN, id_number, person


def reasons(body: dict[str, Any]) -> dict[str, str]:
    return {e.field: e.reason for e in check(PersonCreate.model_validate(body))}


def create(session: Session, signer: NodeSigner, body: dict[str, Any]) -> tuple[Person, list[int]]:
    result = service.create_person(session, signer, PersonCreate.model_validate(body), "op")
    session.commit()
    return result


def test_a_valid_record_is_stored_with_its_children_and_origin_from_the_number(
    session: Session, signer: NodeSigner
) -> None:
    body = person(
        marital_status="first_marriage",
        marriage_date="2018-05-01",
        contraception_method="iud",
        contraception_since="2021-01-01",
        children=[
            {"birth_order": 2, "birth_date": "2020-06-01", "sex": "M"},
            {"birth_order": 1, "birth_date": "2019-02-03", "sex": "F", "name": "王小花"},
        ],
    )
    stored, similar = create(session, signer, body)
    assert similar == []
    read = service.get_person(session, stored.id or 0)
    assert read.origin_node == ORIGIN  # the number's first 6 digits
    assert [c.birth_order for c in read.children] == [1, 2]
    assert read.updated_by == "op"


@pytest.mark.parametrize(
    ("change", "field", "reason"),
    [
        ({"birth_date": "1995-03-09"}, "birth_date", "disagrees with the ID number (digits 7-14)"),
        ({"sex": "M"}, "sex", "disagrees with the ID number (17th digit)"),
        ({"arrived_on": "2024-05-01", "departed_on": "2024-04-30"}, "departed_on", "is before arrived_on"),
        ({"arrived_on": "1990-01-01"}, "arrived_on", "is before the birth date"),
        (
            {"marital_status": "unmarried", "marriage_date": "2015-01-01"},
            "marriage_date",
            "needs a marital_status other than unmarried",
        ),
        ({"contraception_since": "2020-01-01"}, "contraception_since", "needs a contraception_method"),
        (
            {
                "children": [
                    {"birth_order": 1, "birth_date": "2019-01-01", "sex": "F"},
                    {"birth_order": 3, "birth_date": "2020-01-01", "sex": "F"},
                ]
            },
            "children",
            "birth_order must be 1..n, each once",
        ),
        (
            {"children": [{"birth_order": 1, "birth_date": "1990-01-01", "sex": "F"}]},
            "children.0.birth_date",
            "is not after the mother's birth",
        ),
    ],
)
def test_rules_across_fields_name_the_field_and_reason(
    change: dict[str, Any], field: str, reason: str
) -> None:
    assert reasons({**person(), **change}).get(field) == reason


def test_dates_in_the_future_are_refused() -> None:
    tomorrow = (today() + timedelta(days=1)).isoformat()
    assert reasons(person(arrived_on=tomorrow)) == {"arrived_on": "is in the future"}


@pytest.mark.parametrize(
    "body",
    [
        person(sex="M", marital_status="first_marriage"),  # a man
        person(birth=date(1970, 1, 1), contraception_method="iud"),  # a woman past 49
        person(birth=date(utcnow().year - 10, 1, 1), marital_status="unmarried"),  # a girl
    ],
)
def test_certificate_fields_only_for_women_of_childbearing_age(body: dict[str, Any]) -> None:
    assert set(reasons(body).values()) == {"only for women of childbearing age (15-49)"}


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"id_number": "411627199503080025"}, "id_number"),  # wrong check digit
        ({"host_node": "012345"}, "host_node"),
        ({"origin_node": "41162"}, "origin_node"),
        ({"marital_status": "married"}, "marital_status"),
        ({"contraception_method": "prayer"}, "contraception_method"),
        ({"birth_date": "1995-02-30"}, "birth_date"),
        ({"nickname": "x"}, "nickname"),
    ],
)
def test_bad_values_are_refused_by_the_schema(change: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as info:
        PersonCreate.model_validate({**person(), **change})
    assert [".".join(map(str, e["loc"])) for e in info.value.errors()] == [field]


def test_a_refused_record_stores_nothing(session: Session, signer: NodeSigner) -> None:
    with pytest.raises(ValidationFailed) as info:
        create(session, signer, person(sex="M", seq=1, birth_date="1995-03-08", marital_status="divorced"))
    assert info.value.extra["errors"] == [
        {"field": "marital_status", "reason": "only for women of childbearing age (15-49)"}
    ]
    session.rollback()
    assert session.exec(select(Person)).all() == []


def test_the_same_number_again_is_a_duplicate_naming_the_record(session: Session, signer: NodeSigner) -> None:
    first, _ = create(session, signer, person())
    with pytest.raises(service.DuplicatePerson) as info:
        create(session, signer, person(name="王秀"))
    assert info.value.status_code == 409
    assert info.value.code == "duplicate_person"
    assert info.value.extra == {"existing_id": first.id}


def test_a_look_alike_is_stored_and_reported(session: Session, signer: NodeSigner) -> None:
    first, _ = create(session, signer, person(seq=1))
    second, similar = create(session, signer, person(seq=2))  # same name, birth date, sex; other number
    assert similar == [first.id]
    assert service.get_person(session, first.id or 0).possible_duplicates == [second.id]
    _, similar = create(session, signer, person(seq=3, name="王秀云"))
    assert similar == []


def test_an_arrival_here_from_a_known_origin_queues_the_notification(
    session: Session, signer: NodeSigner
) -> None:
    arrived, _ = create(session, signer, person(seq=1, arrived_on="2026-01-02"))
    create(session, signer, person(seq=2))  # no arrival date
    create(session, signer, person(seq=3, host_node="310110", arrived_on="2026-01-02"))  # lives elsewhere
    create(session, signer, person(region=HERE, seq=4, arrived_on="2026-01-02"))  # from here
    create(session, signer, person(region="110101", seq=5, arrived_on="2026-01-02"))  # origin not a peer
    sent = session.exec(select(Notification)).all()
    assert [(n.person_id, n.peer) for n in sent] == [(arrived.id, ORIGIN)]


def test_update_checks_the_whole_record_again(session: Session, signer: NodeSigner) -> None:
    stored, _ = create(session, signer, person())
    pid = stored.id or 0
    patch = PersonUpdate.model_validate(
        {
            "arrived_on": "2024-03-01",
            "marital_status": "first_marriage",
            "children": [{"birth_order": 1, "birth_date": "2020-01-01", "sex": "M"}],
        }
    )
    service.update_person(session, pid, patch, "op2")
    session.commit()
    read = service.get_person(session, pid)
    assert (read.arrived_on, read.marital_status, len(read.children)) == (
        date(2024, 3, 1),
        "first_marriage",
        1,
    )
    assert read.updated_by == "op2"
    with pytest.raises(ValidationFailed):
        service.update_person(session, pid, PersonUpdate.model_validate({"departed_on": "2024-02-01"}), "op")
    session.rollback()
    cleared = PersonUpdate.model_validate({"marital_status": None, "children": []})
    service.update_person(session, pid, cleared, "op")
    session.commit()
    read = service.get_person(session, pid)
    assert (read.marital_status, read.children, read.arrived_on) == (None, [], date(2024, 3, 1))


def test_search_filters_masks_and_pages(session: Session, signer: NodeSigner) -> None:
    for seq in range(1, 6):
        create(session, signer, person(seq=seq, arrived_on=f"2025-0{seq}-01"))
    create(session, signer, person(region="310110", seq=6, name="张三", arrived_on="2025-07-01"))
    items, total = service.search(session, origin_node=ORIGIN, page_size=2)
    assert total == 5
    assert [i.arrived_on for i in items] == [date(2025, 5, 1), date(2025, 4, 1)]  # newest arrival first
    assert (
        items[0].id_number_masked == items[0].id_number_masked[:4] + "*" * 10 + items[0].id_number_masked[-4:]
    )
    number = id_number(ORIGIN, date(1995, 3, 8), 2, "F")
    found, total = service.search(session, id_number=number)
    assert total == 1
    assert found[0].id_number_masked == number[:4] + "**********" + number[-4:]
    assert service.search(session, name="张三")[1] == 1
    between = service.search(session, arrived_from=date(2025, 2, 1), arrived_to=date(2025, 3, 31))[1]
    assert between == 2
    assert service.search(session, host_node="310110")[1] == 0


def test_merge_moves_children_that_do_not_clash_and_keeps_the_duplicate(
    session: Session, signer: NodeSigner
) -> None:
    kid = {"sex": "F"}
    keep, _ = create(
        session, signer, person(seq=1, children=[{"birth_order": 1, "birth_date": "2019-01-01", **kid}])
    )
    dup, _ = create(
        session,
        signer,
        person(
            seq=2,
            children=[
                {"birth_order": 1, "birth_date": "2019-01-02", **kid},
                {"birth_order": 2, "birth_date": "2021-01-01", **kid},
            ],
        ),
    )
    kept = service.merge(session, keep.id or 0, dup.id or 0, "chief")
    session.commit()
    read = service.get_person(session, kept.id or 0)
    assert [(c.birth_order, c.birth_date) for c in read.children] == [
        (1, date(2019, 1, 1)),
        (2, date(2021, 1, 1)),
    ]
    assert read.possible_duplicates == []  # the merged record is no longer a look-alike
    merged = service.get_person(session, dup.id or 0)
    assert merged.merged_into == keep.id
    assert [c.birth_order for c in merged.children] == [1]  # the clashing child stays where it was
    assert service.search(session)[1] == 1
    assert service.search(session, include_merged=True)[1] == 2
    with pytest.raises(InvalidState):
        service.merge(session, keep.id or 0, dup.id or 0, "chief")
    with pytest.raises(InvalidState):
        service.update_person(session, dup.id or 0, PersonUpdate(name="王秀"), "op")
    with pytest.raises(ValidationFailed):
        service.merge(session, keep.id or 0, keep.id or 0, "chief")
    with pytest.raises(NotFound):
        service.merge(session, keep.id or 0, 999, "chief")
    assert len(session.exec(select(Child)).all()) == 3
