"""Two 签收 / 反馈 for one outgoing case in two concurrent transactions: exactly one of a pair that
excludes each other is taken, the other is refused as a conflict, and the case keeps the first.

The first transaction takes its message and stays open while the second starts and has to wait for
it (on PostgreSQL a backend waiting on a lock, checked in pg_stat_activity; on SQLite the process's
writer lock); then the first commits and the second goes on. Without a lock on the case in the
read that decides, the second would decide from the case as it was before the first (READ
COMMITTED) and be taken as well: both answered 202, both stored, the second overwriting the first.
Each way in: one message (``inbox.accept``, the bulk handler for one), the per-item handler (the
endpoint without ``handle_many``) and a batch (``inbox.accept_batch``). SQLite, and PostgreSQL
when YIPANQI_TEST_DATABASE_URL is set.

The same for two copies of one 协查 request (a retry while the first delivery is still being
stored): the copy is a duplicate, never a second case nor a conflict.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from service.clock import utcnow
from service.db import make_engine, transaction
from service.errors import Conflict, DomainError
from service.exchange.envelope import Envelope, canonical_json
from service.exchange.inbox import Accepted, CheckedItem, PeerEndpoint, accept, accept_batch, parse_envelope
from service.migrations import upgrade
from service.models import CaseStatus, Direction, InboxMessage, Priority, Sex, Topic, VerificationCase
from service.signing.http import VerifiedSignature, content_digest
from service.verification import service
from service.verification.peer import ENDPOINTS

HOST, ORIGIN = "411627", "410105"  # this node asked; the origin acks and answers
ENDPOINT = {e.message_type: e for e in ENDPOINTS}
ACK, REPLY = service.ACK, service.REPLY
PATHS = ["single", "per_item", "batch"]
# (first, second, is the second taken too): two acks, two replies, an ack after the reply — one is
# taken; a reply after the ack — both (the lock must not refuse what may follow).
RACES = [(ACK, ACK, False), (REPLY, REPLY, False), (REPLY, ACK, False), (ACK, REPLY, True)]


@pytest.fixture(scope="module", params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    if request.param == "postgres":
        url = request.getfixturevalue("postgres").new_database()
    else:
        url = f"sqlite:///{tmp_path_factory.mktemp('race') / 'node.db'}"
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


def outgoing_case(engine: Engine) -> str:
    """A delivered 协查 request this node sent to ORIGIN: its request_id."""
    request_id = str(uuid.uuid4())
    with transaction(engine) as tx:
        tx.add(
            VerificationCase(
                request_message_id=request_id,
                direction=Direction.outgoing,
                peer=ORIGIN,
                status=CaseStatus.delivered,
                subject_id_number="411627199503080024",
                subject_name="王秀英",
                subject_sex=Sex.F,
                subject_birth_date=date(1995, 3, 8),
                topic=Topic.marital_status,
                priority=Priority.normal,
                key_target=False,
                question="请核实该对象婚育情况。",
                sent_at=utcnow(),
                received_at=utcnow(),
                due_at=utcnow() + timedelta(days=20),
            )
        )
    return request_id


@dataclass(frozen=True)
class Offer:
    """One checked peer message, as the route hands it to the inbox."""

    endpoint: PeerEndpoint
    envelope: Envelope[Any]
    body: bytes
    signature: VerifiedSignature
    at: datetime
    promised_by: date | None = None
    findings: str | None = None


def _signature() -> VerifiedSignature:
    """As the route hands it over once the signature checked out (a fresh nonce each)."""
    return VerifiedSignature(
        keyid=f"{ORIGIN}/k1",
        nonce=uuid.uuid4().hex,
        created=utcnow(),
        expires=None,
        signature_input='sig1=("@method");created=1',
        signature="sig1=:AAAA:",
    )


def offer(kind: str, request_id: str, n: int) -> Offer:
    at = (utcnow() - timedelta(minutes=10 - n)).replace(microsecond=0)  # each message its own time
    stamp = at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    promised_by, findings = date(2026, 12, n), f"第{n}份反馈"
    payload: dict[str, Any] = (
        {"acknowledged_at": stamp, "promised_by": promised_by.isoformat()}
        if kind == ACK
        else {"outcome": "confirmed", "findings": findings, "answered_at": stamp}
    )
    body = canonical_json(
        {
            "message_id": str(uuid.uuid4()),
            "type": kind,
            "sender": ORIGIN,
            "recipient": HOST,
            "sent_at": stamp,
            "correlation_id": request_id,
            "payload": payload,
        }
    )
    endpoint = ENDPOINT[kind]
    signature = _signature()
    return Offer(
        endpoint,
        parse_envelope(endpoint, body),
        body,
        signature,
        at,
        promised_by if kind == ACK else None,
        findings if kind == REPLY else None,
    )


def take(session: Session, path: str, message: Offer) -> Accepted | DomainError:
    """The inbox's outcome for the message in this transaction: a batch's item's refusal is
    returned (its transaction commits the rest); a message's is raised (its transaction is undone)."""
    now = utcnow()
    keep_until = now + timedelta(hours=1)
    if path == "batch":
        item = CheckedItem(message.endpoint, message.envelope, message.body, content_digest(message.body))
        (outcome,) = accept_batch(
            session, [item], signature=message.signature, now=now, nonce_keep_until=keep_until
        )
        return outcome
    endpoint = message.endpoint if path == "single" else replace(message.endpoint, handle_many=None)
    return accept(
        session,
        endpoint,
        message.envelope,
        body=message.body,
        signature=message.signature,
        now=now,
        nonce_keep_until=keep_until,
    )


def wait_until_waiting(engine: Engine, thread: threading.Thread) -> None:
    """Until the second transaction waits for the first (or has ended: its outcome will tell)."""
    if engine.dialect.name != "postgresql":  # it waits for the process's writer lock
        thread.join(0.2)
        return
    query = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and thread.is_alive():
        with engine.connect() as connection:
            if connection.execute(query).scalar_one():
                return
        time.sleep(0.01)
    assert not thread.is_alive(), "the second transaction neither waited nor ended"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(("first_kind", "second_kind", "both"), RACES, ids=lambda v: str(v).split(".")[-1])
def test_concurrent_acks_and_replies_for_one_case(
    engine: Engine, path: str, first_kind: str, second_kind: str, both: bool
) -> None:
    request_id = outgoing_case(engine)
    first, second = offer(first_kind, request_id, 1), offer(second_kind, request_id, 2)
    outcomes: dict[str, Accepted | DomainError] = {}
    errors: list[BaseException] = []

    def second_transaction() -> None:
        try:
            with transaction(engine) as tx:
                outcomes["second"] = take(tx, path, second)
        except DomainError as exc:  # as the route's transaction: undone
            outcomes["second"] = exc
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=second_transaction)
    with transaction(engine) as tx:
        outcomes["first"] = take(tx, path, first)
        assert isinstance(outcomes["first"], Accepted)
        assert outcomes["first"].status_code == 202
        thread.start()
        wait_until_waiting(engine, thread)
    thread.join(30)
    assert not thread.is_alive(), "the second transaction did not end"
    assert not errors, errors

    taken = outcomes["second"]
    if both:
        assert isinstance(taken, Accepted), taken
        assert taken.status_code == 202
    else:
        assert isinstance(taken, Conflict), taken
    with Session(engine) as session:
        case = session.exec(
            select(VerificationCase).where(VerificationCase.request_message_id == request_id)
        ).one()
        stored = session.exec(
            select(InboxMessage.message_id)
            .where(InboxMessage.conversation_id == request_id)
            .order_by(col(InboxMessage.received_at), col(InboxMessage.message_id))
        ).all()
    kept = [first, second] if both else [first]
    assert sorted(stored) == sorted(str(m.envelope.message_id) for m in kept)
    ack = next((m for m in kept if m.endpoint.message_type == ACK), None)
    reply = next((m for m in kept if m.endpoint.message_type == REPLY), None)
    assert case.status == (CaseStatus.answered if reply is not None else CaseStatus.acknowledged)
    assert case.acknowledged_at == (None if ack is None else ack.at)
    assert case.promised_by == (None if ack is None else ack.promised_by)
    assert case.findings == (None if reply is None else reply.findings)
    assert case.answered_at == (None if reply is None else reply.at)


def request_copies(n: int = 2) -> list[Offer]:
    """One 协查 request from ORIGIN, as ``n`` deliveries of it (a relay's retry: same body, new nonce)."""
    stamp = utcnow().astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    subject = {"id_number": "411627199503080024", "name": "王秀英", "sex": "F", "birth_date": "1995-03-08"}
    body = canonical_json(
        {
            "message_id": str(uuid.uuid4()),
            "type": service.REQUEST,
            "sender": ORIGIN,
            "recipient": HOST,
            "sent_at": stamp,
            "correlation_id": None,
            "payload": {
                "subject": subject,
                "key_target": False,
                "topic": "marital_status",
                "priority": "normal",
                "question": "请核实。",
            },
        }
    )
    endpoint = ENDPOINT[service.REQUEST]
    copies = []
    for _ in range(n):
        copies.append(Offer(endpoint, parse_envelope(endpoint, body), body, _signature(), utcnow()))
    return copies


@pytest.mark.parametrize("path", PATHS)
def test_two_copies_of_one_request_at_once_store_it_once(engine: Engine, path: str) -> None:
    """The second copy waits for the first (on PostgreSQL in the case's unique index), finds the
    case stored when the first commits, and fails with IntegrityError, which the routes answer by
    taking it again in a new transaction: then it is a duplicate (200), as a retry after the fact is.
    Nothing is stored twice, and the copy is not refused as a reused message_id."""
    first, second = request_copies()
    outcomes: dict[str, Accepted | DomainError] = {}
    errors: list[BaseException] = []

    def second_transaction() -> None:
        for _attempt in range(2):  # as the routes do (_accept_once, the batch route)
            try:
                with transaction(engine) as tx:
                    outcomes["second"] = take(tx, path, second)
                return
            except IntegrityError:
                continue
            except BaseException as exc:  # reported below
                errors.append(exc)
                return

    thread = threading.Thread(target=second_transaction)
    with transaction(engine) as tx:
        outcomes["first"] = take(tx, path, first)
        thread.start()
        wait_until_waiting(engine, thread)
    thread.join(30)
    assert not thread.is_alive(), "the second transaction did not end"
    assert not errors, errors
    assert isinstance(outcomes["first"], Accepted)
    assert outcomes["first"].status_code == 202
    copy = outcomes["second"]
    assert isinstance(copy, Accepted), copy
    assert copy.status_code == 200
    message_id = str(first.envelope.message_id)
    with Session(engine) as session:
        cases = session.exec(
            select(VerificationCase).where(VerificationCase.request_message_id == message_id)
        )
        assert len(cases.all()) == 1
        assert len(session.exec(select(InboxMessage).where(InboxMessage.message_id == message_id)).all()) == 1
