"""Issue 3 end to end between real nodes: a host imports migrants from two origins, the origins hear
of each arrival and acknowledge it, the host checks certificates and computes its check rate.

Hand-computed check rate: the host's register holds four women from other counties, all arrived
before today. A1 and B1 are looked up twice, A2 once, B2 (unknown at her origin) once:
A1 and B1 count as checked (≥ 2 look-ups this year after arrival) → 2 / 4.
"""

from __future__ import annotations

from datetime import date, timedelta
from typing import Any

import pytest
from sqlalchemy import func
from sqlmodel import Session, select

from service import idnumbers
from service.clock import utcnow
from service.db import make_engine
from service.localnet import LocalNode, wait_for
from service.models import LookupLog
from service.sla.deadlines import SHANGHAI
from tests.conftest import NetworkFactory

HOST, ORIGIN_A, ORIGIN_B = ("410105", "金水区"), ("411627", "太康县"), ("310110", "杨浦区")
TODAY = utcnow().astimezone(SHANGHAI).date()
ARRIVED = TODAY - timedelta(days=40)


def id_number(origin: str, birth: date, serial: int) -> str:
    first17 = f"{origin}{birth:%Y%m%d}{serial:02d}{2 * (serial % 5)}"  # an even 17th digit: a woman
    return first17 + idnumbers.check_character(first17)


WOMEN = {
    "A1": (id_number("411627", date(1995, 3, 8), 10), "王秀英", date(1995, 3, 8)),
    "A2": (id_number("411627", date(1992, 6, 1), 11), "李娟", date(1992, 6, 1)),
    "B1": (id_number("310110", date(1990, 1, 20), 12), "张丽", date(1990, 1, 20)),
    "B2": (id_number("310110", date(1998, 9, 9), 13), "赵敏", date(1998, 9, 9)),
}
HEADER = "身份证号,姓名,性别,出生日期,户籍地代码,现居住地代码,流入日期,婚姻状况,结婚日期\n"


def row(key: str, married: str = "初婚") -> str:
    number, name, birth = WOMEN[key]
    married_on = birth.replace(year=birth.year + 24)
    return f"{number},{name},女,{birth},{number[:6]},410105,{ARRIVED},{married},{married_on}\n"


def upload(node: LocalNode, text: str, encoding: str) -> dict[str, Any]:
    files = {"file": ("register.csv", text.encode(encoding), "text/csv")}
    response = node.api("POST", "/api/v1/people/import", files=files)
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def lookup(host: LocalNode, key: str) -> dict[str, Any]:
    number, name, _ = WOMEN[key]
    response = host.api(
        "POST",
        "/api/v1/certificates/lookup",
        json={"id_number": number, "name": name, "purpose": "residence_check"},
    )
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def lookups_logged(node: LocalNode) -> int:
    engine = make_engine(node.database_url)
    try:
        with Session(engine) as session:
            return session.exec(select(func.count()).select_from(LookupLog)).one()
    finally:
        engine.dispose()


def incoming_arrivals(node: LocalNode) -> list[dict[str, Any]]:
    params = {"direction": "incoming", "kind": "arrival", "page_size": 200}
    return node.api("GET", "/api/v1/notifications", params=params).json()["items"]  # type: ignore[no-any-return]


@pytest.mark.slow
def test_register_arrivals_certificates_and_check_rate(network: NetworkFactory) -> None:
    host, origin_a, origin_b = network([HOST, ORIGIN_A, ORIGIN_B])
    # The origins hold their women (B2 is unknown at hers).
    at_a = upload(origin_a, HEADER + row("A1") + row("A2"), "utf-8")
    assert (at_a["stored"], at_a["certificates"]) == (2, 2)  # registered at her origin: certificate held
    assert upload(origin_b, HEADER + row("B1"), "utf-8")["certificates"] == 1

    # The host imports a GBK file from the township, with one bad row (wrong check digit).
    bad = row("A1").replace(WOMEN["A1"][0], WOMEN["A1"][0][:17] + ("0" if WOMEN["A1"][0][17] != "0" else "1"))
    report = upload(host, HEADER + row("A1") + row("A2") + bad + row("B1") + row("B2"), "gbk")
    assert report["encoding"] in ("gbk", "gb18030")
    assert (report["stored"], report["bad"]) == (4, 1)
    assert report["bad_rows"][0]["line"] == 4
    assert report["bad_rows"][0]["errors"][0]["field"] == "id_number"
    assert report["notifications"] == 4

    # Each origin hears of its arrivals (流入通报) and acknowledges them (接收确认).
    for origin, expected in ((origin_a, 2), (origin_b, 2)):
        arrivals = wait_for(
            lambda o=origin, n=expected: len(incoming_arrivals(o)) == n and incoming_arrivals(o)
        )
        for item in arrivals:
            assert origin.api("POST", f"/api/v1/notifications/{item['id']}/ack").status_code == 200
    outgoing = {"direction": "outgoing", "kind": "arrival", "status": "acknowledged"}
    assert wait_for(lambda: host.api("GET", "/api/v1/notifications", params=outgoing).json()["total"] == 4)

    # 查验: signed answers from both origins; B2 is not found and a 协查 is offered.
    answers = {key: lookup(host, key) for key in ("A1", "A1", "A2", "B1", "B1", "B2")}
    first_a1 = lookup(host, "A1")
    assert first_a1["found"] is True
    assert first_a1["certificate"]["holder"]["id_number"] == WOMEN["A1"][0]
    assert "children" not in first_a1["certificate"]  # residence_check discloses no children
    assert answers["B2"]["found"] is False
    assert answers["B2"]["discrepancy_request"]["suggested"] is True
    assert lookups_logged(origin_a) == 4  # A1 three times, A2 once
    assert lookups_logged(origin_b) == 3  # B1 twice, B2 once (not found, still logged)

    rate = host.api("GET", "/api/v1/certificates/check-rate", params={"year": TODAY.year}).json()
    assert (rate["numerator"], rate["denominator"]) == (2, 4)
    assert rate["rate"] == pytest.approx(0.5)
