"""生育登记 on commitment between real nodes: registered at once, then confirmed or reviewed."""

from __future__ import annotations

import re
from datetime import date, datetime
from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from service.db import make_engine
from service.localnet import LocalNode, wait_for
from service.models import Child, Person, Sex, VerificationCase
from service.sla.deadlines import SHANGHAI
from tests.conftest import NetworkFactory, clock_offset

HOST, ORIGIN = ("410105", "金水区"), ("411627", "太康县")
# The nodes' clocks, whatever today is: the births below are of October 2026, registered in November.
NOVEMBER = {"YIPANQI_CLOCK_OFFSET_SECONDS": clock_offset(at=datetime(2026, 11, 2, 10, tzinfo=SHANGHAI))}


def add_person(node: LocalNode, id_number: str, name: str, sex: Sex, birth: date, children: int = 0) -> int:
    engine = make_engine(node.database_url)
    try:
        with Session(engine) as session:
            person = Person(
                id_number=id_number,
                name=name,
                sex=sex,
                birth_date=birth,
                origin_node="411627",
                host_node="410105",
                arrived_on=date(2025, 3, 1),
            )
            session.add(person)
            session.flush()
            assert person.id is not None
            for order in range(1, children + 1):
                session.add(
                    Child(
                        person_id=person.id, birth_order=order, birth_date=date(2020 + order, 1, 1), sex=Sex.M
                    )
                )
            session.commit()
            return person.id
    finally:
        engine.dispose()


def counts(node: LocalNode) -> tuple[int, int]:
    engine = make_engine(node.database_url)
    try:
        with Session(engine) as session:
            return (
                session.exec(select(func.count()).select_from(Child)).one(),
                session.exec(select(func.count()).select_from(VerificationCase)).one(),
            )
    finally:
        engine.dispose()


def supervisor_token(node: LocalNode) -> str:
    out = node.cli("staff", "add", "--username", "chief", "--role", "supervisor")
    match = re.search(r"^yp_\S+$", out, re.M)
    assert match is not None
    return match.group(0)


def answer(origin: LocalNode, request_id: str, outcome: str) -> None:
    case = wait_for(
        lambda: next(
            (
                c
                for c in origin.api("GET", "/api/v1/verification-requests").json()["items"]
                if c["request_id"] == request_id
            ),
            None,
        )
    )
    assert case["topic"] == "birth_registration"
    assert case["key_target"] is True
    reply = origin.api(
        "POST",
        f"/api/v1/verification-requests/{case['id']}/reply",
        json={"outcome": outcome, "findings": "核实完毕。"},
    )
    assert reply.status_code == 200, reply.text


def registration(host: LocalNode, reg_id: int) -> dict[str, Any]:
    return host.api("GET", f"/api/v1/births/{reg_id}").json()  # type: ignore[no-any-return]


@pytest.mark.slow
def test_registered_at_once_then_confirmed_or_reviewed(network: NetworkFactory) -> None:
    host, origin = network([HOST, ORIGIN], env=NOVEMBER)
    wang = add_person(host, "411627199503080024", "王秀英", Sex.F, date(1995, 3, 8))
    li = add_person(host, "411627199802140023", "李娟", Sex.F, date(1998, 2, 14), children=1)

    first = host.api(
        "POST",
        "/api/v1/births",
        json={
            "person_id": wang,
            "child": {"birth_date": "2026-10-02", "sex": "F", "name": "王小丫"},
            "commitment_signed_on": "2026-10-20",
        },
    )
    assert first.status_code == 201, first.text
    body = first.json()
    assert body["status"] == "registered"  # at once, before the origin says anything
    assert body["birth_order"] == 1
    case = host.api("GET", f"/api/v1/verification-requests/{body['case_id']}").json()
    assert "第1孩" in case["question"]
    answer(origin, case["request_id"], "confirmed")
    assert wait_for(lambda: registration(host, body["id"])["status"] == "confirmed")

    second = host.api(
        "POST",
        "/api/v1/births",
        json={
            "person_id": li,
            "child": {"birth_date": "2026-09-01", "sex": "M"},
            "commitment_signed_on": "2026-09-05",
        },
    )
    assert second.status_code == 201, second.text
    assert second.json()["birth_order"] == 2
    case2 = host.api("GET", f"/api/v1/verification-requests/{second.json()['case_id']}").json()
    answer(origin, case2["request_id"], "not_confirmed")
    reviewed = wait_for(lambda: (r := registration(host, second.json()["id"]))["status"] == "review" and r)
    assert "not_confirmed" in reviewed["review_note"]
    assert [
        r["id"] for r in host.api("GET", "/api/v1/births", params={"status": "review"}).json()["items"]
    ] == [second.json()["id"]]

    path = f"/api/v1/births/{second.json()['id']}/review"
    decision = {"status": "confirmed", "note": "经核实承诺书与出生医学证明一致。"}
    assert host.api("POST", path, json=decision).status_code == 403  # an operator does not decide
    chief = supervisor_token(host)
    decided = host.api("POST", path, json=decision, token=chief)
    assert decided.status_code == 200, decided.text
    assert decided.json()["status"] == "confirmed"


@pytest.mark.slow
def test_bad_registrations_change_nothing(sqlite_network: NetworkFactory) -> None:
    host, _origin = sqlite_network([HOST, ORIGIN], env=NOVEMBER)
    mother = add_person(host, "411627199107150043", "张丽", Sex.F, date(1991, 7, 15), children=2)
    father = add_person(host, "411627199001010018", "张强", Sex.M, date(1990, 1, 1))
    fresh = add_person(host, "411627199503080024", "王秀英", Sex.F, date(1995, 3, 8))
    before = counts(host)
    cases = [
        (
            {
                "person_id": mother,
                "child": {"birth_date": "2026-10-02", "sex": "F"},
                "commitment_signed_on": "2026-10-03",
            },
            422,
            "child 3",
        ),
        (
            {
                "person_id": father,
                "child": {"birth_date": "2026-10-02", "sex": "F"},
                "commitment_signed_on": "2026-10-03",
            },
            422,
            "mother",
        ),
        (
            {
                "person_id": fresh,
                "child": {"birth_date": "2099-01-01", "sex": "F"},
                "commitment_signed_on": "2099-01-02",
            },
            422,
            "future",
        ),
        (
            {
                "person_id": fresh,
                "child": {"birth_date": "2026-10-02", "sex": "F"},
                "commitment_signed_on": "2026-10-01",
            },
            422,
            "commitment",
        ),
        (
            {
                "person_id": fresh,
                "child": {"birth_date": "2026-10-02", "sex": "X"},
                "commitment_signed_on": "2026-10-03",
            },
            422,
            "sex",
        ),
        (
            {
                "person_id": 9999,
                "child": {"birth_date": "2026-10-02", "sex": "F"},
                "commitment_signed_on": "2026-10-03",
            },
            404,
            "no person",
        ),
    ]
    for body, status, words in cases:
        response = host.api("POST", "/api/v1/births", json=body)
        assert response.status_code == status, (words, response.text)
        assert response.headers["content-type"] == "application/problem+json"
        assert words in response.text
    assert counts(host) == before
