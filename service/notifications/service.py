"""通报 logic: send, receive and acknowledge (接收确认) notifications, both sides."""

from __future__ import annotations

import json
from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, ValidationError
from sqlalchemy import func
from sqlmodel import Session, col, or_, select

from service import idnumbers
from service.clock import utcnow
from service.config import Settings, get_settings
from service.directory.service import get_peer
from service.errors import Conflict, Forbidden, InvalidState, NotFound, UnknownRequest, ValidationFailed
from service.exchange.envelope import Receipt
from service.exchange.history import conversation
from service.exchange.inbox import InboundMessage
from service.exchange.outbox import enqueue
from service.models import (
    Direction,
    Notification,
    NotificationKind,
    NotificationStatus,
    OutboxMessage,
    Person,
)
from service.notifications.schemas import (
    DETAILS,
    AckPayload,
    ArrivalDetails,
    NotificationCreate,
    NotificationPayload,
    NotificationRead,
    NotificationSummary,
)
from service.signing.node import NodeSigner
from service.sla.deadlines import DeadlineRule, due_at
from service.verification.schemas import SubjectRead

NOTIFICATION, ACK = "notification", "notification.ack"
PATH = "/notifications"


def deadline_rule(settings: Settings, kind: NotificationKind) -> DeadlineRule:
    """How long the receiver has to acknowledge (docs/protocol.md "Delivery": birth, any other)."""
    if kind == NotificationKind.birth:
        return settings.deadline_notification_birth
    return settings.deadline_notification_other


def ack_path(notification_message_id: str) -> str:
    return f"{PATH}/{notification_message_id}/ack"


# --- the notifying side ----------------------------------------------------------------------


def create_outgoing(
    session: Session, signer: NodeSigner, data: NotificationCreate, staff: str | None
) -> Notification:
    if data.recipient == signer.node_id:
        raise ValidationFailed("a node does not notify itself", field="recipient")
    if get_peer(session, data.recipient) is None:
        raise ValidationFailed(f"node {data.recipient} is not in the directory", field="recipient")
    if data.person_id is not None:
        person = session.get(Person, data.person_id)
        if person is None:
            raise ValidationFailed(f"no person {data.person_id} in the register", field="person_id")
        if person.id_number != data.subject.id_number:
            raise ValidationFailed("the person's ID number is not the subject's", field="person_id")
    payload = NotificationPayload.model_validate(
        data.model_dump(include=set(NotificationPayload.model_fields))
    )
    return _send(session, signer, data.recipient, payload, data.person_id, staff)


def notify_arrival(session: Session, signer: NodeSigner, person: Person, staff: str | None) -> Notification:
    """流入通报: tell a register person's origin that they arrived here (queued with the caller's change).

    Raises ValidationFailed when the person has no arrival date, is from this node, or their origin
    is not in the directory (the caller decides whether that stops the registration).
    """
    if person.arrived_on is None:
        raise ValidationFailed("the person has no arrival date", field="arrived_on")
    if person.origin_node == signer.node_id:
        raise ValidationFailed("the person's origin is this node: nobody to notify", field="origin_node")
    if get_peer(session, person.origin_node) is None:
        raise ValidationFailed(f"origin {person.origin_node} is not in the directory", field="origin_node")
    try:
        payload = NotificationPayload(
            subject={
                "id_number": person.id_number,
                "name": person.name,
                "sex": person.sex,
                "birth_date": person.birth_date,
            },
            kind=NotificationKind.arrival,
            occurred_on=person.arrived_on,
            details=ArrivalDetails(arrived_on=person.arrived_on),
        )
    except ValidationError as exc:
        errors = [{"field": ".".join(map(str, e["loc"])), "reason": e["msg"]} for e in exc.errors()]
        raise ValidationFailed("the arrival notification does not validate", errors=errors) from None
    return _send(session, signer, person.origin_node, payload, person.id, staff)


def _send(
    session: Session,
    signer: NodeSigner,
    recipient: str,
    payload: NotificationPayload,
    person_id: int | None,
    staff: str | None,
) -> Notification:
    message = enqueue(
        session, type=NOTIFICATION, sender=signer.node_id, recipient=recipient, path=PATH, payload=payload
    )
    notification = _new(message.message_id, Direction.outgoing, recipient, NotificationStatus.queued, payload)
    notification.sent_at, notification.person_id, notification.created_by = (
        message.created_at,
        person_id,
        staff,
    )
    session.add(notification)
    session.flush()
    return notification


def on_notification_receipt(session: Session, message: OutboxMessage, receipt: Receipt) -> None:
    """The receiver's receipt starts the ack clock: keep its received_at and due_at."""
    notification = _by_message(session, message.message_id)
    notification.received_at, notification.due_at = receipt.received_at, receipt.due_at
    # The ack may have overtaken this receipt (an auto-ack is queued before the receipt leaves).
    if notification.status == NotificationStatus.queued:
        notification.status = NotificationStatus.delivered
    _touch(session, notification)


def receive_ack(session: Session, inbound: InboundMessage[AckPayload]) -> datetime | None:
    notification = _by_message(session, str(inbound.envelope.correlation_id))
    if notification.direction != Direction.outgoing or notification.peer != inbound.envelope.sender:
        raise Forbidden("the sender is not this notification's recipient")
    if notification.acknowledged_at is not None:
        raise Conflict("the notification is already acknowledged")
    notification.acknowledged_at = inbound.envelope.payload.acknowledged_at
    notification.ack_received_at = inbound.received_at
    notification.status = NotificationStatus.acknowledged
    _touch(session, notification)
    return None


# --- the notified side -----------------------------------------------------------------------


def receive_notification(session: Session, inbound: InboundMessage[NotificationPayload]) -> datetime | None:
    envelope, payload = inbound.envelope, inbound.envelope.payload
    settings = get_settings()
    notification = _new(
        str(envelope.message_id), Direction.incoming, envelope.sender, NotificationStatus.received, payload
    )
    notification.sent_at, notification.received_at = envelope.sent_at, inbound.received_at
    notification.due_at = due_at(inbound.received_at, deadline_rule(settings, payload.kind))
    session.add(notification)
    session.flush()
    if payload.kind in settings.notification_auto_ack_kinds:
        _acknowledge(session, envelope.recipient, notification, inbound.received_at, auto=True)
    return notification.due_at


def acknowledge(session: Session, signer: NodeSigner, notification_id: int) -> Notification:
    """接收确认 by staff: the ack is queued for the sender in the same transaction."""
    notification = session.get(Notification, notification_id)
    if notification is None or notification.direction != Direction.incoming:
        raise NotFound(f"no incoming notification {notification_id}")
    if notification.status != NotificationStatus.received:
        raise InvalidState(f"the notification is already {notification.status.value}")
    _acknowledge(session, signer.node_id, notification, utcnow(), auto=False)
    return notification


def _acknowledge(
    session: Session, local_node: str, notification: Notification, at: datetime, *, auto: bool
) -> None:
    notification.status, notification.acknowledged_at = NotificationStatus.acknowledged, at
    notification.auto_acknowledged = auto
    enqueue(
        session,
        type=ACK,
        sender=local_node,
        recipient=notification.peer,
        path=ack_path(notification.message_id),
        payload=AckPayload(acknowledged_at=at),
        correlation_id=UUID(notification.message_id),
    )
    _touch(session, notification)


# --- reading ---------------------------------------------------------------------------------


def list_notifications(
    session: Session,
    *,
    direction: Direction | None,
    status: NotificationStatus | None,
    kind: NotificationKind | None,
    overdue: bool | None,
    peer: str | None,
    page: int,
    page_size: int,
) -> tuple[list[NotificationSummary], int]:
    now = utcnow()
    query = select(Notification)
    for column, value in (
        (Notification.direction, direction),
        (Notification.status, status),
        (Notification.kind, kind),
        (Notification.peer, peer),
    ):
        if value is not None:
            query = query.where(column == value)
    late = (col(Notification.status) != NotificationStatus.acknowledged) & (col(Notification.due_at) < now)
    if overdue is True:
        query = query.where(late)
    elif overdue is False:
        query = query.where(or_(col(Notification.due_at).is_(None), ~late))
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(
        query.order_by(col(Notification.due_at).is_(None), col(Notification.due_at), col(Notification.id))
        .offset((page - 1) * page_size)
        .limit(page_size)
    ).all()
    return [summary(n, now) for n in rows], total


def get_notification(session: Session, notification_id: int) -> NotificationRead:
    notification = session.get(Notification, notification_id)
    if notification is None:
        raise NotFound(f"no notification {notification_id}")
    messages = conversation(session, notification.message_id, {NOTIFICATION: 0})
    return NotificationRead(
        **summary(notification, utcnow()).model_dump(),
        subject=SubjectRead(
            id_number=notification.subject_id_number,
            name=notification.subject_name,
            sex=notification.subject_sex.value,
            birth_date=notification.subject_birth_date,
        ),
        details=json.loads(notification.details),
        created_by=notification.created_by,
        messages=messages,
    )


def summary(n: Notification, now: datetime) -> NotificationSummary:
    assert n.id is not None
    return NotificationSummary(
        id=n.id,
        message_id=n.message_id,
        direction=n.direction,
        peer=n.peer,
        status=n.status,
        kind=n.kind,
        overdue=n.status != NotificationStatus.acknowledged and n.due_at is not None and n.due_at < now,
        overdue_at=n.overdue_at,
        subject_id_number_masked=idnumbers.mask(n.subject_id_number),
        occurred_on=n.occurred_on,
        person_id=n.person_id,
        sent_at=n.sent_at,
        received_at=n.received_at,
        due_at=n.due_at,
        acknowledged_at=n.acknowledged_at,
        ack_received_at=n.ack_received_at,
        auto_acknowledged=n.auto_acknowledged,
    )


# --- helpers ---------------------------------------------------------------------------------


def _new(
    message_id: str, direction: Direction, peer: str, status: NotificationStatus, payload: NotificationPayload
) -> Notification:
    details: BaseModel = payload.details
    assert isinstance(details, DETAILS[payload.kind])
    return Notification(
        message_id=message_id,
        direction=direction,
        peer=peer,
        kind=payload.kind,
        status=status,
        subject_id_number=payload.subject.id_number,
        subject_name=payload.subject.name,
        subject_sex=payload.subject.sex,
        subject_birth_date=payload.subject.birth_date,
        occurred_on=payload.occurred_on,
        details=json.dumps(details.model_dump(mode="json"), ensure_ascii=False),
        sent_at=utcnow(),
    )


def _touch(session: Session, notification: Notification) -> None:
    notification.updated_at = utcnow()
    session.add(notification)
    session.flush()


def _by_message(session: Session, message_id: str) -> Notification:
    notification = session.exec(select(Notification).where(Notification.message_id == message_id)).first()
    if notification is None:
        raise UnknownRequest(f"no notification {message_id}")
    return notification
