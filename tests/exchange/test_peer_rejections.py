"""Every acceptance rule of PROTOCOL.md, broken on purpose, against one real node process.

Each bad request must come back with the rule's status and problem ``code`` as signed
``application/problem+json``, leave nothing behind in the node's database (inbox, 协查 cases,
nonces), never a 5xx, and never put an ID number or a name into the node's log.

The requests are made here, signed with the project's own ``sign_request`` (or by hand, where a
test needs parameters ``sign_request`` will not write), by two fake peers whose keys the node
trusts through ``yipanqi peers add`` with a URL that points at nothing.
"""

from __future__ import annotations

import base64
import json
import os
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from sqlalchemy import Engine, create_engine, text
from sqlalchemy.pool import NullPool
from sqlmodel import Session

from service.clock import utcnow
from service.db import make_engine
from service.localnet import LocalNode, build_network
from service.models import PeerKey
from service.signing.http import REQUEST_COMPONENTS, content_digest, new_nonce, sign_request, verify_response
from service.signing.keys import public_key_from_text, public_key_text
from service.sla.deadlines import SHANGHAI
from tests.conftest import FAST, PG_ENV, backend_urls, free_port
from tests.signing.bound import binding_of

HOST = "411627"  # the node under test (太康县)
NOWHERE = "http://127.0.0.1:9"  # the fake peers' URL: nothing listens there
MIB = 1024 * 1024

REQUESTS = "/peer/v1/verification-requests"
REQUEST, ACK, REPLY = "verification.request", "verification.ack", "verification.reply"

ID_NUMBER = "411627199503080024"  # valid (GB 11643), born 1995-03-08, female
NAME = "王秀英"
BAD_CHECK_DIGIT = ID_NUMBER[:17] + "5"
OTHER_ID = "410105198807120047"  # the subject of this node's own outgoing requests
# Everything personal this module sends; none of it may reach the node's log.
PII = (ID_NUMBER, BAD_CHECK_DIGIT, OTHER_ID, NAME)
TABLES = ("inbox_message", "verification_case", "seen_nonce")


@dataclass(frozen=True)
class FakePeer:
    """A peer that exists only in this test: its node id and private keys by label."""

    node_id: str
    name: str
    keys: dict[str, Ed25519PrivateKey]

    def keyid(self, label: str = "k1") -> str:
        return f"{self.node_id}/{label}"

    def peers_add_args(self) -> list[str]:
        args = ["peers", "add", "--node-id", self.node_id, "--name", self.name, "--url", NOWHERE]
        for label, key in self.keys.items():
            args += ["--key", f"{self.keyid(label)}={public_key_text(key.public_key())}"]
        return args


def _new_key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


# 410105 has a current key, one that expired yesterday and one valid only from next month.
ASKER = FakePeer("410105", "金水区", {"k1": _new_key(), "old": _new_key(), "future": _new_key()})
STRANGER = FakePeer("310110", "杨浦区", {"k1": _new_key()})


# --- building requests ----------------------------------------------------------------------------


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


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


def ack_payload() -> dict[str, Any]:
    return {"acknowledged_at": _now_text(), "promised_by": None}


def reply_payload(outcome: str = "confirmed", findings: str = "已婚，一孩，信息一致。") -> dict[str, Any]:
    return {"outcome": outcome, "findings": findings, "answered_at": _now_text()}


def _now_text() -> str:
    return utcnow().astimezone(SHANGHAI).replace(microsecond=0).isoformat()


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


def signed(
    path: str,
    body: bytes,
    *,
    peer: FakePeer = ASKER,
    label: str = "k1",
    key: Ed25519PrivateKey | None = None,
    created: datetime | None = None,
    lifetime: int = 300,
    nonce: str | None = None,
) -> dict[str, str]:
    """Headers from the project's own signer."""
    return sign_request(
        method="POST",
        path=path,
        body=body,
        key=key or peer.keys[label],
        keyid=peer.keyid(label),
        created=created or utcnow().replace(microsecond=0),
        lifetime=timedelta(seconds=lifetime),
        nonce=nonce,
    )


def hand_signed(
    path: str,
    body: bytes,
    *,
    peer: FakePeer = ASKER,
    label: str = "k1",
    created: int | None = None,
    nonce: str | None = None,
    alg: str = "ed25519",
    tag: str = "yipanqi/1",
    omit: Iterable[str] = (),
    digest: str | None = None,
) -> dict[str, str]:
    """A valid RFC 9421 signature over whatever parameters the test wants, even ones PROTOCOL.md forbids."""
    created = int(utcnow().timestamp()) if created is None else created
    params: dict[str, int | str] = {
        "created": created,
        "expires": created + 300,
        "nonce": nonce or new_nonce(),
        "keyid": peer.keyid(label),
        "alg": alg,
        "tag": tag,
    }
    for name in omit:
        del params[name]
    digest = digest or content_digest(body)
    inner = "(" + " ".join(f'"{c}"' for c in REQUEST_COMPONENTS) + ")"
    inner += "".join(f";{k}={v}" if isinstance(v, int) else f';{k}="{v}"' for k, v in params.items())
    values = {"@method": "POST", "@path": path, "content-type": "application/json", "content-digest": digest}
    base = "".join(f'"{c}": {values[c]}\n' for c in REQUEST_COMPONENTS) + f'"@signature-params": {inner}'
    signature = base64.b64encode(peer.keys[label].sign(base.encode("ascii"))).decode("ascii")
    return {
        "Content-Type": "application/json",
        "Content-Digest": digest,
        "Signature-Input": f"yp={inner}",
        "Signature": f"yp=:{signature}:",
    }


# --- the node and what it stored --------------------------------------------------------------------


@dataclass
class Target:
    """The running node, a client for it, and a read-only view of its database."""

    node: LocalNode
    client: httpx.Client
    db: Engine
    keyid: str = field(init=False)
    public_key: Ed25519PublicKey = field(init=False)

    def __post_init__(self) -> None:
        self.keyid, text_key = self.node.public_key.split("=", 1)
        self.public_key = public_key_from_text(text_key)

    def post(self, path: str, body: bytes, headers: dict[str, Any]) -> httpx.Response:
        return self.client.post(self.node.url + path, content=body, headers=headers)

    def counts(self) -> dict[str, int]:
        with self.db.connect() as conn:
            return {t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one()) for t in TABLES}

    def verify_signed(self, response: httpx.Response) -> None:
        """The response carries the node's valid signature (raises otherwise)."""
        verify_response(
            status=response.status_code,
            headers=response.headers.multi_items(),
            body=response.content,
            resolve_key=lambda keyid: self.public_key if keyid == self.keyid else None,
            expected_node=HOST,
            now=utcnow(),
            request=binding_of(response.request),  # bound to the request it answers
        )

    def log_text(self) -> str:
        return (self.node.data_dir / "node.log").read_text(encoding="utf-8", errors="replace")

    def assert_no_pii_logged(self) -> None:
        log = self.log_text()
        leaked = [value for value in PII if value in log]
        assert not leaked, f"personal data in the node's log: {leaked}"

    def refused(
        self, path: str, body: bytes, headers: dict[str, Any], status: int, code: str
    ) -> dict[str, Any]:
        """Send a bad request; check the answer, and that nothing was stored or logged."""
        before, logged = self.counts(), self.rejections_logged(status, code)
        response = self.post(path, body, headers)
        assert response.status_code == status, response.text
        problem = self.check_problem(response)
        assert problem["code"] == code, problem
        assert self.counts() == before, "a rejected request left rows behind"
        assert self.rejections_logged(status, code) == logged + 1, "no security log line"
        self.assert_no_pii_logged()
        return problem

    def rejections_logged(self, status: int, code: str) -> int:
        return self.log_text().count(f"peer request rejected code={code} status={status} ")

    def check_problem(self, response: httpx.Response) -> dict[str, Any]:
        assert response.headers["content-type"] == "application/problem+json"
        problem: dict[str, Any] = response.json()
        assert {"type", "title", "status", "detail", "code"} <= set(problem)
        assert problem["status"] == response.status_code
        assert all(isinstance(problem[k], str) and problem[k] for k in ("type", "title", "detail", "code"))
        assert not any(value in response.text for value in PII), "the problem echoes personal data"
        self.verify_signed(response)
        return problem

    def accepted(self, path: str, body: bytes, headers: dict[str, Any], status: int = 202) -> dict[str, Any]:
        response = self.post(path, body, headers)
        assert response.status_code == status, response.text
        assert response.headers["content-type"] == "application/json"
        self.verify_signed(response)
        receipt: dict[str, Any] = response.json()
        assert receipt["message_id"] == json.loads(body)["message_id"]
        assert receipt["digest"] == content_digest(body)
        return receipt

    def outgoing_request(self) -> str:
        """A 协查 request this node sent to ASKER (its relay is off: it stays queued); its message_id."""
        response = self.node.api(
            "POST",
            "/api/v1/verification-requests",
            json={
                "recipient": ASKER.node_id,
                "subject": subject(OTHER_ID) | {"birth_date": "1988-07-12"},
                "topic": "record_accuracy",
                "question": "请核实该对象现居住地信息是否准确。",
            },
        )
        assert response.status_code == 201, response.text
        return str(response.json()["request_id"])


def _set_key_validity(node: LocalNode) -> None:
    """``peers add`` takes no validity period: write it into the node's database before it starts."""
    engine = make_engine(node.database_url)
    now = utcnow()
    try:
        with Session(engine) as session:
            old = session.get(PeerKey, ASKER.keyid("old"))
            future = session.get(PeerKey, ASKER.keyid("future"))
            assert old is not None
            assert future is not None
            old.not_before, old.not_after = now - timedelta(days=365), now - timedelta(days=1)
            future.not_before = now + timedelta(days=30)
            session.add_all([old, future])
            session.commit()
    finally:
        engine.dispose()


def _read_only_engine(node: LocalNode) -> Engine:
    url = node.database_url
    if url.startswith("sqlite:///"):
        url = f"sqlite:///file:{url.removeprefix('sqlite:///')}?mode=ro&uri=true"
    return create_engine(url, poolclass=NullPool)


# PostgreSQL too when a test server is configured; not ~90 "skipped" lines when it is not.
BACKENDS = [
    "sqlite",
    *([pytest.param("postgres", marks=pytest.mark.postgres)] if os.environ.get(PG_ENV) else []),
]


@pytest.fixture(scope="module", params=BACKENDS)
def target(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """One node for the whole module, on SQLite, and on PostgreSQL when YIPANQI_TEST_DATABASE_URL is set."""
    root = tmp_path_factory.mktemp(f"peer-rejections-{request.param}")
    # The relay is off: this node only receives here (its outgoing requests stay queued).
    env = {**FAST, "YIPANQI_RELAY_ENABLED": "false"}
    (node,) = build_network(root, [(HOST, "太康县")], free_port(), env, backend_urls(request))
    for peer in (ASKER, STRANGER):
        node.cli(*peer.peers_add_args())
    _set_key_validity(node)
    node.start()
    db = _read_only_engine(node)
    try:
        with httpx.Client(timeout=30.0) as client:
            yield Target(node, client, db)
    finally:
        db.dispose()
        node.stop()
    # Also what no response shows: an error after a response was sent, or at shutdown.
    log = (node.data_dir / "node.log").read_text(encoding="utf-8", errors="replace")
    failures = [line for line in log.splitlines() if " ERROR " in line]
    assert not failures, f"the node logged errors: {failures}"


# --- controls: the same requests, done right, are accepted -----------------------------------------


def test_hand_signer_matches_the_project_signer() -> None:
    """The hand signer below differs from ``sign_request`` only where a test changes a parameter."""
    body = canonical(envelope())
    created = utcnow().replace(microsecond=0)
    nonce = new_nonce()
    by_project = signed(REQUESTS, body, created=created, nonce=nonce)
    by_hand = hand_signed(REQUESTS, body, created=int(created.timestamp()), nonce=nonce)
    assert {k.lower(): v for k, v in by_project.items()} == {k.lower(): v for k, v in by_hand.items()}


def test_valid_request_is_accepted_and_stored(target: Target) -> None:
    before = target.counts()
    body = canonical(envelope())
    receipt = target.accepted(REQUESTS, body, hand_signed(REQUESTS, body))
    assert receipt["status"] == "accepted"
    assert receipt["due_at"] is not None
    assert target.counts() == {t: n + 1 for t, n in before.items()}
    target.assert_no_pii_logged()


def test_node_publishes_its_keys(target: Target) -> None:
    """``GET /peer/v1/node``: how a peer learns the key that signs this node's answers (unsigned)."""
    info = target.client.get(target.node.url + "/peer/v1/node").json()
    assert (info["node_id"], info["protocol"]) == (HOST, "yipanqi/1")
    keys = {k["keyid"]: k for k in info["keys"]}
    assert keys[target.keyid]["public_key"] == public_key_text(target.public_key)
    assert {"not_before", "not_after"} <= set(keys[target.keyid])


# --- the rules apply in PROTOCOL.md's order: the first one broken decides ----------------------------


def _first_broken_rule_cases() -> list[Any]:
    def unknown_key_and_tampered(body: bytes) -> tuple[bytes, dict[str, str]]:
        headers = signed(REQUESTS, body, key=ASKER.keys["k1"])
        headers["Signature-Input"] = headers["Signature-Input"].replace('/k1"', '/k9"')
        return body + b" ", headers

    def expired_and_bad_signature(body: bytes) -> tuple[bytes, dict[str, str]]:
        old = utcnow().replace(microsecond=0) - timedelta(seconds=400)
        return body, _flip_signature(signed(REQUESTS, body, created=old))

    def bad_signature_and_tampered(body: bytes) -> tuple[bytes, dict[str, str]]:
        return body + b" ", _flip_signature(signed(REQUESTS, body))

    def bad_tag_and_unknown_key(body: bytes) -> tuple[bytes, dict[str, str]]:
        headers = hand_signed(REQUESTS, body, tag="yipanqi/2")
        headers["Signature-Input"] = headers["Signature-Input"].replace('/k1"', '/k9"')
        return body, headers

    return [
        pytest.param(bad_tag_and_unknown_key, 401, "signature_invalid", id="rule2-before-rule3"),
        pytest.param(unknown_key_and_tampered, 401, "unknown_key", id="rule3-before-rule6"),
        pytest.param(expired_and_bad_signature, 401, "signature_expired", id="rule4-before-rule5"),
        pytest.param(bad_signature_and_tampered, 401, "signature_invalid", id="rule5-before-rule6"),
    ]


@pytest.mark.parametrize(("make", "status", "code"), _first_broken_rule_cases())
def test_first_broken_rule_decides(target: Target, make: Any, status: int, code: str) -> None:
    body, headers = make(canonical(envelope()))
    target.refused(REQUESTS, body, headers, status, code)


def test_replay_is_refused_before_the_body_is_read(target: Target) -> None:
    """Rule 7 before rule 8: a used nonce on a malformed body is a replay."""
    nonce = new_nonce()
    first = canonical(envelope())
    target.accepted(REQUESTS, first, signed(REQUESTS, first, nonce=nonce))
    garbage = b'{"not": "an envelope"}'
    target.refused(REQUESTS, garbage, signed(REQUESTS, garbage, nonce=nonce), 409, "replayed")


# --- rule 1: both headers present and parseable [signature_missing] -------------------------------


def _without(headers: dict[str, str], *names: str) -> dict[str, str]:
    return {k: v for k, v in headers.items() if k.lower() not in {n.lower() for n in names}}


@pytest.mark.parametrize(
    "mangle",
    [
        pytest.param(lambda h: _without(h, "Signature-Input", "Signature"), id="no-signature-headers"),
        pytest.param(lambda h: _without(h, "Signature-Input"), id="no-signature-input"),
        pytest.param(lambda h: _without(h, "Signature"), id="no-signature"),
        pytest.param(lambda h: h | {"Signature-Input": "yp=(("}, id="garbled-signature-input"),
        pytest.param(lambda h: h | {"Signature": "yp=:not base64!:"}, id="garbled-signature"),
        pytest.param(lambda h: h | {"Signature": "yp=abc"}, id="signature-not-bytes"),
        pytest.param(lambda h: h | {"Signature-Input": "yp=abc"}, id="signature-input-not-a-list"),
        pytest.param(
            lambda h: (
                h
                | {
                    "Signature-Input": h["Signature-Input"].replace("yp=", "other=", 1),
                    "Signature": h["Signature"].replace("yp=", "other=", 1),
                }
            ),
            id="other-label",
        ),
        pytest.param(lambda h: h | {"Signature-Input": "yp=\xe9".encode("latin-1")}, id="not-ascii"),
    ],
)
def test_missing_or_garbled_signature(target: Target, mangle: Any) -> None:
    body = canonical(envelope())
    target.refused(REQUESTS, body, mangle(signed(REQUESTS, body)), 401, "signature_missing")


# --- rule 2: tag is yipanqi/1 and alg is ed25519 [signature_invalid] ------------------------------


@pytest.mark.parametrize(
    "params",
    [
        pytest.param({"tag": "yipanqi/2"}, id="other-tag"),
        pytest.param({"omit": ["tag"]}, id="no-tag"),
        pytest.param({"alg": "rsa-pss-sha512"}, id="other-alg"),
        pytest.param({"alg": "ED25519"}, id="alg-wrong-case"),
        pytest.param({"omit": ["alg"]}, id="no-alg"),
        pytest.param({"omit": ["expires"]}, id="no-expires"),
        pytest.param({"omit": ["nonce"]}, id="no-nonce"),
        pytest.param({"nonce": "c2hvcnQ"}, id="nonce-under-16-bytes"),
        pytest.param({"nonce": "A" * 130}, id="nonce-over-96-bytes"),
    ],
)
def test_wrong_signature_parameters(target: Target, params: dict[str, Any]) -> None:
    body = canonical(envelope())
    # The signature itself is valid over these parameters: only the parameters are wrong.
    target.refused(REQUESTS, body, hand_signed(REQUESTS, body, **params), 401, "signature_invalid")


# --- rule 3: keyid in the directory and valid now [unknown_key] -----------------------------------


@pytest.mark.parametrize(
    ("keyid", "key"),
    [
        pytest.param(f"{ASKER.node_id}/k9", ASKER.keys["k1"], id="unknown-label"),
        pytest.param("120101/k1", ASKER.keys["k1"], id="unknown-node"),
        pytest.param("not-a-keyid", ASKER.keys["k1"], id="malformed-keyid"),
        pytest.param(ASKER.keyid("old"), ASKER.keys["old"], id="expired-key"),
        pytest.param(ASKER.keyid("future"), ASKER.keys["future"], id="not-yet-valid-key"),
    ],
)
def test_unknown_or_expired_key(target: Target, keyid: str, key: Ed25519PrivateKey) -> None:
    body = canonical(envelope())
    headers = sign_request(method="POST", path=REQUESTS, body=body, key=key, keyid=keyid, created=utcnow())
    target.refused(REQUESTS, body, headers, 401, "unknown_key")


# --- rule 4: created within 300 s, expires in the future [signature_expired] ----------------------


@pytest.mark.parametrize(
    ("age", "lifetime"),
    [
        pytest.param(400, 300, id="created-too-long-ago"),
        pytest.param(-400, 300, id="created-in-the-future"),
        pytest.param(120, 60, id="already-expired"),
        pytest.param(0, 301, id="lifetime-over-300s"),
    ],
)
def test_signature_outside_its_time_window(target: Target, age: int, lifetime: int) -> None:
    body = canonical(envelope())
    created = utcnow().replace(microsecond=0) - timedelta(seconds=age)
    headers = signed(REQUESTS, body, created=created, lifetime=lifetime)
    target.refused(REQUESTS, body, headers, 401, "signature_expired")


# --- rule 5: the signature verifies [signature_invalid] -------------------------------------------


def _flip_signature(headers: dict[str, str]) -> dict[str, str]:
    raw = bytearray(base64.b64decode(headers["Signature"][4:-1]))
    raw[0] ^= 1
    return headers | {"Signature": f"yp=:{base64.b64encode(bytes(raw)).decode()}:"}


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda b: signed(REQUESTS, b, key=STRANGER.keys["k1"]), id="another-key"),
        pytest.param(lambda b: _flip_signature(signed(REQUESTS, b)), id="flipped-bit"),
        pytest.param(lambda b: signed("/peer/v1/notifications", b), id="signed-for-another-path"),
        pytest.param(
            lambda b: (
                (h := signed(REQUESTS, b))
                | {"Signature-Input": h["Signature-Input"].replace('nonce="', 'nonce="A', 1)}
            ),
            id="nonce-changed-after-signing",
        ),
        pytest.param(
            lambda b: signed(REQUESTS, b) | {"Content-Type": "application/json; charset=utf-8"},
            id="content-type-changed-after-signing",
        ),
    ],
)
def test_signature_does_not_verify(target: Target, make: Any) -> None:
    body = canonical(envelope())
    target.refused(REQUESTS, body, make(body), 401, "signature_invalid")


# --- rule 6: Content-Digest matches the body [digest_mismatch] -------------------------------------


def test_tampered_body(target: Target) -> None:
    original = envelope()
    headers = signed(REQUESTS, canonical(original))
    tampered = original | {"payload": request_payload(question="请核实该对象生育情况。")}
    target.refused(REQUESTS, canonical(tampered), headers, 400, "digest_mismatch")


@pytest.mark.parametrize(
    "digest",
    [
        pytest.param("sha-512=:" + base64.b64encode(bytes(64)).decode() + ":", id="no-sha-256"),
        pytest.param("sha-256=:" + base64.b64encode(bytes(32)).decode() + ":", id="wrong-sha-256"),
        pytest.param("sha-256=abc", id="not-a-byte-sequence"),
    ],
)
def test_signed_digest_that_does_not_match(target: Target, digest: str) -> None:
    body = canonical(envelope())
    target.refused(REQUESTS, body, hand_signed(REQUESTS, body, digest=digest), 400, "digest_mismatch")


# --- rule 7: (keyid, nonce) not seen before [replayed] ---------------------------------------------


def test_nonce_of_96_bytes_is_accepted(target: Target) -> None:
    body = canonical(envelope())
    nonce = "A" * 128  # 96 bytes, what the node can keep
    assert target.accepted(REQUESTS, body, signed(REQUESTS, body, nonce=nonce))["status"] == "accepted"


def test_replayed_request(target: Target) -> None:
    body = canonical(envelope())
    headers = signed(REQUESTS, body)
    target.accepted(REQUESTS, body, headers)
    target.refused(REQUESTS, body, headers, 409, "replayed")


def test_nonce_is_kept_until_expires_plus_skew(target: Target) -> None:
    body = canonical(envelope())
    nonce = new_nonce()
    created = utcnow().replace(microsecond=0)
    target.accepted(REQUESTS, body, signed(REQUESTS, body, created=created, nonce=nonce))
    with target.db.connect() as conn:
        kept = conn.execute(
            text("SELECT keyid, expires_at FROM seen_nonce WHERE nonce = :nonce"), {"nonce": nonce}
        ).one()
    assert kept.keyid == ASKER.keyid()
    kept_until = kept.expires_at  # SQLite hands back naive UTC text
    if not isinstance(kept_until, datetime):
        kept_until = datetime.fromisoformat(kept_until).replace(tzinfo=UTC)
    assert kept_until >= created + timedelta(seconds=300 + 300)


def test_nonce_reused_for_another_message(target: Target) -> None:
    nonce = new_nonce()
    first = canonical(envelope())
    target.accepted(REQUESTS, first, signed(REQUESTS, first, nonce=nonce))
    second = canonical(envelope())
    target.refused(REQUESTS, second, signed(REQUESTS, second, nonce=nonce), 409, "replayed")


# --- rule 8: the body parses and validates, sender and recipient ----------------------------------


def _deeply_nested(depth: int) -> bytes:
    return b'{"message_id":' + b"[" * depth + b"]" * depth + b"}"


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"message_id": "0190f3c2-7d4e-7a31', id="truncated-json"),
        pytest.param(b"", id="empty"),
        pytest.param(b"\xff\xfe{}", id="not-utf-8"),
        pytest.param(b"[]", id="array"),
        pytest.param(b"null", id="null"),
        pytest.param(canonical(envelope() | {"extra": 1}), id="extra-field"),
        pytest.param(canonical({k: v for k, v in envelope().items() if k != "sent_at"}), id="no-sent-at"),
        pytest.param(canonical(envelope(request_payload(topic="gossip"))), id="unknown-topic"),
        pytest.param(
            canonical(envelope(request_payload(subject=subject(BAD_CHECK_DIGIT)))), id="bad-check-digit"
        ),
        pytest.param(
            canonical(envelope(request_payload(subject=subject() | {"birth_date": "1995-03-09"}))),
            id="birth-date-disagrees-with-id-number",
        ),
        pytest.param(canonical(envelope(type=ACK)), id="type-of-another-endpoint"),
        pytest.param(canonical(envelope() | {"sent_at": "2026-11-22T09:30:00"}), id="naive-sent-at"),
        pytest.param(
            canonical(envelope() | {"sent_at": "9999-12-31T23:59:59-23:59"}),
            id="sent-at-beyond-year-9999-utc",
        ),
        pytest.param(
            canonical(envelope(request_payload(subject=subject() | {"name": "SURROGATE"}))).replace(
                b"SURROGATE", b"\\ud800"
            ),
            id="lone-surrogate-in-name",
        ),
        pytest.param(
            canonical(envelope(request_payload(question="请核实\u0000该对象婚育情况。"))),
            id="nul-in-question",
        ),
        pytest.param(
            canonical(envelope(request_payload(subject=subject() | {"name": "王\u0000"}))), id="nul-in-name"
        ),
        pytest.param(b'{"message_id":' + b"1" * 5000 + b"}", id="integer-of-5000-digits"),
        pytest.param(_deeply_nested(100_000), id="nested-100000-deep"),
    ],
)
def test_invalid_message(target: Target, body: bytes) -> None:
    target.refused(REQUESTS, body, signed(REQUESTS, body), 422, "invalid_message")


def test_wrong_check_digit_is_not_echoed(target: Target) -> None:
    body = canonical(envelope(request_payload(subject=subject(BAD_CHECK_DIGIT))))
    problem = target.refused(REQUESTS, body, signed(REQUESTS, body), 422, "invalid_message")
    assert any("id_number" in error["field"] for error in problem["errors"]), problem


def test_sender_is_not_the_signing_node(target: Target) -> None:
    body = canonical(envelope(sender=STRANGER.node_id))
    target.refused(REQUESTS, body, signed(REQUESTS, body), 403, "sender_mismatch")


@pytest.mark.parametrize("recipient", [ASKER.node_id, "120101"])
def test_recipient_is_another_node(target: Target, recipient: str) -> None:
    body = canonical(envelope(recipient=recipient))
    target.refused(REQUESTS, body, signed(REQUESTS, body), 403, "recipient_mismatch")


def test_correlation_id_is_not_the_path_request_id(target: Target) -> None:
    request_id = target.outgoing_request()
    path = f"{REQUESTS}/{request_id}/reply"
    body = canonical(envelope(reply_payload(), type=REPLY, correlation_id=str(uuid.uuid4())))
    target.refused(path, body, signed(path, body), 422, "invalid_message")


@pytest.mark.parametrize("request_id", ["not-a-uuid", ID_NUMBER])
def test_request_id_in_the_path_is_not_a_uuid(target: Target, request_id: str) -> None:
    path = f"{REQUESTS}/{request_id}/ack"
    body = canonical(envelope(ack_payload(), type=ACK, correlation_id=str(uuid.uuid4())))
    target.refused(path, body, signed(path, body), 422, "invalid_message")


def test_unsigned_request_with_an_id_number_in_the_path(target: Target) -> None:
    path = f"{REQUESTS}/{ID_NUMBER}/reply"
    body = canonical(envelope(reply_payload(), type=REPLY))
    target.refused(path, body, {"Content-Type": "application/json"}, 401, "signature_missing")


# --- body size and media type --------------------------------------------------------------------


def _padded(size: int) -> bytes:
    """A valid envelope padded with JSON whitespace to exactly ``size`` bytes."""
    body = canonical(envelope())
    return body + b" " * (size - len(body))


def test_body_of_exactly_1_mib_is_accepted(target: Target) -> None:
    body = _padded(MIB)
    assert len(body) == MIB
    assert target.accepted(REQUESTS, body, signed(REQUESTS, body))["status"] == "accepted"


def test_body_over_1_mib_is_refused(target: Target) -> None:
    body = _padded(MIB + 1)
    target.refused(REQUESTS, body, signed(REQUESTS, body), 413, "payload_too_large")


def test_body_over_1_mib_without_content_length_is_refused(target: Target) -> None:
    body = _padded(MIB + 1)
    headers = signed(REQUESTS, body)
    before = target.counts()
    chunks = (body[i : i + 64 * 1024] for i in range(0, len(body), 64 * 1024))
    response = target.client.post(target.node.url + REQUESTS, content=chunks, headers=headers)
    assert response.status_code == 413, response.text
    assert target.check_problem(response)["code"] == "payload_too_large"
    assert target.counts() == before


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type(target: Target, content_type: str | None) -> None:
    body = canonical(envelope())
    headers = _without(signed(REQUESTS, body), "Content-Type")
    if content_type is not None:
        headers["Content-Type"] = content_type
    target.refused(REQUESTS, body, headers, 415, "unsupported_media_type")


# --- answers: duplicates, conflicts, unknown requests, counterparties --------------------------------


def test_duplicate_gets_the_same_receipt(target: Target) -> None:
    body = canonical(envelope())
    first = target.accepted(REQUESTS, body, signed(REQUESTS, body))
    before = target.counts()
    again = target.accepted(REQUESTS, body, signed(REQUESTS, body), status=200)
    assert again == first | {"status": "duplicate"}
    after = target.counts()
    assert (after["inbox_message"], after["verification_case"]) == (
        before["inbox_message"],
        before["verification_case"],
    )


def test_same_message_id_with_another_body_conflicts(target: Target) -> None:
    message = envelope()
    target.accepted(REQUESTS, canonical(message), signed(REQUESTS, canonical(message)))
    changed = canonical(message | {"payload": request_payload(priority="urgent", key_target=True)})
    target.refused(REQUESTS, changed, signed(REQUESTS, changed), 409, "conflict")


@pytest.mark.parametrize(
    ("suffix", "type", "payload"), [("ack", ACK, ack_payload), ("reply", REPLY, reply_payload)]
)
def test_answer_to_an_unknown_request(target: Target, suffix: str, type: str, payload: Any) -> None:
    request_id = str(uuid.uuid4())
    path = f"{REQUESTS}/{request_id}/{suffix}"
    body = canonical(envelope(payload(), type=type, correlation_id=request_id))
    target.refused(path, body, signed(path, body), 404, "unknown_request")


def test_ack_from_a_node_that_is_not_the_counterparty(target: Target) -> None:
    request_id = target.outgoing_request()  # this node asked ASKER, not STRANGER
    path = f"{REQUESTS}/{request_id}/ack"
    body = canonical(envelope(ack_payload(), type=ACK, sender=STRANGER.node_id, correlation_id=request_id))
    target.refused(path, body, signed(path, body, peer=STRANGER), 403, "forbidden")


def test_asker_cannot_ack_its_own_request(target: Target) -> None:
    """ASKER sent this request; only the node it asked may acknowledge it."""
    message = envelope()
    target.accepted(REQUESTS, canonical(message), signed(REQUESTS, canonical(message)))
    request_id = message["message_id"]
    path = f"{REQUESTS}/{request_id}/ack"
    body = canonical(envelope(ack_payload(), type=ACK, correlation_id=request_id))
    target.refused(path, body, signed(path, body), 403, "forbidden")


def test_second_different_reply_conflicts(target: Target) -> None:
    request_id = target.outgoing_request()
    path = f"{REQUESTS}/{request_id}/reply"
    first = canonical(envelope(reply_payload(), type=REPLY, correlation_id=request_id))
    receipt = target.accepted(path, first, signed(path, first))
    assert (receipt["status"], receipt["due_at"]) == ("accepted", None)
    # The same reply again (a retry) is a duplicate, not a conflict.
    assert target.accepted(path, first, signed(path, first), status=200) == receipt | {"status": "duplicate"}
    other = canonical(
        envelope(reply_payload("not_found", "查无此人。"), type=REPLY, correlation_id=request_id)
    )
    target.refused(path, other, signed(path, other), 409, "conflict")
    case = target.node.api("GET", "/api/v1/verification-requests", params={"page_size": 200}).json()["items"]
    (mine,) = [c for c in case if c["request_id"] == request_id]
    detail = target.node.api("GET", f"/api/v1/verification-requests/{mine['id']}").json()
    assert (detail["outcome"], detail["findings"]) == ("confirmed", "已婚，一孩，信息一致。")


# --- the log ---------------------------------------------------------------------------------------


def test_log_records_rejections_without_personal_data(target: Target) -> None:
    body = canonical(envelope(request_payload(subject=subject(BAD_CHECK_DIGIT))))
    target.refused(REQUESTS, body, signed(REQUESTS, body), 422, "invalid_message")
    log = target.log_text()
    assert "code=invalid_message" in log  # the security log line is there ...
    target.assert_no_pii_logged()  # ... and nothing personal is


@pytest.mark.parametrize(
    ("method", "path", "status", "code"),
    [
        ("POST", "/peer/v1/no-such-endpoint", 404, "not_found"),
        ("GET", "/peer/v1/verification-requests", 405, "method_not_allowed"),
    ],
)
def test_unknown_path_or_method_is_a_problem_too(
    target: Target, method: str, path: str, status: int, code: str
) -> None:
    before = target.counts()
    response = target.client.request(method, target.node.url + path, content=b"{}")
    assert response.status_code == status
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    assert target.counts() == before
