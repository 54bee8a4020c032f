"""通报 between real node processes: a host notifies the origin of every kind; acks cross back."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool
from sqlmodel import Session

from service.clock import utcnow
from service.db import make_engine
from service.directory.service import KeySpec, add_peer
from service.localnet import LocalNode, wait_for
from service.signing.http import sign_request
from service.signing.keys import private_key_path, public_key_text, read_private_key
from service.sla.deadlines import SHANGHAI
from tests.conftest import NetworkFactory
from tests.notifications.test_details import SUBJECT, VALID

API = "/api/v1/notifications"
TABLES = ("inbox_message", "notification", "seen_nonce", "outbox_message")
STRANGER, STRANGER_KEY = "310110", Ed25519PrivateKey.generate()  # 杨浦区: trusted, but no party to these


def send(host: LocalNode, origin: LocalNode, kind: str, **extra: Any) -> dict[str, Any]:
    body = {
        "recipient": origin.node_id,
        "subject": SUBJECT,
        "kind": kind,
        "occurred_on": "2025-08-01",
        "details": VALID[kind],
        **extra,
    }
    response = host.api("POST", API, json=body)
    assert response.status_code == 201, response.text
    return response.json()  # type: ignore[no-any-return]


def find(node: LocalNode, message_id: str, status: str | None = None) -> dict[str, Any] | None:
    items = node.api("GET", API, params={"page_size": 200}).json()["items"]
    found = next((n for n in items if n["message_id"] == message_id), None)
    return found if found and (status is None or found["status"] == status) else None


def detail(node: LocalNode, notification_id: int) -> dict[str, Any]:
    response = node.api("GET", f"{API}/{notification_id}")
    assert response.status_code == 200, response.text
    return response.json()  # type: ignore[no-any-return]


def history(read: dict[str, Any]) -> list[tuple[str, str]]:
    return [(m["type"], m["direction"]) for m in read["messages"]]


@pytest.mark.slow
def test_every_kind_crosses_and_staff_acks_cross_back(network: NetworkFactory) -> None:
    host, origin = network()  # 金水区 hosts a migrant from 太康县
    sent = {kind: send(host, origin, kind) for kind in VALID}
    for kind, out in sent.items():
        assert (out["status"], out["direction"], out["kind"]) == ("queued", "outgoing", kind)
        delivered = wait_for(lambda o=out: find(host, o["message_id"], "delivered"))
        incoming = wait_for(lambda o=out: find(origin, o["message_id"], "received"))
        # Both sides hold the receipt's clock: the ack is due at the same instant on both.
        assert incoming["direction"] == "incoming"
        assert (incoming["due_at"], incoming["received_at"]) == (
            delivered["due_at"],
            delivered["received_at"],
        )
        assert incoming["due_at"] is not None
        assert incoming["subject_id_number_masked"] == "4116**********0024"
        read = detail(origin, incoming["id"])
        unmasked = {k: v for k, v in SUBJECT.items() if k != "id_number"}
        assert (read["kind"], read["details"], read["subject"]) == (kind, VALID[kind], unmasked)
        assert SUBJECT["id_number"] not in json.dumps(read)  # the payload's subject is masked too
        ack = origin.api("POST", f"{API}/{incoming['id']}/ack")
        assert ack.status_code == 200, ack.text
        assert (ack.json()["status"], ack.json()["auto_acknowledged"]) == ("acknowledged", False)
        acked = wait_for(lambda o=out: find(host, o["message_id"], "acknowledged"))
        assert acked["acknowledged_at"] == ack.json()["acknowledged_at"]
        assert acked["ack_received_at"] is not None
        assert history(detail(host, acked["id"])) == [
            ("notification", "sent"),
            ("notification.ack", "received"),
        ]
        assert history(detail(origin, incoming["id"])) == [
            ("notification", "received"),
            ("notification.ack", "sent"),
        ]
        again = origin.api("POST", f"{API}/{incoming['id']}/ack")
        assert (again.status_code, again.json()["code"]) == (409, "invalid_state")
    # The list never shows a whole ID number; it filters by kind and direction.
    listing = origin.api("GET", API, params={"direction": "incoming", "kind": "birth"})
    assert listing.json()["total"] == 1
    assert SUBJECT["id_number"] not in listing.text
    assert origin.api("GET", API, params={"direction": "outgoing"}).json()["total"] == 0


@pytest.mark.slow
def test_auto_ack_kinds_are_acknowledged_without_staff(network: NetworkFactory) -> None:
    host, origin = network(env={"YIPANQI_NOTIFICATION_AUTO_ACK_KINDS": '["arrival"]'})
    arrival = send(host, origin, "arrival")
    birth = send(host, origin, "birth")
    # The origin's ack can overtake the host's recording of the receipt: wait for both.
    acked = wait_for(lambda: (n := find(host, arrival["message_id"], "acknowledged")) and n["due_at"] and n)
    at_origin = wait_for(lambda: find(origin, arrival["message_id"]))
    assert at_origin["status"] == "acknowledged"
    assert at_origin["auto_acknowledged"] is True
    assert acked["due_at"] == at_origin["due_at"]
    assert history(detail(origin, at_origin["id"])) == [
        ("notification", "received"),
        ("notification.ack", "sent"),
    ]
    # A kind the setting does not name waits for staff.
    waiting = wait_for(lambda: find(origin, birth["message_id"]))
    assert (waiting["status"], waiting["auto_acknowledged"]) == ("received", False)
    assert wait_for(lambda: find(host, birth["message_id"], "delivered"))


# --- refused peer messages ---------------------------------------------------------------------------


def _trust_stranger(node: LocalNode) -> None:
    engine = make_engine(node.database_url)
    try:
        with Session(engine) as session:
            key = KeySpec(f"{STRANGER}/k1", public_key_text(STRANGER_KEY.public_key()))
            add_peer(session, node_id=STRANGER, name="杨浦区", url="http://127.0.0.1:9", keys=[key])
            session.commit()
    finally:
        engine.dispose()


def _envelope(
    recipient: str,
    payload: dict[str, Any],
    *,
    sender: str,
    type: str,
    correlation: str | None = None,
) -> bytes:
    body = {
        "message_id": str(uuid.uuid4()),
        "type": type,
        "sender": sender,
        "recipient": recipient,
        "sent_at": utcnow().astimezone(SHANGHAI).replace(microsecond=0).isoformat(),
        "correlation_id": correlation,
        "payload": payload,
    }
    return json.dumps(body, ensure_ascii=False).encode("utf-8")


def post(node: LocalNode, path: str, body: bytes, key: Ed25519PrivateKey, keyid: str) -> httpx.Response:
    headers = sign_request(
        method="POST",
        path=path,
        body=body,
        key=key,
        keyid=keyid,
        created=utcnow().replace(microsecond=0),
    )
    return httpx.post(node.url + path, content=body, headers=headers, timeout=30.0)


class Counts:
    def __init__(self, node: LocalNode) -> None:
        self.engine: Engine = create_engine(node.database_url, poolclass=NullPool)

    def __call__(self) -> dict[str, int]:
        with self.engine.connect() as conn:
            return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in TABLES}


@pytest.fixture
def pair(network: NetworkFactory) -> tuple[LocalNode, LocalNode]:
    host, origin = network(start=False)
    for node in (host, origin):
        _trust_stranger(node)
        node.start()
    return host, origin


def notification_payload(**details: Any) -> dict[str, Any]:
    return {
        "subject": SUBJECT,
        "kind": "birth",
        "occurred_on": "2025-08-01",
        "details": {**VALID["birth"], **details},
    }


def refused(
    node: LocalNode, path: str, body: bytes, key: Ed25519PrivateKey, keyid: str, status: int, code: str
) -> dict[str, Any]:
    counts = Counts(node)
    try:
        before = counts()
        response = post(node, path, body, key, keyid)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert "Signature" in response.headers
        problem: dict[str, Any] = response.json()
        assert problem["code"] == code
        assert SUBJECT["id_number"] not in response.text
        assert counts() == before, "a refused message left rows behind"
        return problem
    finally:
        counts.engine.dispose()


@pytest.mark.slow
def test_refused_notifications_and_acks(pair: tuple[LocalNode, LocalNode]) -> None:
    host, origin = pair
    stranger = (STRANGER_KEY, f"{STRANGER}/k1")
    path = "/peer/v1/notifications"
    # Bad details: 422 invalid_message naming the field, nothing stored.
    bad = _envelope(
        origin.node_id, notification_payload(birth_order=21), sender=STRANGER, type="notification"
    )
    problem = refused(origin, path, bad, *stranger, 422, "invalid_message")
    assert {"field": "payload.details.birth_order", "reason": "Input should be less than or equal to 20"} in (
        problem["errors"]
    )
    wrong_kind = _envelope(
        origin.node_id,
        {**notification_payload(), "details": VALID["arrival"]},
        sender=STRANGER,
        type="notification",
    )
    problem = refused(origin, path, wrong_kind, *stranger, 422, "invalid_message")
    assert {e["field"] for e in problem["errors"]} >= {
        "payload.details.birth_date",
        "payload.details.arrived_on",
    }
    # The same sender with good details is accepted: the refusals above were about the details.
    good = _envelope(origin.node_id, notification_payload(), sender=STRANGER, type="notification")
    receipt = post(origin, path, good, *stranger)
    assert receipt.status_code == 202, receipt.text
    assert receipt.json()["due_at"] is not None

    # Acks: only the counterparty, only for a known notification, only once.
    out = send(host, origin, "contraception")
    wait_for(lambda: find(host, out["message_id"], "delivered"))
    ack_path = f"/peer/v1/notifications/{out['message_id']}/ack"
    ack_at = {"acknowledged_at": utcnow().astimezone(SHANGHAI).replace(microsecond=0).isoformat()}

    def ack(sender: str, correlation: str = out["message_id"]) -> bytes:
        return _envelope(
            host.node_id, ack_at, sender=sender, type="notification.ack", correlation=correlation
        )

    refused(host, ack_path, ack(STRANGER), *stranger, 403, "forbidden")
    unknown = str(uuid.uuid4())
    refused(
        host,
        f"/peer/v1/notifications/{unknown}/ack",
        ack(STRANGER, unknown),
        *stranger,
        404,
        "unknown_request",
    )
    refused(host, "/peer/v1/notifications/not-a-uuid/ack", ack(STRANGER), *stranger, 422, "invalid_message")
    assert find(host, out["message_id"], "delivered")

    incoming = wait_for(lambda: find(origin, out["message_id"], "received"))
    assert origin.api("POST", f"{API}/{incoming['id']}/ack").status_code == 200
    wait_for(lambda: find(host, out["message_id"], "acknowledged"))
    # A second, different ack from the origin itself (signed with its own key): 409 conflict.
    origin_key = read_private_key(private_key_path(origin.data_dir / "keys", "k1"))
    refused(host, ack_path, ack(origin.node_id), origin_key, f"{origin.node_id}/k1", 409, "conflict")
    for node in (host, origin):  # no ID number or name in either node's log
        log = (node.data_dir / "node.log").read_text(encoding="utf-8", errors="replace")
        assert SUBJECT["id_number"] not in log
        assert SUBJECT["name"] not in log
