"""婚育证明查验率, computed by hand for a small register (year boundaries in Asia/Shanghai)."""

from __future__ import annotations

import uuid
from datetime import UTC, date, datetime

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.certificates.rates import node_check_rate, person_check_status
from service.models import CertificateCheck, LookupPurpose
from service.sla.deadlines import SHANGHAI
from tests.certificates.factories import add, person

HOST, ORIGIN = "410105", "411627"


def check(engine: Engine, number: str, shanghai_time: str) -> None:
    at = datetime.fromisoformat(shanghai_time).replace(tzinfo=SHANGHAI).astimezone(UTC)
    with Session(engine) as session:
        session.add(
            CertificateCheck(
                message_id=str(uuid.uuid4()),
                id_number=number,
                subject_name="某某",
                origin_node=ORIGIN,
                purpose=LookupPurpose.residence_check,
                found=True,
                checked_at=at,
                response_body=b"{}",
                response_signature_input="yp=()",
                response_signature="yp=::",
            )
        )
        session.commit()


def woman(
    engine: Engine, serial: int, *, birth: date = date(1990, 3, 8), **fields: object
) -> tuple[int, str]:
    row = person(fields.pop("origin", ORIGIN), birth, serial, host=HOST, **fields)  # type: ignore[arg-type]
    return add(engine, row), row.id_number


@pytest.fixture
def register(host: Engine) -> dict[str, tuple[int, str]]:
    people = {
        # A: the check before her arrival does not count; one after it is not enough.
        "A": woman(host, 1, arrived_on=date(2026, 3, 1)),
        # B: first check in 2025, then exactly 2 look-ups in 2026.
        "B": woman(host, 2, arrived_on=date(2025, 6, 1)),
        # C: checks just around both new years, in Shanghai time (UTC is 8 hours behind).
        "C": woman(host, 3, arrived_on=date(2026, 1, 1)),
        # D: the second look-up falls on 1 January 2027 in Shanghai (still 2026 in UTC).
        "D": woman(host, 4, arrived_on=date(2026, 5, 1)),
        "man": woman(host, 5, sex="M", name="李强"),
        "departed": woman(host, 6, arrived_on=date(2024, 1, 1), departed_on=date(2025, 12, 31)),
        "local": woman(host, 7, origin=HOST),
        "turned 51": woman(host, 8, birth=date(1975, 6, 1)),
        "turns 50 on 31 Dec": woman(host, 9, birth=date(1976, 12, 31)),
        "turns 18 on 31 Dec": woman(host, 10, birth=date(2008, 12, 31)),
        "turns 18 in 2027": woman(host, 11, birth=date(2009, 1, 1)),
        "arrives 2027": woman(host, 12, arrived_on=date(2027, 2, 1)),
    }
    merged_into = people["A"][0]
    people["merged"] = woman(host, 13, merged_into=merged_into)
    n = {k: v[1] for k, v in people.items()}
    check(host, n["A"], "2026-02-20 10:00")
    check(host, n["A"], "2026-04-01 10:00")
    check(host, n["B"], "2025-07-01 10:00")
    check(host, n["B"], "2026-01-10 10:00")
    check(host, n["B"], "2026-11-30 10:00")
    check(host, n["C"], "2025-12-31 23:30")
    check(host, n["C"], "2026-01-01 00:10")
    check(host, n["C"], "2026-12-31 23:50")
    check(host, n["D"], "2026-05-02 10:00")
    check(host, n["D"], "2027-01-01 00:30")
    for who in ("man", "departed", "local", "merged", "arrives 2027", "turned 51"):
        check(host, n[who], "2026-03-10 10:00")
        check(host, n[who], "2026-09-10 10:00")
    return people


def test_node_rate_2026(host: Engine, register: dict[str, tuple[int, str]]) -> None:
    with Session(host) as session:
        rate = node_check_rate(session, 2026)
    # In scope: A B C D, turns-50-on-31-Dec, turns-18-on-31-Dec. Checked: B and C.
    assert (rate.numerator, rate.denominator) == (2, 6)
    assert rate.rate == pytest.approx(1 / 3)
    assert len(register) == 13


def test_node_rate_2025_and_2027(host: Engine, register: dict[str, tuple[int, str]]) -> None:
    with Session(host) as session:
        r2025 = node_check_rate(session, 2025)
        r2027 = node_check_rate(session, 2027)
    # 2025: B, departed (left on 31 Dec 2025), turned-51 (49 until June), turns-50-on-31-Dec.
    assert (r2025.numerator, r2025.denominator) == (0, 4)
    # 2027: A B C D, turns-18-in-2027, turns-18-on-31-Dec, arrives-2027; nobody looked up twice.
    assert (r2027.numerator, r2027.denominator) == (0, 7)
    assert len(register) == 13


def test_nobody_in_scope_gives_no_rate(host: Engine) -> None:
    with Session(host) as session:
        rate = node_check_rate(session, 2026)
    assert (rate.numerator, rate.denominator, rate.rate) == (0, 0, None)


def test_person_status(host: Engine, register: dict[str, tuple[int, str]]) -> None:
    with Session(host) as session:
        c = person_check_status(session, register["C"][0], 2026)
        a = person_check_status(session, register["A"][0], 2026)
        b2025 = person_check_status(session, register["B"][0], 2025)
        man = person_check_status(session, register["man"][0], 2026)
    assert (c.in_scope, c.checks_in_year, c.checked) == (True, 2, True)
    # The 23:30 check on New Year's Eve came before her arrival: the first check is ten past midnight.
    assert c.first_check_at == datetime(2025, 12, 31, 16, 10, tzinfo=UTC)
    assert (a.checks_in_year, a.checked) == (1, False)
    assert a.first_check_at == datetime(2026, 4, 1, 2, 0, tzinfo=UTC)
    assert (b2025.checks_in_year, b2025.checked, b2025.in_scope) == (1, False, True)
    assert (man.in_scope, man.checked) == (False, True)
