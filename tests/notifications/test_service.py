"""通报 state changes on both sides, against a throwaway SQLite database (no HTTP)."""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, SQLModel, select

from service.config import Settings
from service.db import make_engine
from service.errors import Conflict, Forbidden, InvalidState, NotFound, UnknownRequest, ValidationFailed
from service.exchange.envelope import Envelope, Receipt
from service.exchange.inbox import InboundMessage
from service.models import (
    Direction,
    Notification,
    NotificationKind,
    NotificationStatus,
    OutboxMessage,
    Peer,
    Person,
    Sex,
)
from service.notifications import service
from service.notifications.schemas import AckPayload, NotificationCreate, NotificationPayload
from service.signing.node import NodeSigner
from service.sla.deadlines import DeadlineRule, due_at
from tests.notifications.test_details import SUBJECT, VALID

HOST, ORIGIN, OTHER = "410105", "411627", "310110"
RECEIVED = datetime(2026, 3, 2, 2, 0, tzinfo=UTC)  # 10:00 in Shanghai


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    engine = make_engine(f"sqlite:///{tmp_path / 'notifications.db'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine, expire_on_commit=False) as session:
        for node_id, name in ((HOST, "金水区"), (ORIGIN, "太康县"), (OTHER, "杨浦区")):
            session.add(Peer(node_id=node_id, name=name, url="http://127.0.0.1:9"))
        session.commit()
        yield session
    engine.dispose()


@pytest.fixture
def settings(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """The receiving node's settings: birth acks in 5 days, arrivals acknowledged on receipt."""
    value = Settings(
        deadline_notification_birth=DeadlineRule(days=5),
        notification_auto_ack_kinds=[NotificationKind.arrival],
    )
    monkeypatch.setattr(service, "get_settings", lambda: value)
    return value


def signer(node_id: str) -> NodeSigner:
    return NodeSigner(node_id, "节点", f"{node_id}/k1", Ed25519PrivateKey.generate())


def create(kind: str = "birth", **changes: Any) -> NotificationCreate:
    return NotificationCreate.model_validate(
        {
            "recipient": ORIGIN,
            "subject": SUBJECT,
            "kind": kind,
            "occurred_on": "2025-08-01",
            "details": VALID[kind],
            **changes,
        }
    )


def inbound(payload: Any, *, sender: str = HOST, correlation: str | None = None) -> InboundMessage[Any]:
    envelope = Envelope[Any](
        message_id=uuid.uuid4(),
        type="x",
        sender=sender,
        recipient=ORIGIN,
        sent_at=RECEIVED,
        correlation_id=uuid.UUID(correlation) if correlation else None,
        payload=payload,
    )
    return InboundMessage(envelope, RECEIVED)


def incoming(session: Session, kind: str) -> Notification:
    payload = NotificationPayload.model_validate(create(kind).model_dump(exclude={"recipient", "person_id"}))
    message = inbound(payload)
    service.receive_notification(session, message)
    row = session.exec(
        select(Notification).where(Notification.message_id == str(message.envelope.message_id))
    )
    return row.one()


def outbox(session: Session) -> list[OutboxMessage]:
    return list(session.exec(select(OutboxMessage).order_by(OutboxMessage.created_at)).all())


def receipt(message: OutboxMessage, received_at: datetime = RECEIVED) -> Receipt:
    return Receipt(
        message_id=uuid.UUID(message.message_id),
        status="accepted",
        received_at=received_at,
        digest=message.digest,
        due_at=received_at + timedelta(days=30),
    )


# --- the notifying side ------------------------------------------------------------------------------


def test_create_queues_the_message_with_the_notification(session: Session) -> None:
    sent = service.create_outgoing(session, signer(HOST), create("birth"), "clerk")
    (message,) = outbox(session)
    assert (sent.direction, sent.status, sent.peer, sent.kind) == (
        Direction.outgoing,
        NotificationStatus.queued,
        ORIGIN,
        NotificationKind.birth,
    )
    assert (message.type, message.path, message.recipient) == ("notification", "/notifications", ORIGIN)
    assert sent.message_id == message.message_id
    body = json.loads(message.body)
    assert body["payload"]["details"] == VALID["birth"]
    assert body["payload"]["subject"] == SUBJECT
    assert json.loads(sent.details) == VALID["birth"]
    assert sent.created_by == "clerk"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"recipient": HOST}, "recipient"),
        ({"recipient": "420102"}, "recipient"),
        ({"person_id": 99}, "person_id"),
    ],
)
def test_create_refuses_bad_recipient_or_person(
    session: Session, changes: dict[str, Any], field: str
) -> None:
    with pytest.raises(ValidationFailed) as caught:
        service.create_outgoing(session, signer(HOST), create("arrival", **changes), None)
    assert caught.value.extra["field"] == field
    assert outbox(session) == []


def test_create_refuses_a_person_who_is_not_the_subject(session: Session) -> None:
    person = register_person(session, id_number="410105198807120047", birth_date=date(1988, 7, 12))
    with pytest.raises(ValidationFailed):
        service.create_outgoing(session, signer(HOST), create("arrival", person_id=person.id), None)


def test_receipt_then_ack(session: Session) -> None:
    sent = service.create_outgoing(session, signer(HOST), create("birth"), None)
    (message,) = outbox(session)
    service.on_notification_receipt(session, message, receipt(message))
    assert sent.status == NotificationStatus.delivered
    assert (sent.received_at, sent.due_at) == (RECEIVED, RECEIVED + timedelta(days=30))
    ack_at = RECEIVED + timedelta(hours=3)
    service.receive_ack(
        session, inbound(AckPayload(acknowledged_at=ack_at), sender=ORIGIN, correlation=sent.message_id)
    )
    assert sent.status == NotificationStatus.acknowledged
    assert (sent.acknowledged_at, sent.ack_received_at) == (ack_at, RECEIVED)
    # A second, different ack is a conflict.
    with pytest.raises(Conflict):
        service.receive_ack(
            session, inbound(AckPayload(acknowledged_at=ack_at), sender=ORIGIN, correlation=sent.message_id)
        )


def test_ack_may_overtake_the_receipt(session: Session) -> None:
    sent = service.create_outgoing(session, signer(HOST), create("arrival"), None)
    (message,) = outbox(session)
    service.receive_ack(
        session, inbound(AckPayload(acknowledged_at=RECEIVED), sender=ORIGIN, correlation=sent.message_id)
    )
    service.on_notification_receipt(session, message, receipt(message))
    assert sent.status == NotificationStatus.acknowledged
    assert sent.due_at == RECEIVED + timedelta(days=30)


def test_ack_only_from_the_counterparty_and_for_a_known_notification(session: Session) -> None:
    sent = service.create_outgoing(session, signer(HOST), create("arrival"), None)
    ack = AckPayload(acknowledged_at=RECEIVED)
    with pytest.raises(Forbidden):
        service.receive_ack(session, inbound(ack, sender=OTHER, correlation=sent.message_id))
    with pytest.raises(UnknownRequest):
        service.receive_ack(session, inbound(ack, sender=ORIGIN, correlation=str(uuid.uuid4())))
    assert sent.status == NotificationStatus.queued


def test_ack_for_an_incoming_notification_is_forbidden(session: Session, settings: Settings) -> None:
    received = incoming(session, "birth")
    assert settings.notification_auto_ack_kinds
    with pytest.raises(Forbidden):
        service.receive_ack(
            session,
            inbound(AckPayload(acknowledged_at=RECEIVED), sender=HOST, correlation=received.message_id),
        )


# --- the notified side -------------------------------------------------------------------------------


def test_incoming_waits_for_staff_with_the_kinds_deadline(session: Session, settings: Settings) -> None:
    birth = incoming(session, "birth")
    pregnancy = incoming(session, "pregnancy")
    assert (birth.direction, birth.status, birth.peer) == (
        Direction.incoming,
        NotificationStatus.received,
        HOST,
    )
    assert birth.due_at == due_at(RECEIVED, settings.deadline_notification_birth)
    assert pregnancy.due_at == due_at(RECEIVED, settings.deadline_notification_other)
    assert birth.due_at < pregnancy.due_at  # 5 days against the default 30
    assert outbox(session) == []


def test_auto_ack_kinds_are_acknowledged_on_receipt(session: Session, settings: Settings) -> None:
    arrival = incoming(session, "arrival")
    assert NotificationKind.arrival in settings.notification_auto_ack_kinds
    assert arrival.status == NotificationStatus.acknowledged
    assert arrival.auto_acknowledged is True
    assert arrival.acknowledged_at == RECEIVED
    (ack,) = outbox(session)
    body = json.loads(ack.body)
    assert (ack.type, ack.recipient, ack.path) == (
        "notification.ack",
        HOST,
        f"/notifications/{arrival.message_id}/ack",
    )
    assert (body["sender"], body["correlation_id"]) == (ORIGIN, arrival.message_id)
    assert datetime.fromisoformat(body["payload"]["acknowledged_at"]) == RECEIVED


def test_staff_ack_queues_the_ack_once(session: Session, settings: Settings) -> None:
    received = incoming(session, "health_check")
    assert received.kind not in settings.notification_auto_ack_kinds
    assert received.id is not None
    acked = service.acknowledge(session, signer(ORIGIN), received.id)
    assert (acked.status, acked.auto_acknowledged) == (NotificationStatus.acknowledged, False)
    (ack,) = outbox(session)
    assert json.loads(ack.body)["correlation_id"] == received.message_id
    with pytest.raises(InvalidState):
        service.acknowledge(session, signer(ORIGIN), received.id)
    assert len(outbox(session)) == 1


def test_staff_cannot_ack_an_outgoing_or_unknown_notification(session: Session) -> None:
    sent = service.create_outgoing(session, signer(HOST), create("arrival"), None)
    assert sent.id is not None
    with pytest.raises(NotFound):
        service.acknowledge(session, signer(HOST), sent.id)
    with pytest.raises(NotFound):
        service.acknowledge(session, signer(HOST), 4242)


# --- arrival from the register -----------------------------------------------------------------------


def register_person(session: Session, **changes: Any) -> Person:
    values: dict[str, Any] = {
        "id_number": SUBJECT["id_number"],
        "name": SUBJECT["name"],
        "sex": Sex.F,
        "birth_date": date(1995, 3, 8),
        "origin_node": ORIGIN,
        "host_node": HOST,
        "arrived_on": date(2025, 3, 1),
        **changes,
    }
    person = Person(**values)
    session.add(person)
    session.flush()
    return person


def test_notify_arrival_sends_the_arrival_to_the_origin(session: Session) -> None:
    person = register_person(session)
    sent = service.notify_arrival(session, signer(HOST), person, "clerk")
    (message,) = outbox(session)
    payload = json.loads(message.body)["payload"]
    assert message.recipient == ORIGIN
    assert payload["kind"] == "arrival"
    assert payload["occurred_on"] == "2025-03-01"
    assert payload["details"] == {"arrived_on": "2025-03-01", "address_district": None}
    assert payload["subject"] == SUBJECT
    assert (sent.person_id, sent.status, sent.created_by) == (person.id, NotificationStatus.queued, "clerk")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"arrived_on": None}, "arrived_on"),
        ({"origin_node": HOST}, "origin_node"),
        ({"origin_node": "420102"}, "origin_node"),
    ],
)
def test_notify_arrival_refuses(session: Session, changes: dict[str, Any], field: str) -> None:
    person = register_person(session, **changes)
    with pytest.raises(ValidationFailed) as caught:
        service.notify_arrival(session, signer(HOST), person, None)
    assert caught.value.extra["field"] == field
    assert outbox(session) == []


def test_notify_arrival_validates_the_dates(session: Session) -> None:
    person = register_person(session, arrived_on=date(1990, 1, 1))  # before the person was born
    with pytest.raises(ValidationFailed) as caught:
        service.notify_arrival(session, signer(HOST), person, None)
    assert {e["field"] for e in caught.value.extra["errors"]} == {"occurred_on"}
    assert outbox(session) == []


# --- reading ----------------------------------------------------------------------------------------


def test_list_filters_and_overdue(session: Session, settings: Settings) -> None:
    birth = incoming(session, "birth")  # due 5 days after RECEIVED
    incoming(session, "pregnancy")
    incoming(session, "arrival")  # acknowledged at once: never overdue
    service.create_outgoing(session, signer(HOST), create("departure"), None)
    assert settings.deadline_notification_birth.days == 5

    def ids(**filters: Any) -> list[int | None]:
        query = {
            "direction": None,
            "status": None,
            "kind": None,
            "overdue": None,
            "peer": None,
            "page": 1,
            "page_size": 50,
            **filters,
        }
        items, total = service.list_notifications(session, **query)
        assert total == len(items)
        return [i.id for i in items]

    assert len(ids()) == 4
    assert len(ids(direction=Direction.incoming)) == 3
    assert ids(kind=NotificationKind.birth) == [birth.id]
    assert len(ids(status=NotificationStatus.received)) == 2
    assert ids(overdue=True) == [
        n.id
        for n in session.exec(
            select(Notification)
            .where(Notification.status == NotificationStatus.received)
            .order_by(Notification.due_at)
        ).all()
    ]  # RECEIVED is in the past: both waiting ones are late
    assert len(ids(peer=ORIGIN)) == 1
    items, _ = service.list_notifications(
        session, direction=None, status=None, kind=None, overdue=None, peer=None, page=1, page_size=50
    )
    assert all(i.subject_id_number_masked == "4116**********0024" for i in items)


def test_read_shows_details_subject_and_messages(session: Session) -> None:
    sent = service.create_outgoing(session, signer(HOST), create("pregnancy"), None)
    assert sent.id is not None
    read = service.get_notification(session, sent.id)
    assert read.details == VALID["pregnancy"]
    assert (read.subject_id_number_masked, read.subject.name) == ("4116**********0024", SUBJECT["name"])
    assert SUBJECT["id_number"] not in read.model_dump_json()  # the message payload's subject too
    assert read.messages[0].payload["subject"]["id_number_masked"] == "4116**********0024"
    assert service.subject_id_number(session, sent.id) == SUBJECT["id_number"]  # for a reveal only
    assert [(m.type, m.direction) for m in read.messages] == [("notification", "sent")]
    with pytest.raises(NotFound):
        service.get_notification(session, 4242)
    with pytest.raises(NotFound):
        service.subject_id_number(session, 4242)
