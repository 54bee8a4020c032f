"""Real nodes: a host looks certificates up at their origin; both sides log; 协查 on disagreement."""

from __future__ import annotations

import json
import uuid
from datetime import date, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from service.certificates.schemas import LookupPayload
from service.clock import utcnow
from service.config import Settings
from service.db import make_engine
from service.directory.service import remove_peer
from service.exchange.client import post_signed
from service.exchange.envelope import envelope_body
from service.localnet import LocalNode, wait_for
from service.models import CertificateCheck, LookupLog
from service.signing.node import load_signer
from service.sla.deadlines import SHANGHAI, DeadlineRule, due_at
from tests.certificates.factories import add_to_node, id_number, person
from tests.conftest import NetworkFactory

NODES = [("410105", "金水区"), ("411627", "太康县")]
BORN = date(1990, 3, 8)
LOOKUP = "/api/v1/certificates/lookup"
BASE = {"certificate_no", "holder", "marital_status", "status", "issued_by", "issued_at", "updated_at"}


def rows(node: LocalNode, model: type[Any]) -> list[Any]:
    engine = make_engine(node.database_url)
    try:
        with Session(engine) as session:
            return list(session.exec(select(model).order_by(model.id)).all())
    finally:
        engine.dispose()


def look(host: LocalNode, number: str, purpose: str, name: str = "王秀英") -> dict[str, Any]:
    response = host.api("POST", LOOKUP, json={"id_number": number, "name": name, "purpose": purpose})
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def migrant(host: LocalNode, origin: LocalNode, serial: int, children_here: int, children_there: int) -> str:
    """The same woman in the origin's register and in the host's (children may disagree)."""
    arrived = utcnow().date() - timedelta(days=30)
    add_to_node(origin, person(origin.node_id, BORN, serial, host=host.node_id), children_there)
    add_to_node(
        host, person(origin.node_id, BORN, serial, host=host.node_id, arrived_on=arrived), children_here
    )
    return id_number(origin.node_id, BORN, serial)


@pytest.mark.slow
def test_lookups_disclose_by_purpose_and_are_logged_on_both_sides(network: NetworkFactory) -> None:
    host, origin = network(NODES)
    number = migrant(host, origin, 1, children_here=2, children_there=1)

    residence = look(host, number, "residence_check")
    assert residence["found"] is True
    assert set(residence["certificate"]) == BASE
    assert residence["certificate"]["status"] == "valid"
    assert residence["certificate"]["issued_by"] == origin.node_id
    assert residence["discrepancies"] == []  # children are not disclosed for this purpose
    assert residence["discrepancy_request"] == {"suggested": False, "case_id": None}
    signed = residence["signed_answer"]
    assert json.loads(signed["body"]) == {"found": True, "certificate": residence["certificate"]}
    assert signed["keyid"] == f"{origin.node_id}/k1"
    assert signed["signature_input"].startswith("yp=(")

    service = look(host, number, "service")
    assert set(service["certificate"]) == BASE | {"contraception", "children"}
    assert service["discrepancies"] == [{"field": "children_count", "in_register": 2, "in_certificate": 1}]
    assert service["discrepancy_request"]["suggested"] is True
    births = look(host, number, "birth_registration")
    assert set(births["certificate"]) == BASE | {"marriage_date", "children"}

    # A wrong name: nothing found (the caller that does not know her name learns nothing).
    nothing = look(host, number, "residence_check", name="王秀兰")
    assert nothing["found"] is False
    assert nothing["certificate"] is None
    assert nothing["discrepancy_request"] == {"suggested": True, "case_id": None}
    assert nothing["signed_answer"]["body"] == '{"found":false}'
    # A number the origin does not hold, that this node never notified: no standing, refused.
    unknown = id_number(origin.node_id, date(1992, 1, 1), 40)
    refused = host.api("POST", LOOKUP, json={"id_number": unknown, "name": "王秀英", "purpose": "service"})
    assert (refused.status_code, refused.json()["code"]) == (409, "peer_refused")
    assert refused.json()["peer_code"] == "no_standing"

    # Host: every check kept with the origin's signed answer, byte for byte (not the refusal).
    checks = rows(host, CertificateCheck)
    assert [c.found for c in checks] == [True, True, True, False]
    assert checks[3].response_body == b'{"found":false}'
    assert checks[3].response_signature == nothing["signed_answer"]["signature"]
    # Origin: every lookup logged, with who asked and for what, her record whenever the number is hers.
    logs = rows(origin, LookupLog)
    assert [(g.requester, g.keyid, g.purpose.value, g.found, g.refused) for g in logs] == [
        ("410105", "410105/k1", "residence_check", True, False),
        ("410105", "410105/k1", "service", True, False),
        ("410105", "410105/k1", "birth_registration", True, False),
        ("410105", "410105/k1", "residence_check", False, False),
        ("410105", "410105/k1", "service", False, True),
    ]
    assert [g.message_id for g in logs[:4]] == [c.message_id for c in checks]
    assert logs[0].person_id is not None
    assert logs[3].person_id == logs[0].person_id
    assert logs[4].person_id is None
    assert logs[4].id_number_masked == unknown[:4] + "*" * 10 + unknown[-4:]

    # The host's staff see the checks and the check rate (two look-ups after arrival this year).
    person_id = checks[0].person_id
    listed = host.api("GET", "/api/v1/certificates/checks", params={"person_id": person_id}).json()
    assert listed["total"] == 4
    assert all("id_number" not in item for item in listed["items"])
    year = utcnow().astimezone(SHANGHAI).year
    rate = host.api("GET", "/api/v1/certificates/check-rate", params={"year": year}).json()
    assert rate == {"year": year, "numerator": 1, "denominator": 1, "rate": 1.0}
    status = host.api(
        "GET", "/api/v1/certificates/check-status", params={"person_id": person_id, "year": year}
    )
    assert status.json()["checked"] is True

    # On demand, the suggested 协查 goes to the origin (once).
    sent = host.api("POST", f"/api/v1/certificates/checks/{checks[1].id}/discrepancy-request")
    assert sent.status_code == 201, sent.text
    assert sent.json()["discrepancy_case_id"] is not None
    again = host.api("POST", f"/api/v1/certificates/checks/{checks[1].id}/discrepancy-request")
    assert (again.status_code, again.json()["code"]) == (409, "invalid_state")
    agreed = host.api("POST", f"/api/v1/certificates/checks/{checks[0].id}/discrepancy-request")
    assert agreed.status_code == 409


@pytest.mark.slow
def test_origin_registry_through_the_staff_api(network: NetworkFactory) -> None:
    host, origin = network(NODES)
    number = migrant(host, origin, 2, children_here=0, children_there=0)
    look(host, number, "service")  # the lookup issued her certificate (信息登记入库即视为办理)
    holder_id = rows(origin, LookupLog)[0].person_id
    assert holder_id is not None
    read = origin.api("GET", "/api/v1/certificates/1")
    assert read.status_code == 200, read.text
    assert read.json()["certificate"]["holder"]["id_number_masked"] == number[:4] + "*" * 10 + number[-4:]
    assert number not in read.text  # the certificate and its versions: the holder's number masked
    shown = origin.api("POST", f"/api/v1/people/{holder_id}/reveal", json={"reason": "service"})
    assert (shown.status_code, shown.json()["id_number"]) == (200, number)
    patch = origin.api(
        "PATCH",
        "/api/v1/certificates/1",
        json={"reason": "补录子女", "children": [{"birth_order": 1, "birth_date": "2016-06-01", "sex": "F"}]},
    )
    assert patch.status_code == 200, patch.text
    assert [v["version"] for v in patch.json()["versions"]] == [1, 2]
    assert patch.json()["versions"][1]["changed_by"] == f"operator-{origin.node_id}"
    bad = origin.api("PATCH", "/api/v1/certificates/1", json={"reason": "x", "marital_status": "engaged"})
    assert bad.status_code == 422
    assert bad.json()["errors"][0]["field"] == "marital_status"
    assert "engaged" not in bad.text
    assert origin.api("POST", "/api/v1/certificates", json={"person_id": holder_id}).status_code == 409
    cancel = origin.api("POST", "/api/v1/certificates/1/cancel", json={"reason": "户籍迁出"})
    assert cancel.json()["status"] == "cancelled"
    after = look(host, number, "service")
    assert after["certificate"]["status"] == "cancelled"
    assert after["certificate"]["children"] == [{"birth_order": 1, "birth_date": "2016-06-01", "sex": "F"}]
    # The host does not issue certificates for people from elsewhere.
    issued = host.api("POST", "/api/v1/certificates", json={"person_id": 1})
    assert (issued.status_code, issued.json()["field"]) == (422, "person_id")


@pytest.mark.slow
def test_a_node_outside_the_directory_learns_nothing(network: NetworkFactory) -> None:
    stranger, host, origin = network([("310110", "杨浦区"), *NODES])
    number = migrant(host, origin, 3, children_here=0, children_there=0)
    engine = make_engine(origin.database_url)
    with Session(engine) as session:
        remove_peer(session, stranger.node_id)
        session.commit()
    engine.dispose()
    engine = make_engine(stranger.database_url)
    with Session(engine) as session:
        signer = load_signer(session, stranger.data_dir / "keys")
    engine.dispose()
    payload = LookupPayload(id_number=number, name="王秀英", purpose="residence_check")  # type: ignore[arg-type]
    body = envelope_body(
        message_id=uuid.uuid4(),
        type="certificate.lookup",
        sender=stranger.node_id,
        recipient=origin.node_id,
        sent_at=utcnow(),
        correlation_id=None,
        payload=payload,
    )
    path = "/certificate-lookups"
    with httpx.Client() as client:
        response = post_signed(
            client, Settings(), signer, url=f"{origin.url}/peer/v1{path}", path=path, body=body
        )
    assert response.status_code == 401
    assert response.json()["code"] == "unknown_key"
    assert rows(origin, LookupLog) == []
    # Through the stranger's staff API: the origin's signed refusal, nothing is kept.
    refused = stranger.api("POST", LOOKUP, json={"id_number": number, "name": "王秀英"})
    assert (refused.status_code, refused.json()["code"], refused.json()["peer_code"]) == (
        409, "peer_refused", "unknown_key"
    )
    assert rows(stranger, CertificateCheck) == []
    assert rows(origin, LookupLog) == []
    # An origin outside the host's directory (Shenzhen, 440305): a clear 422, nothing sent.
    far = host.api("POST", LOOKUP, json={"id_number": id_number("440305", BORN, 1), "name": "王秀英"})
    assert far.status_code == 422
    assert far.json()["field"] == "id_number"
    assert "440305" in far.json()["detail"]


@pytest.mark.slow
def test_auto_send_opens_a_7_day_case_at_the_origin(network: NetworkFactory) -> None:
    host, origin = network(NODES, env={"YIPANQI_CERTIFICATE_DISCREPANCY_AUTO_SEND": "true"})
    unknown = id_number(origin.node_id, date(1993, 7, 1), 41)
    # Unknown at her origin: the host's 流入通报 gives it the standing to ask (docs/protocol.md).
    arrived = (utcnow().astimezone(SHANGHAI).date() - timedelta(days=3)).isoformat()
    registered = host.api(
        "POST",
        "/api/v1/people",
        json={"id_number": unknown, "name": "王秀英", "sex": "F", "birth_date": "1993-07-01",
              "host_node": host.node_id, "arrived_on": arrived},
    )  # fmt: skip
    assert registered.status_code == 201, registered.text
    arrivals = {"direction": "incoming", "kind": "arrival"}
    wait_for(lambda: origin.api("GET", "/api/v1/notifications", params=arrivals).json()["total"] == 1)
    answer = look(host, unknown, "residence_check")
    case_id = answer["discrepancy_request"]["case_id"]
    assert answer["found"] is False
    assert case_id is not None
    sent = host.api("GET", f"/api/v1/verification-requests/{case_id}").json()
    assert sent["topic"] == "certificate_discrepancy"
    assert sent["priority"] == "normal"
    assert sent["key_target"] is True

    def incoming() -> dict[str, Any] | None:
        items = origin.api("GET", "/api/v1/verification-requests", params={"direction": "incoming"}).json()
        return next((c for c in items["items"] if c["request_id"] == sent["request_id"]), None)

    case = wait_for(incoming)
    assert case["topic"] == "certificate_discrepancy"
    received = datetime.fromisoformat(case["received_at"])
    assert datetime.fromisoformat(case["due_at"]) == due_at(received, DeadlineRule(days=7))
    detail = origin.api("GET", f"/api/v1/verification-requests/{case['id']}").json()
    assert detail["subject"]["name"] == "王秀英"
    assert "未查到" in detail["question"]
