"""The receipt of a 通报 never puts an ack's ``acknowledged`` back to ``delivered``.

The notifying side records the receiver's receipt (``on_notification_receipt``) and, separately,
the receiver's ack (``receive_ack``); the ack can come first (an ack on receipt is queued before
the receipt leaves) or be stored by another transaction while the receipt is being recorded. The
status change is made by the database from the row as it is then (queued → delivered, nothing
else), so what the receipt's transaction read before cannot undo the ack: on PostgreSQL with the
ack committed between the receipt's read and its write, and on both backends with the receipt's
session holding the notification as it was read before the ack.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine
from sqlmodel import Session, SQLModel, select

from service.db import make_engine
from service.errors import UnknownRequest
from service.exchange.envelope import Envelope, Receipt
from service.exchange.inbox import InboundMessage
from service.models import Notification, NotificationStatus, OutboxMessage, Peer
from service.notifications import service
from service.notifications.schemas import AckPayload, NotificationCreate
from service.signing.node import NodeSigner
from tests.conftest import PostgresServer
from tests.notifications.test_details import SUBJECT, VALID

HOST, ORIGIN = "410105", "411627"
RECEIVED = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)
ACKED = RECEIVED + timedelta(minutes=5)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "postgres":
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.new_database()
    else:
        url = f"sqlite:///{tmp_path / 'notifications.db'}"
    engine = make_engine(url)
    SQLModel.metadata.create_all(engine)
    try:
        yield engine
    finally:
        engine.dispose()


def sent_notification(engine: Engine) -> tuple[str, OutboxMessage]:
    """A birth 通报 from HOST to ORIGIN, queued: its message_id and its outbox row."""
    data = NotificationCreate.model_validate(
        {"recipient": ORIGIN, "subject": SUBJECT, "kind": "birth", "occurred_on": "2025-08-01"}
        | {"details": VALID["birth"]}
    )
    signer = NodeSigner(HOST, "金水区", f"{HOST}/k1", Ed25519PrivateKey.generate())
    with Session(engine, expire_on_commit=False) as session:
        if session.get(Peer, ORIGIN) is None:
            session.add(Peer(node_id=ORIGIN, name="太康县", url="http://127.0.0.1:9"))
            session.flush()
        sent = service.create_outgoing(session, signer, data, None)
        message = session.exec(select(OutboxMessage).where(OutboxMessage.message_id == sent.message_id)).one()
        session.commit()
    return sent.message_id, message


def store_ack(engine: Engine, message_id: str) -> None:
    """ORIGIN's ack, received and committed by a transaction of its own."""
    envelope = Envelope[Any](
        message_id=uuid.uuid4(),
        type="notification.ack",
        sender=ORIGIN,
        recipient=HOST,
        sent_at=ACKED,
        correlation_id=uuid.UUID(message_id),
        payload=AckPayload(acknowledged_at=ACKED),
    )
    with Session(engine) as session:
        service.receive_ack(session, InboundMessage(envelope, ACKED))
        session.commit()


def receipt(message: OutboxMessage) -> Receipt:
    return Receipt(
        message_id=uuid.UUID(message.message_id),
        status="accepted",
        received_at=RECEIVED,
        digest=message.digest,
        due_at=RECEIVED + timedelta(days=30),
    )


def stored(engine: Engine, message_id: str) -> Notification:
    with Session(engine, expire_on_commit=False) as session:
        return session.exec(select(Notification).where(Notification.message_id == message_id)).one()


def assert_acknowledged_with_the_receipt(engine: Engine, message_id: str) -> None:
    row = stored(engine, message_id)
    assert row.status == NotificationStatus.acknowledged
    assert (row.acknowledged_at, row.ack_received_at) == (ACKED, ACKED)
    assert (row.received_at, row.due_at) == (RECEIVED, RECEIVED + timedelta(days=30))  # the receipt's too


def test_an_ack_committed_while_the_receipt_is_recorded_stays(
    engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL, READ COMMITTED: the receipt's transaction reads the notification (queued), the
    ack commits, then the receipt's transaction writes. (On SQLite the receipt's transaction holds
    the write lock from its first statement: the ack waits for it, and there is no such window.)"""
    if engine.dialect.name != "postgresql":
        pytest.skip("SQLite writers take turns: the ack cannot commit inside the receipt's transaction")
    message_id, message = sent_notification(engine)
    read = service._by_message

    def read_then_ack(session: Session, wanted: str) -> Notification:
        notification = read(session, wanted)
        assert notification.status == NotificationStatus.queued
        store_ack(engine, message_id)  # another transaction, committed now
        return notification

    monkeypatch.setattr(service, "_by_message", read_then_ack)
    with Session(engine) as session:
        service.on_notification_receipt(session, message, receipt(message))
        session.commit()
    assert_acknowledged_with_the_receipt(engine, message_id)


def record(session: Session, message: OutboxMessage, other: OutboxMessage | None) -> None:
    """The receipt recorded by the hook, or by its bulk form (a batch's deliveries) with ``other``."""
    if other is not None:
        service.on_notification_receipts(session, [(other, receipt(other)), (message, receipt(message))])
    else:
        service.on_notification_receipt(session, message, receipt(message))


BULK = pytest.mark.parametrize("bulk", [False, True], ids=["one", "bulk"])


@BULK
def test_an_ack_stored_after_the_notification_was_read_stays(engine: Engine, bulk: bool) -> None:
    """The receipt's session read the notification (queued) before the ack was stored, and still
    holds that object when it records the receipt."""
    message_id, message = sent_notification(engine)
    other = sent_notification(engine)[1] if bulk else None
    with Session(engine, expire_on_commit=False) as session:
        held = stored_in(session, message_id)
        assert held.status == NotificationStatus.queued
        session.commit()
        store_ack(engine, message_id)
        record(session, message, other)
        session.commit()
        assert stored_in(session, message_id).status == NotificationStatus.acknowledged  # not the stale value
    assert_acknowledged_with_the_receipt(engine, message_id)


@BULK
def test_a_receipt_first_then_the_ack(engine: Engine, bulk: bool) -> None:
    message_id, message = sent_notification(engine)
    other = sent_notification(engine)[1] if bulk else None
    with Session(engine) as session:
        record(session, message, other)
        session.commit()
    assert stored(engine, message_id).status == NotificationStatus.delivered
    if other is not None:
        assert stored(engine, other.message_id).status == NotificationStatus.delivered
    store_ack(engine, message_id)
    assert_acknowledged_with_the_receipt(engine, message_id)


def stored_in(session: Session, message_id: str) -> Notification:
    return session.exec(select(Notification).where(Notification.message_id == message_id)).one()


def test_the_bulk_hook_changes_nothing_if_one_notification_is_missing(engine: Engine) -> None:
    message_id, message = sent_notification(engine)
    gone = OutboxMessage.model_validate(message.model_dump() | {"message_id": str(uuid.uuid4())})
    with Session(engine) as session, pytest.raises(UnknownRequest):
        service.on_notification_receipts(session, [(message, receipt(message)), (gone, receipt(gone))])
    row = stored(engine, message_id)
    assert (row.status, row.received_at) == (NotificationStatus.queued, None)
