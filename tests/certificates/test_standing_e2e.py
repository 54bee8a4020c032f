"""Real nodes: the origin answers her host, refuses a stranger with a signed 403 that says nothing of
her, records both, and limits each peer's look-ups (a signed 429 with Retry-After)."""

from __future__ import annotations

import uuid
from datetime import date
from typing import Any

import httpx
import pytest
from sqlmodel import Session, select

from service.certificates.schemas import LookupPayload
from service.clock import utcnow
from service.db import make_engine
from service.exchange.envelope import envelope_body
from service.localnet import LocalNode
from service.models import LookupLog, LookupPurpose, LookupStanding
from service.signing.http import RequestBinding, sign_request, verify_response
from service.signing.keys import public_key_from_text
from service.signing.node import NodeSigner, load_signer
from tests.certificates.factories import add_to_node, id_number, person
from tests.conftest import NetworkFactory

NODES = [("410105", "金水区"), ("411627", "太康县"), ("310110", "杨浦区")]
BORN = date(1990, 3, 8)
PATH = "/peer/v1/certificate-lookups"
BUDGET = 20  # look-ups per peer per hour at the origin in these tests


def signer_of(node: LocalNode) -> NodeSigner:
    engine = make_engine(node.database_url)
    try:
        with Session(engine) as session:
            return load_signer(session, node.data_dir / "keys")
    finally:
        engine.dispose()


def lookup_logs(node: LocalNode) -> list[LookupLog]:
    engine = make_engine(node.database_url)
    try:
        with Session(engine) as session:
            return list(session.exec(select(LookupLog).order_by(LookupLog.id)).all())  # type: ignore[arg-type]
    finally:
        engine.dispose()


def ask(
    client: httpx.Client, sender: LocalNode, signer: NodeSigner, origin: LocalNode, number: str
) -> httpx.Response:
    """A signed look-up straight to the origin's peer API; the answer's signature checked, bound to it."""
    payload = LookupPayload(id_number=number, name="王秀英", purpose=LookupPurpose.service)
    body = envelope_body(
        message_id=uuid.uuid4(),
        type="certificate.lookup",
        sender=sender.node_id,
        recipient=origin.node_id,
        sent_at=utcnow(),
        correlation_id=None,
        payload=payload,
    )
    headers = sign_request(
        method="POST", path=PATH, body=body, key=signer.private_key, keyid=signer.keyid, created=utcnow()
    )
    response = client.post(origin.url + PATH, content=body, headers=headers)
    keyid, text = origin.public_key.split("=", 1)
    public = public_key_from_text(text)
    verify_response(  # raises unless the origin signed it, for this request
        status=response.status_code,
        headers=response.headers.multi_items(),
        body=response.content,
        resolve_key=lambda k: public if k == keyid else None,
        expected_node=origin.node_id,
        now=utcnow(),
        request=RequestBinding.of_request(PATH, headers.items()),
    )
    return response


def problem(response: httpx.Response) -> dict[str, Any]:
    assert response.headers["content-type"] == "application/problem+json"
    body: dict[str, Any] = response.json()
    return body


@pytest.mark.slow
def test_host_answered_stranger_refused_alike_both_recorded_and_each_peer_rate_limited(
    network: NetworkFactory,
) -> None:
    host, origin, stranger = network(NODES, env={"YIPANQI_LOOKUP_RATE_LIMIT": f"{BUDGET}/hour"})
    number = id_number(origin.node_id, BORN, 1)
    person_id = add_to_node(origin, person(origin.node_id, BORN, 1, host=host.node_id))
    unknown = id_number(origin.node_id, date(1992, 1, 1), 40)

    # Her registered host, through its staff API: the certificate.
    answered = host.api("POST", "/api/v1/certificates/lookup", json={"id_number": number, "name": "王秀英"})
    assert answered.status_code == 200, answered.text
    assert answered.json()["found"] is True

    # A stranger (in the directory, trusted, but no standing): a signed 403, the same for an
    # unknown number, naming neither.
    stranger_signer = signer_of(stranger)
    with httpx.Client(timeout=30) as client:
        refused = ask(client, stranger, stranger_signer, origin, number)
        nobody = ask(client, stranger, stranger_signer, origin, unknown)
    assert (refused.status_code, nobody.status_code) == (403, 403)
    assert problem(refused)["code"] == "no_standing"
    assert refused.content == nobody.content
    assert number not in refused.text
    # Through the stranger's staff API: a failed call, nothing disclosed.
    through = stranger.api(
        "POST", "/api/v1/certificates/lookup", json={"id_number": number, "name": "王秀英"}
    )
    assert (through.status_code, through.json()["code"], through.json()["peer_code"]) == (
        409, "peer_refused", "no_standing"
    )

    # The origin recorded each one: who asked, with what standing, the outcome, her record by id.
    assert [(g.requester, g.standing, g.refused, g.found, g.person_id) for g in lookup_logs(origin)] == [
        (host.node_id, LookupStanding.host, False, True, person_id),
        (stranger.node_id, LookupStanding.none, True, False, person_id),
        (stranger.node_id, LookupStanding.none, True, False, None),
        (stranger.node_id, LookupStanding.none, True, False, person_id),
    ]

    # 50 look-ups at once from her host: its budget's worth answered, the rest a signed 429.
    host_signer = signer_of(host)
    with httpx.Client(timeout=30) as client:
        burst = [ask(client, host, host_signer, origin, number) for _ in range(50)]
    statuses = [r.status_code for r in burst]
    assert statuses == [200] * (BUDGET - 1) + [429] * (50 - BUDGET + 1)
    limited = burst[-1]
    assert problem(limited)["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 3600
    assert number not in limited.text
    # A rate-limited look-up never reached the register: not recorded, nothing disclosed.
    assert sum(1 for g in lookup_logs(origin) if g.requester == host.node_id) == BUDGET
    # Through the host's staff API, still within the window: the origin's word, with its Retry-After.
    slowed = host.api("POST", "/api/v1/certificates/lookup", json={"id_number": number, "name": "王秀英"})
    assert (slowed.status_code, slowed.json()["code"]) == (429, "peer_rate_limited"), slowed.text
    assert 1 <= int(slowed.headers["Retry-After"]) <= 3600
    # The stranger's budget is its own (its refusals spent 3 of it, not the host's).
    with httpx.Client(timeout=30) as client:
        assert ask(client, stranger, stranger_signer, origin, number).status_code == 403
