"""A real node talks to an independent RFC 9421 implementation (node.js, ``rfc9421.mjs``) both ways.

- Requests signed by the independent implementation are accepted by the node, and the node's
  signed answers (receipts and problems) verify with the independent verifier.
- Requests signed by the project's code verify with the independent verifier: one signed here,
  and one the node's relay really sends to a fake peer that answers with an independently
  signed receipt, which the node in turn accepts as evidence of delivery.
"""

from __future__ import annotations

import json
import secrets
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.clock import utcnow
from service.localnet import LocalNode, build_network, wait_for
from service.signing.http import new_nonce, sign_request
from service.signing.keys import public_key_text
from service.sla.deadlines import SHANGHAI
from tests.conftest import FAST, free_port

from . import independent

pytestmark = pytest.mark.skipif(
    not independent.available(),
    reason="independent RFC 9421 implementation not installed: needs node and "
    "`(cd tests/interop && npm ci --no-audit --no-fund)`",
)

HOST = "411627"  # the real node
PEER = "410105"  # a fake peer; its key signs through the independent implementation
PEER_KEYID = f"{PEER}/k1"
PEER_SEED = secrets.token_hex(32)
PEER_PUBLIC = public_key_text(Ed25519PrivateKey.from_private_bytes(bytes.fromhex(PEER_SEED)).public_key())
REQUESTS = "/peer/v1/verification-requests"
SUBJECT = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}
RECEIPT_DUE_AT = "2027-01-01T16:00:00Z"  # what the fake peer promises in its receipts


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def request_body() -> bytes:
    return canonical(
        {
            "message_id": str(uuid.uuid4()),
            "type": "verification.request",
            "sender": PEER,
            "recipient": HOST,
            "sent_at": utcnow().astimezone(SHANGHAI).replace(microsecond=0).isoformat(),
            "correlation_id": None,
            "payload": {
                "subject": SUBJECT,
                "topic": "marital_status",
                "priority": "normal",
                "key_target": False,
                "question": "请核实该对象婚育情况。",
                "reference": "JS-2026-000123",
            },
        }
    )


# --- a fake peer: receives the node's deliveries, checks them independently, signs receipts ----------


@dataclass
class Delivery:
    path: str
    headers: dict[str, str]
    body: bytes
    verdict: independent.Verdict


@dataclass
class FakePeer:
    server: ThreadingHTTPServer
    node_public_key: str = ""
    deliveries: list[Delivery] = field(default_factory=list)
    errors: list[BaseException] = field(default_factory=list)
    arrived: threading.Event = field(default_factory=threading.Event)

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def receive(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, dict[str, str], bytes]:
        verdict = independent.verify_request(
            method="POST",
            url=path,
            headers=headers,
            body=body,
            public_key_b64url=self.node_public_key,
            now=int(utcnow().timestamp()),
        )
        self.deliveries.append(Delivery(path, headers, body, verdict))
        self.arrived.set()
        if not verdict.ok:
            return 401, {"Content-Type": "text/plain"}, b"not verified"
        digest = next(v for k, v in headers.items() if k.lower() == "content-digest")
        receipt = canonical(
            {
                "message_id": json.loads(body)["message_id"],
                "status": "accepted",
                "received_at": utcnow().replace(microsecond=0).isoformat().replace("+00:00", "Z"),
                "digest": digest,
                "due_at": RECEIPT_DUE_AT,
            }
        )
        signed = independent.sign_response(
            status=202,
            headers={"Content-Type": "application/json"},
            body=receipt,
            private_seed_hex=PEER_SEED,
            keyid=PEER_KEYID,
            created=int(utcnow().timestamp()),
            request=independent.BoundRequest("POST", path, headers),  # bound to what it answers
        )
        return 202, signed.headers, receipt


def _handler(peer_ref: list[FakePeer]) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            peer = peer_ref[0]
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            try:
                status, headers, answer = peer.receive(self.path, dict(self.headers.items()), body)
            except Exception as exc:  # surfaced by the test, not lost in the server thread
                peer.errors.append(exc)
                status, headers, answer = 500, {"Content-Type": "text/plain"}, b"fake peer failed"
            self.send_response(status)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(answer)))
            self.end_headers()
            self.wfile.write(answer)

        def log_message(self, format: str, *args: Any) -> None:
            pass

    return Handler


@pytest.fixture(scope="module")
def fake_peer() -> Iterator[FakePeer]:
    peer_ref: list[FakePeer] = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(peer_ref))
    peer_ref.append(FakePeer(server))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield peer_ref[0]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory, fake_peer: FakePeer) -> Iterator[LocalNode]:
    root = tmp_path_factory.mktemp("interop")
    (host,) = build_network(root, [(HOST, "太康县")], free_port(), FAST)
    key = f"{PEER_KEYID}={PEER_PUBLIC}"
    host.cli("peers", "add", "--node-id", PEER, "--name", "金水区", "--url", fake_peer.url, "--key", key)
    fake_peer.node_public_key = host.public_key.split("=", 1)[1]
    host.start()
    try:
        yield host
    finally:
        host.stop()


def node_public_key(node: LocalNode) -> str:
    return node.public_key.split("=", 1)[1]


def independently_signed(body: bytes, *, nonce: str | None = None) -> dict[str, str]:
    created = int(utcnow().timestamp())
    return independent.sign_request(
        method="POST",
        url=REQUESTS,
        headers={"Content-Type": "application/json"},
        body=body,
        private_seed_hex=PEER_SEED,
        keyid=PEER_KEYID,
        created=created,
        expires=created + 300,
        nonce=nonce or new_nonce(),
    ).headers


def sent(response: httpx.Response) -> independent.BoundRequest:
    """The request ``response`` answers, as sent: what the node's answer is bound to."""
    request = response.request
    return independent.BoundRequest(
        request.method, request.url.raw_path.decode(), dict(request.headers.items())
    )


def verified_independently(node: LocalNode, response: httpx.Response) -> independent.Verdict:
    """The node's answer verifies independently, bound to the request it answers (RFC 9421 req)."""
    return independent.verify_response(
        status=response.status_code,
        headers=dict(response.headers.items()),
        body=response.content,
        public_key_b64url=node_public_key(node),
        now=int(utcnow().timestamp()),
        request=sent(response),
    )


# --- the independent implementation signs, the node receives -----------------------------------------


def test_node_accepts_an_independently_signed_request(node: LocalNode) -> None:
    body = request_body()
    headers = independently_signed(body)
    response = httpx.post(node.url + REQUESTS, content=body, headers=headers, timeout=30)
    assert response.status_code == 202, response.text
    receipt = response.json()
    assert receipt["message_id"] == json.loads(body)["message_id"]
    assert receipt["status"] == "accepted"
    assert receipt["digest"] == headers["Content-Digest"]
    assert receipt["due_at"] is not None
    assert verified_independently(node, response) == independent.Verdict(ok=True)
    # The node's refusals are signed too: the same request again is a replay.
    again = httpx.post(node.url + REQUESTS, content=body, headers=headers, timeout=30)
    assert again.status_code == 409, again.text
    assert again.json()["code"] == "replayed"
    assert verified_independently(node, again) == independent.Verdict(ok=True)


def test_node_refuses_an_independently_signed_request_with_another_body(node: LocalNode) -> None:
    """Not vacuous: the node checks what the independent implementation signed."""
    headers = independently_signed(request_body())
    response = httpx.post(node.url + REQUESTS, content=request_body(), headers=headers, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "digest_mismatch"
    assert verified_independently(node, response) == independent.Verdict(ok=True)


def test_independent_verifier_rejects_a_tampered_node_receipt(node: LocalNode) -> None:
    """Not vacuous either: the independent verifier refuses the node's receipt once it is changed."""
    body = request_body()
    response = httpx.post(node.url + REQUESTS, content=body, headers=independently_signed(body), timeout=30)
    assert response.status_code == 202, response.text
    verdict = independent.verify_response(
        status=response.status_code,
        headers=dict(response.headers.items()),
        body=response.content.replace(b'"accepted"', b'"duplicate"'),
        public_key_b64url=node_public_key(node),
        now=int(utcnow().timestamp()),
        request=sent(response),
    )
    assert verdict == independent.Verdict(ok=False, error="Content-Digest does not match the body")
    # ...and refuses it as the answer to any other request (another signature, another body).
    other = request_body()
    elsewhere = independent.BoundRequest("POST", REQUESTS, independently_signed(other))
    verdict = independent.verify_response(
        status=response.status_code,
        headers=dict(response.headers.items()),
        body=response.content,
        public_key_b64url=node_public_key(node),
        now=int(utcnow().timestamp()),
        request=elsewhere,
    )
    assert verdict == independent.Verdict(ok=False, error="signature does not verify")


# --- the project signs, the independent implementation verifies ---------------------------------------


def test_project_signed_request_verifies_independently() -> None:
    body = request_body()
    created = utcnow().replace(microsecond=0)
    headers = sign_request(
        method="POST",
        path=REQUESTS,
        body=body,
        key=Ed25519PrivateKey.from_private_bytes(bytes.fromhex(PEER_SEED)),
        keyid=PEER_KEYID,
        created=created,
    )
    verdict = independent.verify_request(
        method="POST",
        url=REQUESTS,
        headers=headers,
        body=body,
        public_key_b64url=PEER_PUBLIC,
        now=int(created.timestamp()) + 1,
    )
    assert verdict == independent.Verdict(ok=True)


def test_node_delivery_verifies_independently_and_takes_an_independent_receipt(
    node: LocalNode, fake_peer: FakePeer
) -> None:
    response = node.api(
        "POST",
        "/api/v1/verification-requests",
        json={
            "recipient": PEER,
            "subject": SUBJECT,
            "topic": "marital_status",
            "question": "请核实该对象婚育情况。",
        },
    )
    assert response.status_code == 201, response.text
    case = response.json()
    assert fake_peer.arrived.wait(timeout=30), "the node's relay delivered nothing"
    assert not fake_peer.errors, fake_peer.errors
    delivery = fake_peer.deliveries[0]
    assert delivery.path == REQUESTS
    assert json.loads(delivery.body)["message_id"] == case["request_id"]
    assert delivery.verdict == independent.Verdict(ok=True)
    # The node checked the independently signed receipt and keeps its clock.

    def delivered_case() -> dict[str, Any] | None:
        found: dict[str, Any] = node.api("GET", f"/api/v1/verification-requests/{case['id']}").json()
        return found if found["status"] == "delivered" else None

    delivered = wait_for(delivered_case)
    assert delivered["due_at"].replace("+00:00", "Z") == RECEIPT_DUE_AT
    assert delivered["messages"][0]["receipt"]["due_at"] == RECEIPT_DUE_AT
    assert not fake_peer.errors, fake_peer.errors
