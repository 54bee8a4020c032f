"""A node's database with signed messages of every kind, built in-process (no node running)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, text
from sqlmodel import Session
from starlette.requests import Request
from starlette.responses import Response

from service.certificates import peer as certificates_peer
from service.clock import clock, utcnow
from service.config import Settings, get_settings
from service.db import make_engine, read_session, transaction
from service.directory.service import KeySpec, add_peer
from service.evidence import chain
from service.evidence.record import ANSWER_STATE, keep_answer
from service.evidence.seal import checkpoint, seal
from service.exchange import inbox, routes
from service.exchange.envelope import canonical_json
from service.exchange.security import PeerRequest
from service.main import PEER_ENDPOINTS
from service.migrations import upgrade
from service.models import (
    CertificateCheck,
    EvidenceSentRequest,
    InboxMessage,
    LookupPurpose,
    OutboxMessage,
    OutboxStatus,
)
from service.signing import http
from service.signing.keys import public_key_text
from service.signing.node import NodeSigner, init_node, load_signer
from service.sla.deadlines import SHANGHAI
from service.verification.service import REQUEST
from tests.certificates.factories import id_number, person
from tests.conftest import backend_urls

HERE, PEER = "410105", "411627"
PEER_KEYID = f"{PEER}/k1"
REQUESTS = "/verification-requests"
LOOKUPS = "/peer/v1/certificate-lookups"
BATCH = "/peer/v1/batch"
BORN = date(1990, 3, 8)


@dataclass
class Log:
    engine: Engine
    signer: NodeSigner
    peer_key: Ed25519PrivateKey
    now: datetime
    inbox: list[str] = field(default_factory=list)  # message ids, in the order they came
    outbox: list[str] = field(default_factory=list)
    checks: list[int] = field(default_factory=list)
    answered: list[str] = field(default_factory=list)  # lookup_log ids of look-ups answered as origin
    people: set[int] = field(default_factory=set)  # serials of the women in this node's register

    def tick(self) -> datetime:
        self.now += timedelta(seconds=1)
        return self.now

    def sql(self, statement: str, **params: object) -> int:
        """What an intruder with the database file does: change rows behind the node's back."""
        with self.engine.begin() as conn:
            return conn.execute(text(statement), params).rowcount

    def seq_of(self, source_id: str) -> int:
        with self.engine.connect() as conn:
            seq = conn.execute(
                text("SELECT seq FROM evidence_entry WHERE source_id = :s"), {"s": source_id}
            ).scalar_one()
        return int(seq)

    def rechain(self) -> None:
        """What a careful intruder does after changing an entry: recompute every hash from the first."""
        from sqlmodel import col, select

        from service.evidence.verify import entry_json
        from service.models import EvidenceEntry

        with read_session(self.engine) as session:
            entries = [
                entry_json(e) for e in session.exec(select(EvidenceEntry).order_by(col(EvidenceEntry.seq)))
            ]
        prev = chain.GENESIS
        with self.engine.begin() as conn:
            for entry in entries:
                entry["prev_hash"] = prev
                prev = chain.entry_hash(entry)
                conn.execute(
                    text("UPDATE evidence_entry SET prev_hash = :p, entry_hash = :h WHERE seq = :s"),
                    {"p": entry["prev_hash"], "h": prev, "s": entry["seq"]},
                )
            conn.execute(text("UPDATE evidence_head SET head_hash = :h"), {"h": prev})

    # --- messages -------------------------------------------------------------------------------

    def receive(self) -> str:
        """A 协查 request from the peer, signed by it, as the inbox stores it."""
        message_id = str(uuid.uuid4())
        body = json.dumps(
            {"message_id": message_id, "type": REQUEST, "payload": {"n": len(self.inbox)}}
        ).encode()
        at = self.tick()
        headers = http.sign_request(
            method="POST",
            path="/peer/v1" + REQUESTS,
            body=body,
            key=self.peer_key,
            keyid=PEER_KEYID,
            created=at,
        )
        with Session(self.engine) as session:
            session.add(
                InboxMessage(
                    message_id=message_id,
                    type=REQUEST,
                    sender=PEER,
                    conversation_id=message_id,
                    body=body,
                    digest=http.content_digest(body),
                    keyid=PEER_KEYID,
                    signature_input=headers["Signature-Input"],
                    signature=headers["Signature"],
                    received_at=at,
                )
            )
            session.commit()
        self.inbox.append(message_id)
        return message_id

    def receive_batch(self, count: int = 2) -> bytes:
        """``count`` 协查 requests from the peer in one signed batch (and one item refused: another
        sender), taken through the batch route's own function; the batch's body."""
        at = self.tick().replace(microsecond=0)
        ids = [str(uuid.uuid4()) for _ in range(count)]
        items = [batch_item(message_id, at) for message_id in ids]
        items.insert(1, batch_item(str(uuid.uuid4()), at, sender="310110"))
        body = json.dumps({"items": items}).encode("ascii")  # non-ASCII escaped, as another writer may
        statuses = self.take_batch(body)
        assert statuses == [202, 403] + [202] * (count - 1), statuses
        self.inbox.extend(ids)
        return body

    def take_batch(self, body: bytes) -> list[int]:
        """A batch body signed by the peer (a new request: its own nonce), through the route's own
        function (``routes._accept_batch``), on the clock of the next tick; each item's status."""
        at = self.tick().replace(microsecond=0)
        headers = http.sign_request(
            method="POST", path=BATCH, body=body, key=self.peer_key, keyid=PEER_KEYID, created=at
        )
        signature = http.verify_request(
            method="POST",
            path=BATCH,
            headers=headers.items(),
            body=body,
            resolve_key=lambda _keyid: self.peer_key.public_key(),
            now=at,
        )
        endpoints = {e.message_type: e for e in PEER_ENDPOINTS if not e.synchronous}
        clock.freeze(at)
        try:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(routes, "transaction", partial(transaction, self.engine))
                answers = routes._accept_batch(
                    endpoints, PeerRequest(body, signature), Settings.model_construct(), HERE
                )
        finally:
            clock.reset()
        return [a.status for a in answers]

    def _answer(
        self,
        status: int,
        body: bytes,
        at: datetime,
        request: dict[str, str],
        path: str = "/peer/v1" + REQUESTS,
    ) -> dict[str, str]:
        """The peer's signed answer, bound to ``request`` (sent to ``path``) as the protocol binds it."""
        extra = {"request": http.RequestBinding.of_request(path, list(request.items()))}
        return http.sign_response(
            status=status,
            body=body,
            key=self.peer_key,
            keyid=PEER_KEYID,
            created=at,
            content_type="application/json",
            **extra,
        )

    def send(self) -> str:
        """A 协查 request to the peer, delivered: our signed request and its signed receipt."""
        message_id = str(uuid.uuid4())
        body = json.dumps({"message_id": message_id, "type": REQUEST, "payload": {}}).encode()
        at = self.tick()
        headers = http.sign_request(
            method="POST",
            path="/peer/v1" + REQUESTS,
            body=body,
            key=self.signer.private_key,
            keyid=self.signer.keyid,
            created=at,
        )
        digest = http.content_digest(body)
        receipt = json.dumps(
            {
                "message_id": message_id,
                "status": "accepted",
                "received_at": "2026-06-10T02:00:00Z",
                "digest": digest,
                "due_at": None,
            }
        ).encode()
        signed = self._answer(202, receipt, at, headers)
        with Session(self.engine) as session:
            session.add(
                OutboxMessage(
                    message_id=message_id,
                    type=REQUEST,
                    recipient=PEER,
                    path=REQUESTS,
                    conversation_id=message_id,
                    body=body,
                    digest=digest,
                    status=OutboxStatus.delivered,
                    attempts=1,
                    next_attempt_at=at,
                    delivered_at=at,
                    receipt_status=202,
                    receipt_body=receipt,
                    receipt_signature_input=signed["Signature-Input"],
                    receipt_signature=signed["Signature"],
                    receipt_received_at=at,
                )
            )
            session.add(
                EvidenceSentRequest(
                    message_id=message_id,
                    path="/peer/v1" + REQUESTS,
                    digest=headers["Content-Digest"],
                    signature_input=headers["Signature-Input"],
                    signature=headers["Signature"],
                )
            )
            session.commit()
        self.outbox.append(message_id)
        return message_id

    def look_up(self) -> int:
        """A certificate look-up answered (signed) by the peer."""
        at = self.tick()
        message_id, path = str(uuid.uuid4()), "/peer/v1/certificate-lookups"
        headers = http.sign_request(
            method="POST",
            path=path,
            body=json.dumps({"message_id": message_id}).encode(),
            key=self.signer.private_key,
            keyid=self.signer.keyid,
            created=at,
        )
        answer = b'{"found":false}'
        signed = self._answer(200, answer, at, headers, path)
        check = CertificateCheck(
            message_id=message_id,
            id_number="411627199001010029",
            subject_name="王秀英",
            origin_node=PEER,
            purpose=LookupPurpose.service,
            found=False,
            checked_at=at,
            response_body=answer,
            response_signature_input=signed["Signature-Input"],
            response_signature=signed["Signature"],
        )
        with Session(self.engine, expire_on_commit=False) as session:
            session.add(check)
            session.add(  # what lookups.lookup keeps: the request the answer is bound to
                EvidenceSentRequest(
                    message_id=message_id,
                    path=path,
                    digest=headers["Content-Digest"],
                    signature_input="",
                    signature=headers["Signature"],
                )
            )
            session.commit()
        assert check.id is not None
        self.checks.append(check.id)
        return check.id

    def asked(
        self,
        *,
        serial: int = 1,
        host: str = PEER,
        keep_answer_signature: bool = True,
        message_id: str | None = None,
    ) -> str:
        """The peer looks up a certificate in this node's register (this node is her origin): the
        request signed by the peer and checked, answered by the route's own steps — the look-up's
        transaction under ``admit``, the answer signed as every peer answer is (``routes.signed``),
        then its signature kept (``keep_answer``, what the peer route does after signing; left out
        with ``keep_answer_signature=False``). ``host``: her registered host (another: refused)."""
        number = id_number(HERE, BORN, serial)
        if serial not in self.people:  # in the register, her host as given
            with Session(self.engine) as session:
                session.add(person(HERE, BORN, serial, host=host))
                session.commit()
            self.people.add(serial)
        at = self.tick()
        message_id = message_id or str(uuid.uuid4())
        body = canonical_json(
            {
                "message_id": message_id,
                "type": certificates_peer.LOOKUP,
                "sender": PEER,
                "recipient": HERE,
                "sent_at": at.replace(microsecond=0).isoformat(),
                "correlation_id": None,
                "payload": {"id_number": number, "name": "王秀英", "purpose": "service"},
            }
        )
        headers = http.sign_request(
            method="POST", path=LOOKUPS, body=body, key=self.peer_key, keyid=PEER_KEYID, created=at
        )
        signature = http.verify_request(
            method="POST",
            path=LOOKUPS,
            headers=headers.items(),
            body=body,
            resolve_key=lambda _keyid: self.peer_key.public_key(),
            now=at,
        )
        app = SimpleNamespace(state=SimpleNamespace(settings=get_settings()))
        scope = {
            "type": "http",
            "method": "POST",
            "path": LOOKUPS,
            "raw_path": LOOKUPS.encode(),
            "query_string": b"",
            "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()],
            "app": app,
        }
        request = Request(scope)
        (endpoint,) = certificates_peer.ENDPOINTS
        envelope = inbox.check_envelope(endpoint, body, signature, local_node=HERE, path_request_id=None)
        assert endpoint.admit is not None
        with endpoint.admit(request, PEER), transaction(self.engine) as session:
            accepted = inbox.answer(
                session,
                endpoint,
                envelope,
                signature=signature,
                now=at,
                nonce_keep_until=at + timedelta(minutes=10),
            )
        response = Response(accepted.body, status_code=accepted.status_code, media_type=accepted.media_type)
        response = routes.signed(response, self.signer, request)
        answered = getattr(request.state, ANSWER_STATE)
        assert answered == message_id
        if keep_answer_signature:
            assert keep_answer(self.engine, message_id, response.headers.items())
        with self.engine.connect() as conn:
            row_id = conn.execute(
                text("SELECT id FROM lookup_log WHERE message_id = :m"), {"m": message_id}
            ).scalar_one()
        self.answered.append(str(row_id))
        return str(row_id)

    def seal(self, **options: object) -> int:
        return seal(self.engine, now=self.tick(), **options)  # type: ignore[arg-type]

    def checkpoint(self) -> None:
        assert checkpoint(self.engine, self.signer, now=self.tick()) is not None


def batch_item(message_id: str, at: datetime, *, sender: str = PEER) -> str:
    """A 协查 request from ``sender`` to this node, as a batch carries it (its body as a string)."""
    envelope = {
        "message_id": message_id,
        "type": REQUEST,
        "sender": sender,
        "recipient": HERE,
        "sent_at": at.astimezone(SHANGHAI).isoformat(),
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
            "reference": f"JS-2026-{message_id[:6]}",
        },
    }
    return canonical_json(envelope).decode("utf-8")


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def evidence_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Log]:
    urls = backend_urls(request)
    url = urls[0] if urls else f"sqlite:///{tmp_path / 'yipanqi.db'}"
    engine = make_engine(url)
    upgrade(engine)
    peer_key = Ed25519PrivateKey.generate()
    with Session(engine) as session:
        init_node(session, tmp_path / "keys", node_id=HERE, name="金水区")
        add_peer(
            session,
            node_id=PEER,
            name="太康县",
            url="https://taikang.example",
            keys=[KeySpec(PEER_KEYID, public_key_text(peer_key.public_key()))],
        )
        session.commit()
    with read_session(engine) as session:
        signer = load_signer(session, tmp_path / "keys")
    yield Log(engine, signer, peer_key, utcnow())
    engine.dispose()


@pytest.fixture
def sealed(evidence_db: Log) -> Log:
    """Three messages received, two sent, one look-up; sealed, and the head signed."""
    log = evidence_db
    log.receive()
    log.send()
    log.receive()
    log.look_up()
    log.send()
    log.receive()
    assert log.seal() == 6
    log.checkpoint()
    return log
