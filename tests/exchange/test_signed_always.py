"""Every answer under /peer/v1 is signed and bound to the request it answers (docs/protocol.md
sections 6 and 6.1), against real node processes: a 500 while the node's database is cut (a TCP
proxy in front of PostgreSQL, closed), a 404 for an unknown path, a 405, admission's 503; and the
senders refuse a signed answer bound to another request (a replayed ``{"found": false}``).
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import text
from sqlalchemy.engine import make_url

from service.clock import utcnow
from service.db import make_engine
from service.errors import SignatureInvalid
from service.localnet import LocalNode, build_network
from service.signing.http import RequestBinding, sign_request, verify_response
from service.signing.keys import private_key_path, public_key_from_text, read_private_key
from service.sla.deadlines import SHANGHAI
from tests.conftest import FAST, PostgresServer, free_ports
from tests.exchange.tcp_cut import CuttableProxy

ASKER, HOST = "410105", "411627"
LOOKUPS = "/peer/v1/certificate-lookups"
LOOKUP_API = "/api/v1/certificates/lookup"
# Two women the origin (410105) does not know: each look-up is answered {"found": false}.
NOBODY = ("41010519900101002X", "410105199202020021")
REQUESTS = "/peer/v1/verification-requests"


def canonical(obj: object) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def lookup_body(id_number: str = "411627199503080024", name: str = "王秀英") -> bytes:
    return canonical(
        {
            "message_id": str(uuid.uuid4()),
            "type": "certificate.lookup",
            "sender": ASKER,
            "recipient": HOST,
            "sent_at": utcnow().astimezone(SHANGHAI).replace(microsecond=0).isoformat(),
            "correlation_id": None,
            "payload": {"id_number": id_number, "name": name, "purpose": "residence_check"},
        }
    )


def request_body() -> bytes:
    """A 协查 request from ASKER (asynchronous: stored, answered 202 with a receipt)."""
    return canonical(
        {
            "message_id": str(uuid.uuid4()),
            "type": "verification.request",
            "sender": ASKER,
            "recipient": HOST,
            "sent_at": utcnow().astimezone(SHANGHAI).replace(microsecond=0).isoformat(),
            "correlation_id": None,
            "payload": {
                "subject": {
                    "id_number": "411627199503080024",
                    "name": "王秀英",
                    "sex": "F",
                    "birth_date": "1995-03-08",
                },
                "topic": "marital_status",
                "priority": "normal",
                "key_target": False,
                "question": "请核实该对象婚育情况。",
                "reference": "JS-2026-000123",
            },
        }
    )


@dataclass
class Peer:
    """The test speaks as ASKER (its key from its data folder) to HOST, a running node."""

    host: LocalNode
    key: Ed25519PrivateKey
    keyid: str = f"{ASKER}/k1"

    def signed(self, path: str, body: bytes, method: str = "POST") -> dict[str, str]:
        return sign_request(
            method=method, path=path, body=body, key=self.key, keyid=self.keyid, created=utcnow()
        )

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        headers = self.signed(path, body) if headers is None else headers
        return httpx.post(self.host.url + path, content=body, headers=headers, timeout=30)

    def verify(self, response: httpx.Response, request: RequestBinding | None) -> None:
        """The host's valid signature on ``response``, bound to ``request`` (raises otherwise)."""
        keyid, text = self.host.public_key.split("=", 1)
        public = public_key_from_text(text)
        verify_response(
            status=response.status_code,
            headers=response.headers.multi_items(),
            body=response.content,
            resolve_key=lambda k: public if k == keyid else None,
            expected_node=HOST,
            now=utcnow(),
            request=request,
        )


def _peer(host: LocalNode, asker: LocalNode) -> Peer:
    return Peer(host, read_private_key(private_key_path(asker.data_dir / "keys", "k1")))


@pytest.fixture
def cut_network(tmp_path: Path, postgres: PostgresServer) -> Iterator[tuple[Peer, CuttableProxy]]:
    """HOST on PostgreSQL behind a proxy the test can cut; ASKER only initialised (its key signs)."""
    url = make_url(postgres.new_database())
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    asker, host = build_network(
        tmp_path,
        [(ASKER, "金水区"), (HOST, "太康县")],
        free_ports(2),
        FAST,
        [postgres.new_database(), proxied],
    )
    host.start()
    try:
        yield _peer(host, asker), proxy
    finally:
        proxy.mend() if proxy._cut.is_set() else None
        host.stop()
        proxy.close()


@pytest.mark.postgres
def test_a_500_during_a_database_outage_is_signed_and_bound(cut_network: tuple[Peer, CuttableProxy]) -> None:
    peer, proxy = cut_network
    body = request_body()
    headers = peer.signed(REQUESTS, body)
    first = peer.post(REQUESTS, body, headers)  # the database is there: a signed receipt
    assert first.status_code == 202, first.text
    peer.verify(first, RequestBinding.of_request(REQUESTS, headers.items()))
    proxy.cut()
    for path, body in ((REQUESTS, request_body()), (LOOKUPS, lookup_body())):
        headers = peer.signed(path, body)
        response = peer.post(path, body, headers)
        assert response.status_code in (500, 503), response.text
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["status"] == response.status_code
        assert "Traceback" not in response.text
        peer.verify(response, RequestBinding.of_request(path, headers.items()))
        with pytest.raises(SignatureInvalid):  # bound to that request, no other
            peer.verify(response, RequestBinding.of_request(path, peer.signed(path, body).items()))


# --- every other answer under /peer/v1, on one node (SQLite) -------------------------------------------


@pytest.fixture(scope="module")
def one_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    root = tmp_path_factory.mktemp("signed-always")
    env = {**FAST, "YIPANQI_MAX_BODY_BYTES": "4096", "YIPANQI_RELAY_ENABLED": "false"}
    asker, host = build_network(root, [(ASKER, "金水区"), (HOST, "太康县")], free_ports(2), env)
    host.start()
    try:
        yield _peer(host, asker)
    finally:
        host.stop()


@pytest.mark.parametrize(
    ("method", "path", "body", "status"),
    [
        ("POST", "/peer/v1/no-such-endpoint", b"{}", 404),
        ("GET", "/peer/v1/nothing/here", b"", 404),
        ("GET", REQUESTS, b"", 405),
        ("DELETE", LOOKUPS, b"", 405),
        ("POST", REQUESTS, b'{"not":"an envelope"}', 422),
        ("POST", REQUESTS, b"x" * 5000, 413),  # over YIPANQI_MAX_BODY_BYTES
    ],
    ids=["404-post", "404-get", "405-get", "405-delete", "422", "413"],
)
def test_every_refusal_to_a_signed_request_is_signed_and_bound_to_it(
    one_node: Peer, method: str, path: str, body: bytes, status: int
) -> None:
    headers = one_node.signed(path, body, method=method)
    response = httpx.request(method, one_node.host.url + path, content=body, headers=headers, timeout=30)
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    binding = RequestBinding.of_request(path, headers.items())
    one_node.verify(response, binding)
    assert 'req;key="yp"' in response.headers["signature-input"]
    with pytest.raises(SignatureInvalid):  # for this request only
        one_node.verify(
            response, RequestBinding.of_request(path, one_node.signed(path, body, method).items())
        )


def test_an_unsigned_request_gets_an_answer_signed_for_itself_alone(one_node: Peer) -> None:
    """No signature to bind to: the answer covers the response only, which no sender accepts."""
    response = httpx.post(one_node.host.url + "/peer/v1/no-such-endpoint", content=b"{}", timeout=30)
    assert response.status_code == 404
    one_node.verify(response, None)
    assert "req" not in response.headers["signature-input"]


def test_the_node_document_is_signed_too(one_node: Peer) -> None:
    response = httpx.get(one_node.host.url + "/peer/v1/node", timeout=30)
    assert response.status_code == 200
    assert response.json()["node_id"] == HOST
    one_node.verify(response, None)


def test_a_receipt_is_bound_to_the_request_it_answers(one_node: Peer) -> None:
    body = request_body()
    headers = one_node.signed(REQUESTS, body)
    receipt = one_node.post(REQUESTS, body, headers)
    assert receipt.status_code == 202, receipt.text
    one_node.verify(receipt, RequestBinding.of_request(REQUESTS, headers.items()))
    again = one_node.signed(REQUESTS, body)  # the same message sent again: a duplicate, bound anew
    duplicate = one_node.post(REQUESTS, body, again)
    assert duplicate.status_code == 200
    one_node.verify(duplicate, RequestBinding.of_request(REQUESTS, again.items()))
    with pytest.raises(SignatureInvalid):  # the first receipt does not answer the second attempt
        one_node.verify(receipt, RequestBinding.of_request(REQUESTS, again.items()))


# --- the sender refuses an answer bound to another request ------------------------------------------


class Replayer:
    """A man in the middle between the asker and the origin: it forwards the first look-up and keeps
    the origin's signed answer, then answers every later one with that answer (a replay)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.kept: tuple[int, list[tuple[str, str]], bytes] | None = None
        self.replayed = 0
        replayer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if replayer.kept is None:
                    headers = {
                        k: v for k, v in self.headers.items() if k.lower() not in ("host", "content-length")
                    }
                    answer = httpx.post(
                        replayer.target + self.path, content=body, headers=headers, timeout=30
                    )
                    replayer.kept = (answer.status_code, answer.headers.multi_items(), answer.content)
                else:
                    replayer.replayed += 1
                status, headers, content = replayer.kept
                self.send_response(status)
                for name, value in headers:
                    if name.lower() not in (
                        "content-length",
                        "transfer-encoding",
                        "connection",
                        "date",
                        "server",
                    ):
                        self.send_header(name, value)
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_replayed_signed_not_found_for_another_look_up_is_refused(tmp_path: Path) -> None:
    """The origin's signed {"found": false} for one look-up, replayed within its signature window as
    the answer to another, is refused by the asker (before: accepted as the other's answer)."""
    env = {**FAST, "YIPANQI_LOOKUP_STANDING": "any_trusted"}  # the origin answers any trusted node
    origin_node, asker_node = build_network(
        tmp_path, [(ASKER, "金水区"), (HOST, "太康县")], free_ports(2), env
    )
    origin_node.start()
    replayer = Replayer(origin_node.url)
    try:
        engine = make_engine(asker_node.database_url)  # the asker reaches the origin through the replayer
        with engine.begin() as conn:
            conn.execute(text("UPDATE peer SET url = :u WHERE node_id = :n"), {"u": replayer.url, "n": ASKER})
        engine.dispose()
        asker_node.start()
        first = asker_node.api("POST", LOOKUP_API, json={"id_number": NOBODY[0], "name": "王秀英"})
        assert first.status_code == 200, first.text
        assert first.json()["found"] is False
        second = asker_node.api("POST", LOOKUP_API, json={"id_number": NOBODY[1], "name": "李娜"})
        assert replayer.replayed == 1
        assert (second.status_code, second.json()["code"]) == (502, "peer_unavailable"), second.text
        assert "another request" in second.json()["detail"]
        checks = asker_node.api("GET", "/api/v1/certificates/checks").json()
        assert checks["total"] == 1  # the replay is not kept as the second look-up's answer
    finally:
        asker_node.stop()
        origin_node.stop()
        replayer.close()
