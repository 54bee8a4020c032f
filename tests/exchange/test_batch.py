"""``POST /peer/v1/batch`` against one real node process (docs/protocol.md section 18).

Each item of a batch must get exactly the answer its own endpoint would give it alone — the same
receipt (digest, received_at, due_at), the same problem code — signed on its own, inside one
signed 200; nothing of a refused item is stored and a bad item spoils nothing else. A batch that
is not one (too many items, too big, not JSON, badly signed, replayed) is refused as a whole,
like any request, and leaves nothing behind. Never a 5xx, never personal data in the log.

The batches are built here with ``json.dumps``, not with the node's own helpers, and every item
answer is checked with the RFC 9421 library verifier (``verify_response``), not the node's fast
path. The last test checks that a node, its clock at the worked example's time and holding its
keys, answers ``tests/vectors/batch.json``'s request with exactly the example's answer.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool
from sqlmodel import Session

from service.clock import clock, utcnow
from service.config import Settings
from service.db import make_engine, transaction
from service.directory.service import KeySpec, add_peer
from service.exchange import batch, routes
from service.exchange.security import PeerRequest
from service.localnet import LocalNode, build_network
from service.main import PEER_ENDPOINTS
from service.migrations import upgrade
from service.signing.http import (
    content_digest,
    new_nonce,
    sign_request,
    sign_response,
    verify_request,
    verify_response,
)
from service.signing.keys import public_key_from_text, public_key_text
from service.sla.deadlines import SHANGHAI
from tests import vectors
from tests.conftest import FAST, PG_ENV, backend_urls, free_port
from tests.signing.bound import binding_of
from tests.vectors import generate

HOST = "411627"  # the node under test (太康县)
NOWHERE = "http://127.0.0.1:9"
MIB = 1024 * 1024
BATCH = "/peer/v1/batch"
REQUESTS = "/peer/v1/verification-requests"
NOTIFICATIONS = "/peer/v1/notifications"
REQUEST, ACK, REPLY, NOTIFICATION = (
    "verification.request",
    "verification.ack",
    "verification.reply",
    "notification",
)

ID_NUMBER, NAME = "411627199503080024", "王秀英"
BAD_CHECK_DIGIT = ID_NUMBER[:17] + "5"
OTHER_ID = "410105198807120047"
PII = (ID_NUMBER, BAD_CHECK_DIGIT, OTHER_ID, NAME)
TABLES = ("inbox_message", "verification_case", "notification", "seen_nonce")


@dataclass(frozen=True)
class FakePeer:
    node_id: str
    name: str
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def keyid(self) -> str:
        return f"{self.node_id}/k1"

    def peers_add_args(self) -> list[str]:
        key = f"{self.keyid}={public_key_text(self.key.public_key())}"
        return [
            "peers",
            "add",
            "--node-id",
            self.node_id,
            "--name",
            self.name,
            "--url",
            NOWHERE,
            "--key",
            key,
        ]


ASKER = FakePeer("410105", "金水区")
STRANGER = FakePeer("310110", "杨浦区")


# --- messages ---------------------------------------------------------------------------------------


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _now_text() -> str:
    return utcnow().astimezone(SHANGHAI).replace(microsecond=0).isoformat()


def subject(id_number: str = ID_NUMBER) -> dict[str, str]:
    return {"id_number": id_number, "name": NAME, "sex": "F", "birth_date": "1995-03-08"}


def request_payload(**changes: Any) -> dict[str, Any]:
    return {
        "subject": subject(),
        "topic": "marital_status",
        "priority": "normal",
        "key_target": False,
        "question": "请核实该对象婚育情况。",
        "reference": "JS-2026-000123",
        **changes,
    }


def notification_payload() -> dict[str, Any]:
    day = utcnow().astimezone(SHANGHAI).date().isoformat()
    return {"subject": subject(), "kind": "arrival", "occurred_on": day, "details": {"arrived_on": day}}


def envelope(
    payload: dict[str, Any] | None = None,
    *,
    type: str = REQUEST,
    sender: str = ASKER.node_id,
    recipient: str = HOST,
    correlation_id: str | None = None,
    message_id: str | None = None,
) -> dict[str, Any]:
    return {
        "message_id": message_id or str(uuid.uuid4()),
        "type": type,
        "sender": sender,
        "recipient": recipient,
        "sent_at": _now_text(),
        "correlation_id": correlation_id,
        "payload": request_payload() if payload is None else payload,
    }


def notification() -> dict[str, Any]:
    return envelope(notification_payload(), type=NOTIFICATION)


def ack(request_id: str) -> dict[str, Any]:
    return envelope(
        {"acknowledged_at": _now_text(), "promised_by": None}, type=ACK, correlation_id=request_id
    )


def reply(request_id: str) -> dict[str, Any]:
    payload = {"outcome": "confirmed", "findings": "已婚，一孩，信息一致。", "answered_at": _now_text()}
    return envelope(payload, type=REPLY, correlation_id=request_id)


def batch_of(*items: bytes | str) -> bytes:
    """``{"items": [...]}``, each item the message's exact bytes as a JSON string. Written with
    every non-ASCII character escaped (``\\u738b``), unlike the node's own writer: the receiver
    must get each item's bytes back whatever JSON form carried them."""
    texts = [item.decode("utf-8") if isinstance(item, bytes) else item for item in items]
    return json.dumps({"items": texts}).encode("ascii")


def signed(path: str, body: bytes, *, peer: FakePeer = ASKER, nonce: str | None = None) -> dict[str, str]:
    return sign_request(
        method="POST",
        path=path,
        body=body,
        key=peer.key,
        keyid=peer.keyid,
        created=utcnow().replace(microsecond=0),
        lifetime=timedelta(seconds=300),
        nonce=nonce,
    )


# --- the node -----------------------------------------------------------------------------------------


@dataclass
class Target:
    node: LocalNode
    client: httpx.Client
    db: Engine
    keyid: str = field(init=False)
    public_key: Ed25519PublicKey = field(init=False)

    def __post_init__(self) -> None:
        self.keyid, text_key = self.node.public_key.split("=", 1)
        self.public_key = public_key_from_text(text_key)

    def post(self, path: str, body: bytes, headers: dict[str, str] | None = None) -> httpx.Response:
        return self.client.post(self.node.url + path, content=body, headers=headers or signed(path, body))

    def counts(self) -> dict[str, int]:
        with self.db.connect() as conn:
            return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in TABLES}

    def stored(self, message_ids: list[str]) -> set[str]:
        with self.db.connect() as conn:
            rows = conn.execute(text("SELECT message_id FROM inbox_message")).scalars()
            return set(rows) & set(message_ids)

    def verify(
        self, status: int, body: bytes, headers: list[tuple[str, str]], request: httpx.Request
    ) -> None:
        """A valid signature of the node, bound to ``request`` (the batch, or a single request)."""
        verify_response(
            status=status,
            headers=headers,
            body=body,
            resolve_key=lambda keyid: self.public_key if keyid == self.keyid else None,
            expected_node=HOST,
            now=utcnow(),
            request=binding_of(request),
        )

    def send(self, *items: bytes | str) -> list[tuple[int, dict[str, Any]]]:
        """POST a batch; check its signed 200 and every item's own signature; (status, body) per item."""
        body = batch_of(*items)
        response = self.post(BATCH, body)
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/json"
        self.verify(200, response.content, response.headers.multi_items(), response.request)
        results = response.json()["results"]
        assert len(results) == len(items)
        answers = []
        for result in results:
            assert set(result) == {"message_id", "status", "body", "signature_input", "signature"}
            status, answer = result["status"], result["body"].encode("utf-8")
            content_type = "application/json" if status in (200, 202) else "application/problem+json"
            self.verify(
                status,
                answer,
                [
                    ("Content-Type", content_type),
                    ("Content-Digest", content_digest(answer)),
                    ("Signature-Input", result["signature_input"]),
                    ("Signature", result["signature"]),
                ],
                response.request,  # each item bound, as the whole answer, to the batch request
            )
            assert not any(value in result["body"] for value in PII), "an answer echoes personal data"
            answers.append((status, json.loads(answer)))
        return answers

    def refused(self, body: bytes, headers: dict[str, str] | None, status: int, code: str) -> None:
        """A batch refused as a whole: a signed problem, nothing stored (not even the nonce)."""
        before = self.counts()
        response = self.post(BATCH, body, headers)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/problem+json"
        self.verify(status, response.content, response.headers.multi_items(), response.request)
        assert response.json()["code"] == code
        assert self.counts() == before

    def log_text(self) -> str:
        return (self.node.data_dir / "node.log").read_text(encoding="utf-8", errors="replace")

    def outgoing_request(self, recipient: str = ASKER.node_id) -> str:
        """A 协查 request this node sent (its relay is off: it stays queued); its message_id."""
        response = self.node.api(
            "POST",
            "/api/v1/verification-requests",
            json={
                "recipient": recipient,
                "subject": subject(OTHER_ID) | {"birth_date": "1988-07-12"},
                "topic": "record_accuracy",
                "question": "请核实该对象现居住地信息是否准确。",
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["request_id"])


def _read_only_engine(node: LocalNode) -> Engine:
    url = node.database_url
    if url.startswith("sqlite:///"):
        url = f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"
    return create_engine(url, poolclass=NullPool)


BACKENDS = [
    "sqlite",
    *([pytest.param("postgres", marks=pytest.mark.postgres)] if os.environ.get(PG_ENV) else []),
]


@pytest.fixture(scope="module", params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    root = tmp_path_factory.mktemp(f"batch-{request.param}")
    env = {**FAST, "YIPANQI_RELAY_ENABLED": "false"}
    (node,) = build_network(root, [(HOST, "太康县")], free_port(), env, backend_urls(request))
    for peer in (ASKER, STRANGER):
        node.cli(*peer.peers_add_args())
    node.start()
    db = _read_only_engine(node)
    try:
        with httpx.Client(timeout=60.0) as client:
            yield Target(node, client, db)
    finally:
        db.dispose()
        node.stop()
    log = (node.data_dir / "node.log").read_text(encoding="utf-8", errors="replace")
    assert not [line for line in log.splitlines() if " ERROR " in line], "the node logged errors"
    assert not [value for value in PII if value in log], "personal data in the node's log"


# --- what the node says of itself -----------------------------------------------------------------


def test_node_advertises_batches(target: Target) -> None:
    info = target.client.get(target.node.url + "/peer/v1/node").json()
    assert info["capabilities"] == ["batch"]
    assert info["batch"] == {"path": BATCH, "max_items": 1000, "max_body_bytes": MIB}


# --- items: each on its own -------------------------------------------------------------------------


def test_each_item_gets_its_own_answer_and_a_bad_one_spoils_nothing(target: Target) -> None:
    asked = target.outgoing_request()  # this node asked ASKER: ASKER may ack and answer it
    asked_stranger = target.outgoing_request(STRANGER.node_id)  # ASKER is not its counterparty
    good_request, good_notification = envelope(), notification()
    good_ack, good_reply, late_ack = ack(asked), reply(asked), ack(asked)
    items: list[tuple[bytes | str, int, str]] = [
        (canonical(good_request), 202, "accepted"),
        (canonical(envelope(request_payload(subject=subject(BAD_CHECK_DIGIT)))), 422, "invalid_message"),
        (canonical(good_notification), 202, "accepted"),
        (canonical(envelope(sender=STRANGER.node_id)), 403, "sender_mismatch"),
        (canonical(envelope(recipient="310110")), 403, "recipient_mismatch"),
        (canonical(envelope() | {"type": "no.such.type"}), 422, "invalid_message"),
        (
            canonical(
                envelope(
                    {"id_number": ID_NUMBER, "name": NAME, "purpose": "service"}, type="certificate.lookup"
                )
            ),
            422,
            "invalid_message",
        ),
        (canonical(envelope(type=ACK, payload={"acknowledged_at": _now_text()})), 422, "invalid_message"),
        ("not json at all", 422, "invalid_message"),
        ('{"message_id": "\ud800"}', 422, "invalid_message"),  # a lone surrogate
        (canonical(ack(str(uuid.uuid4()))), 404, "unknown_request"),
        (canonical(ack(asked_stranger)), 403, "forbidden"),
        (canonical(good_ack), 202, "accepted"),
        (canonical(good_reply), 202, "accepted"),
        (canonical(late_ack), 409, "conflict"),  # an ack after the reply
    ]
    before = target.counts()
    answers = target.send(*(item for item, _, _ in items))
    for (item, status, what), (got, answer) in zip(items, answers, strict=True):
        assert got == status, (what, answer)
        if status in (200, 202):
            assert answer["status"] == what
            assert answer["digest"] == content_digest(item if isinstance(item, bytes) else item.encode())
        else:
            assert answer["code"] == what
            assert answer["status"] == status
    accepted = [good_request, good_notification, good_ack, good_reply]
    assert target.stored([m["message_id"] for m in accepted]) == {m["message_id"] for m in accepted}
    after = target.counts()
    assert after["inbox_message"] == before["inbox_message"] + 4  # nothing of the 11 refused ones
    assert after["verification_case"] == before["verification_case"] + 1
    assert after["notification"] == before["notification"] + 1
    assert after["seen_nonce"] == before["seen_nonce"] + 1  # the batch's one nonce
    case = target.node.api("GET", "/api/v1/verification-requests", params={"page_size": 200}).json()["items"]
    (mine,) = [c for c in case if c["request_id"] == asked]
    assert mine["status"] == "answered"
    assert "peer batch items rejected count=11 " in target.log_text()


def test_a_receipt_is_the_single_endpoints_receipt(target: Target) -> None:
    first, second = envelope(), notification()
    # Through the batch first, then alone: the single endpoint sees a duplicate of the same message.
    ((status, by_batch),) = target.send(canonical(first))
    assert (status, by_batch["status"]) == (202, "accepted")
    alone = target.post(REQUESTS, canonical(first))
    assert alone.status_code == 200
    target.verify(200, alone.content, alone.headers.multi_items(), alone.request)
    assert alone.json() == by_batch | {"status": "duplicate"}
    # Alone first, then through a batch: the batch answers the first delivery's receipt.
    single = target.post(NOTIFICATIONS, canonical(second))
    assert single.status_code == 202
    ((status, again),) = target.send(canonical(second))
    assert status == 200
    assert again == single.json() | {"status": "duplicate"}
    assert again["due_at"] is not None  # the ack deadline, from the first delivery


def test_a_whole_batch_sent_again_is_all_duplicates_with_the_same_receipts(target: Target) -> None:
    items = [canonical(envelope()) for _ in range(3)] + [canonical(notification()) for _ in range(3)]
    first = target.send(*items)
    assert [status for status, _ in first] == [202] * 6
    before = target.counts()
    again = target.send(*items)  # a new signature and nonce, the same bytes: a retry
    assert [status for status, _ in again] == [200] * 6
    for (_, receipt), (_, repeated) in zip(first, again, strict=True):
        assert repeated == receipt | {"status": "duplicate"}
    assert target.counts() == before | {"seen_nonce": before["seen_nonce"] + 1}


def test_a_message_twice_in_one_batch(target: Target) -> None:
    """The second copy is answered as a retry would be: the same bytes a duplicate, other bytes a conflict."""
    message = envelope()
    changed = message | {"payload": request_payload(priority="urgent")}
    before = target.counts()
    answers = target.send(canonical(message), canonical(message), canonical(changed))
    assert [status for status, _ in answers] == [202, 200, 409]
    assert answers[1][1] == answers[0][1] | {"status": "duplicate"}
    assert answers[2][1]["code"] == "conflict"
    after = target.counts()
    assert after["inbox_message"] == before["inbox_message"] + 1
    assert after["verification_case"] == before["verification_case"] + 1


def test_a_full_batch_of_1000(target: Target) -> None:
    items = [canonical(notification()) for _ in range(1000)]
    before = target.counts()
    answers = target.send(*items)
    assert {status for status, _ in answers} == {202}
    assert target.counts()["inbox_message"] == before["inbox_message"] + 1000


# --- the batch as a whole ---------------------------------------------------------------------------


def _wrong_batches() -> list[Any]:
    one = canonical(envelope()).decode()
    return [
        pytest.param(json.dumps({"items": ["x"] * 1001}).encode(), 413, "payload_too_large", id="1001-items"),
        pytest.param(b'{"items":["' + b"x" * MIB + b'"]}', 413, "payload_too_large", id="over-1-mib"),
        pytest.param(b"not json", 422, "invalid_message", id="not-json"),
        pytest.param(b"\xff\xfe{}", 422, "invalid_message", id="not-utf-8"),
        pytest.param(json.dumps([one]).encode(), 422, "invalid_message", id="an-array"),
        pytest.param(b"{}", 422, "invalid_message", id="no-items"),
        pytest.param(b'{"items":[]}', 422, "invalid_message", id="empty"),
        pytest.param(json.dumps({"items": one}).encode(), 422, "invalid_message", id="items-not-a-list"),
        pytest.param(
            json.dumps({"items": [json.loads(one)]}).encode(), 422, "invalid_message", id="an-object"
        ),
        pytest.param(
            json.dumps({"items": [one], "x": 1}).encode(), 422, "invalid_message", id="unknown-field"
        ),
    ]


@pytest.mark.parametrize(("body", "status", "code"), _wrong_batches())
def test_what_is_not_a_batch_is_refused_as_a_whole(
    target: Target, body: bytes, status: int, code: str
) -> None:
    target.refused(body, None, status, code)


def test_a_badly_signed_tampered_or_replayed_batch_is_refused(target: Target) -> None:
    body = batch_of(canonical(envelope()))
    forged = sign_request(
        method="POST",
        path=BATCH,
        body=body,
        key=Ed25519PrivateKey.generate(),
        keyid=ASKER.keyid,
        created=utcnow(),
    )
    target.refused(body, forged, 401, "signature_invalid")
    target.refused(
        body, {k: v for k, v in signed(BATCH, body).items() if k != "Signature"}, 401, "signature_missing"
    )
    target.refused(body + b" ", signed(BATCH, body), 400, "digest_mismatch")
    target.refused(body, signed(BATCH, body) | {"Content-Type": "text/plain"}, 415, "unsupported_media_type")
    nonce = new_nonce()
    response = target.post(BATCH, body, signed(BATCH, body, nonce=nonce))
    assert response.status_code == 200
    target.refused(body, signed(BATCH, body, nonce=nonce), 409, "replayed")
    # Rule 7 before the batch's own checks: a used nonce on something that is not a batch is a replay.
    target.refused(b"[]", signed(BATCH, b"[]", nonce=nonce), 409, "replayed")


def test_items_signed_by_another_node_are_each_a_sender_mismatch(target: Target) -> None:
    """STRANGER signs a batch of ASKER's messages (and one of its own)."""
    mine, theirs = envelope(sender=STRANGER.node_id), envelope()
    body = batch_of(canonical(theirs), canonical(mine))
    response = target.post(BATCH, body, signed(BATCH, body, peer=STRANGER))
    assert response.status_code == 200
    results = response.json()["results"]
    assert [r["status"] for r in results] == [403, 202]
    assert json.loads(results[0]["body"])["code"] == "sender_mismatch"
    assert target.stored([theirs["message_id"], mine["message_id"]]) == {mine["message_id"]}


# --- the worked example -------------------------------------------------------------------------------


@pytest.fixture
def example_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    """A node's database in this process, trusting the example's 410105/k1; the clock at its time."""
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    example = vectors.load(vectors.BATCH)
    with Session(engine) as session:
        key = KeySpec.parse(f"{generate.ASKER}={example['keys'][generate.ASKER]['public_key']}")
        add_peer(session, node_id="410105", name="金水区", url=NOWHERE, keys=[key])
        session.commit()
    monkeypatch.setattr(routes, "transaction", partial(transaction, engine))
    clock.freeze(generate.RECEIVED)
    try:
        yield engine
    finally:
        clock.reset()
        engine.dispose()


def test_the_committed_example_is_what_the_generator_makes() -> None:
    assert vectors.BATCH.read_bytes() == generate.render(generate.build_batch())


def test_a_node_answers_the_example_request_with_the_example_answer(example_node: Engine) -> None:  # noqa: ARG001
    example = vectors.load(vectors.BATCH)
    request, response = example["request"], example["response"]
    body = request["body"].encode("utf-8")
    assert json.loads(body)["items"] == example["items"]
    asker = public_key_from_text(example["keys"][generate.ASKER]["public_key"])
    signature = verify_request(
        method="POST",
        path=BATCH,
        headers=request["headers"].items(),
        body=body,
        resolve_key=lambda keyid: asker if keyid == generate.ASKER else None,
        now=utcnow(),
    )
    endpoints = {e.message_type: e for e in PEER_ENDPOINTS if not e.synchronous}
    answers = routes._accept_batch(endpoints, PeerRequest(body, signature), Settings.model_construct(), HOST)
    answerer = Ed25519PrivateKey.from_private_bytes(
        bytes.fromhex(example["keys"][generate.ANSWERER]["private_seed_hex"])
    )
    bound = generate.received_binding(BATCH, request["headers"])  # what routes.request_binding makes
    made = batch.response_body(
        answers, key=answerer, keyid=generate.ANSWERER, created=utcnow(), request=bound
    )
    assert made.decode("utf-8") == response["body"]
    headers = sign_response(
        status=200,
        body=made,
        key=answerer,
        keyid=generate.ANSWERER,
        created=utcnow(),
        content_type="application/json",
        request=bound,
    )
    assert headers == response["headers"]
    # The first item is the first example's message: its result is that example's receipt, bound to
    # the batch request (so with another signature).
    single = vectors.load()["response"]
    first = json.loads(made)["results"][0]
    assert (first["status"], first["body"]) == (single["status"], single["body"])
    assert first["signature_input"] == single["headers"]["Signature-Input"]
    assert first["signature"] != single["headers"]["Signature"]
