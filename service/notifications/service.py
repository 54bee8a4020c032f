"""通报 logic: send, receive and acknowledge (接收确认) notifications, both sides."""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from pydantic import BaseModel, ValidationError
from sqlalchemy import bindparam, case, func, insert, update
from sqlalchemy import select as sql_select
from sqlmodel import Session, col, or_, select

from service import idnumbers
from service.clock import utcnow
from service.config import Settings, get_settings
from service.directory.service import get_peer
from service.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidState,
    NotFound,
    UnknownRequest,
    ValidationFailed,
)
from service.exchange.envelope import Receipt
from service.exchange.history import conversation
from service.exchange.inbox import InboundMessage
from service.exchange.outbox import Outgoing, enqueue, enqueue_many
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
from service.verification.service import check_assignee, masked_messages

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
    """The receiver's receipt starts the ack clock: keep its received_at and due_at.

    The ack may have overtaken this receipt (an auto-ack is queued before the receipt leaves), or
    be stored by another transaction while this one runs: the status goes from ``queued`` to
    ``delivered`` in the UPDATE itself, from the row as the database has it then, never from what
    was read before (on PostgreSQL a read-modify-write would put an ack's ``acknowledged`` back to
    ``delivered``)."""
    notification = _by_message(session, message.message_id)
    table = _NOTIFICATION
    session.execute(
        update(table)
        .where(table.c.id == notification.id)
        .values(
            received_at=receipt.received_at,
            due_at=receipt.due_at,
            status=case(
                (table.c.status == NotificationStatus.queued, NotificationStatus.delivered),
                else_=table.c.status,
            ),
            updated_at=utcnow(),
        )
    )
    # The object read above is stale now: read again (the status as stored) when next used.
    session.expire(notification, ["received_at", "due_at", "status", "updated_at"])


def on_notification_receipts(session: Session, deliveries: Sequence[tuple[OutboxMessage, Receipt]]) -> None:
    """``on_notification_receipt`` for a batch's deliveries (``PeerEndpoint.on_receipts``): the same
    change to each notification, one SELECT and one UPDATE statement for all of them. Raises
    UnknownRequest, changing nothing, if one has no notification (the relay then runs the hook for
    each delivery on its own, and only that one fails)."""
    message_ids = [message.message_id for message, _receipt in deliveries]
    found = set(
        session.exec(select(Notification.message_id).where(col(Notification.message_id).in_(message_ids)))
    )
    missing = [m for m in message_ids if m not in found]
    if missing:
        raise UnknownRequest(f"no notification {missing[0]}")
    now = utcnow()
    session.connection().execute(
        _RECEIPTED,
        [
            {"b_mid": message.message_id, "b_received_at": r.received_at, "b_due_at": r.due_at, "b_now": now}
            for message, r in deliveries
        ],
    )
    for stale in [o for o in session.identity_map.values() if isinstance(o, Notification)]:
        session.expire(stale, ["received_at", "due_at", "status", "updated_at"])


@dataclass
class _AckTarget:
    """What decides whether an ack is taken: the notification's direction, peer and acknowledged_at."""

    id: int | None
    direction: Direction
    peer: str
    acknowledged_at: datetime | None


def _ack_refusal(target: _AckTarget | None, message_id: str, sender: str) -> DomainError | None:
    """Why an ack from ``sender`` for the notification ``message_id`` is refused (None: it is taken)."""
    if target is None:
        return UnknownRequest(f"no notification {message_id}")
    if target.direction != Direction.outgoing or target.peer != sender:
        return Forbidden("the sender is not this notification's recipient")
    if target.acknowledged_at is not None:
        return Conflict("the notification is already acknowledged")
    return None


def receive_ack(session: Session, inbound: InboundMessage[AckPayload]) -> datetime | None:
    message_id = str(inbound.envelope.correlation_id)
    notification = session.exec(select(Notification).where(Notification.message_id == message_id)).first()
    target = None
    if notification is not None:
        target = _AckTarget(
            notification.id, notification.direction, notification.peer, notification.acknowledged_at
        )
    refusal = _ack_refusal(target, message_id, inbound.envelope.sender)
    if refusal is not None:
        raise refusal
    assert notification is not None
    # Only if still unacknowledged as stored now: two acks at once on PostgreSQL, one is taken.
    taken = session.connection().execute(
        update(_NOTIFICATION)
        .where(_NOTIFICATION.c.id == notification.id, _NOTIFICATION.c.acknowledged_at.is_(None))
        .values(
            acknowledged_at=inbound.envelope.payload.acknowledged_at,
            ack_received_at=inbound.received_at,
            status=NotificationStatus.acknowledged,
            updated_at=utcnow(),
        )
    )
    if taken.rowcount != 1:
        raise Conflict("the notification is already acknowledged")
    session.expire(notification)
    return None


def receive_acks(
    session: Session, inbounds: Sequence[InboundMessage[AckPayload]]
) -> list[datetime | DomainError | None]:
    """``receive_ack`` for a batch's run of acks, in order (the bulk path, ``PeerEndpoint.handle_many``):
    the same outcomes and the same changes, from one SELECT and one UPDATE statement."""
    message_ids = {str(inbound.envelope.correlation_id) for inbound in inbounds}
    found = session.execute(
        sql_select(  # five columns: more than sqlmodel's select is typed for
            col(Notification.message_id),
            col(Notification.id),
            col(Notification.direction),
            col(Notification.peer),
            col(Notification.acknowledged_at),
        )
        .where(col(Notification.message_id).in_(message_ids))
        # Locked until the transaction ends, in id order (no deadlock between two runs): on PostgreSQL
        # a concurrent ack waits here and then finds the notification acknowledged, a conflict.
        # SQLite has no FOR UPDATE (left out): its write transactions take turns.
        .order_by(col(Notification.id))
        .with_for_update()
    ).all()
    # Kept current as the run goes: a second ack for the same notification is a conflict.
    targets = {row[0]: _AckTarget(*row[1:]) for row in found}
    outcomes: list[datetime | DomainError | None] = []
    changes: list[dict[str, Any]] = []
    now = utcnow()
    for inbound in inbounds:
        message_id = str(inbound.envelope.correlation_id)
        target = targets.get(message_id)
        refusal = _ack_refusal(target, message_id, inbound.envelope.sender)
        outcomes.append(refusal)
        if refusal is not None:
            continue
        assert target is not None
        target.acknowledged_at = inbound.envelope.payload.acknowledged_at
        changes.append(
            {
                "b_id": target.id,
                "b_acknowledged_at": target.acknowledged_at,
                "b_ack_received_at": inbound.received_at,
                "b_updated_at": now,
            }
        )
    if changes:
        session.connection().execute(_ACKNOWLEDGED, changes)
        # A Notification of these already in the session (read earlier in the transaction) is stale.
        for change in changes:
            stale = session.identity_map.get(session.identity_key(Notification, change["b_id"]))
            if stale is not None:
                session.expire(stale)
    return outcomes


# --- the notified side -----------------------------------------------------------------------


def _taken(session: Session, message_ids: Collection[str]) -> set[str]:
    """Those of ``message_ids`` a notification here has already (one this node sent, say): a peer's
    message that reuses one is refused as a conflict, not left to fail on the unique index."""
    query = select(Notification.message_id).where(col(Notification.message_id).in_(message_ids))
    return set(session.exec(query).all())


def _reused(message_id: str) -> DomainError:
    return Conflict(f"message_id {message_id} is already used by another notification on this node")


def receive_notification(session: Session, inbound: InboundMessage[NotificationPayload]) -> datetime | None:
    envelope, payload = inbound.envelope, inbound.envelope.payload
    if _taken(session, [str(envelope.message_id)]):
        raise _reused(str(envelope.message_id))
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


def receive_notifications(
    session: Session, inbounds: Sequence[InboundMessage[NotificationPayload]]
) -> list[datetime | DomainError | None]:
    """``receive_notification`` for a batch's run of 通报, in order (the bulk path,
    ``PeerEndpoint.handle_many``): the same rows — the notification, and the ack queued for the kinds
    acknowledged on receipt — written in one statement each, no ORM object and no flush per message.
    Each one's outcome is its ack deadline, or a conflict when its message_id is one a notification
    here has already (the payload was validated before the transaction)."""
    settings = get_settings()
    deadlines: dict[tuple[datetime, NotificationKind], datetime] = {}  # a batch has one received_at
    rows: list[dict[str, Any]] = []
    acks: list[Outgoing] = []
    outcomes: list[datetime | DomainError | None] = []
    taken = _taken(session, [str(inbound.envelope.message_id) for inbound in inbounds])
    for inbound in inbounds:
        envelope, payload = inbound.envelope, inbound.envelope.payload
        message_id, at = str(envelope.message_id), inbound.received_at
        if message_id in taken:
            outcomes.append(_reused(message_id))
            continue
        deadline = deadlines.get((at, payload.kind))
        if deadline is None:
            deadline = deadlines[at, payload.kind] = due_at(at, deadline_rule(settings, payload.kind))
        auto = payload.kind in settings.notification_auto_ack_kinds
        row = _fields(message_id, Direction.incoming, envelope.sender, NotificationStatus.received, payload)
        # The columns not given here take their defaults (None), as in Notification(...).
        row.update(
            sent_at=envelope.sent_at,
            received_at=at,
            due_at=deadline,
            acknowledged_at=None,
            auto_acknowledged=False,
            updated_at=utcnow(),
        )
        if auto:  # as _acknowledge does
            row.update(status=NotificationStatus.acknowledged, acknowledged_at=at, auto_acknowledged=True)
            acks.append(_ack_message(envelope.recipient, envelope.sender, message_id, at))
        rows.append(row)
        outcomes.append(deadline)
    if rows:
        session.connection().execute(insert(_NOTIFICATION), rows)
    enqueue_many(session, acks)
    return outcomes


def acknowledge(session: Session, signer: NodeSigner, notification_id: int) -> Notification:
    """接收确认 by staff: the ack is queued for the sender in the same transaction."""
    notification = session.get(Notification, notification_id)
    if notification is None or notification.direction != Direction.incoming:
        raise NotFound(f"no incoming notification {notification_id}")
    if notification.status != NotificationStatus.received:
        raise InvalidState(f"the notification is already {notification.status.value}")
    _acknowledge(session, signer.node_id, notification, utcnow(), auto=False)
    return notification


def assign_notification(session: Session, notification_id: int, assignee: str) -> Notification:
    """领取 / 指派: who in this bureau handles an incoming notification (until it is acknowledged)."""
    notification = session.get(Notification, notification_id)
    if notification is None or notification.direction != Direction.incoming:
        raise NotFound(f"no incoming notification {notification_id}")
    check_assignee(session, assignee)
    changed = session.exec(
        update(_NOTIFICATION)
        .where(_NOTIFICATION.c.id == notification_id, _NOTIFICATION.c.status == NotificationStatus.received)
        .values(assigned_to=assignee, updated_at=utcnow())
    )
    if changed.rowcount != 1:
        raise Conflict("the notification is acknowledged: it is closed")
    session.refresh(notification)
    return notification


def _acknowledge(
    session: Session, local_node: str, notification: Notification, at: datetime, *, auto: bool
) -> None:
    notification.status, notification.acknowledged_at = NotificationStatus.acknowledged, at
    notification.auto_acknowledged = auto
    ack = _ack_message(local_node, notification.peer, notification.message_id, at)
    enqueue(
        session,
        type=ack.type,
        sender=ack.sender,
        recipient=ack.recipient,
        path=ack.path,
        payload=ack.payload,
        correlation_id=ack.correlation_id,
    )
    _touch(session, notification)


def _ack_message(local_node: str, peer: str, message_id: str, at: datetime) -> Outgoing:
    """The 接收确认 this node sends for the notification ``message_id`` from ``peer``."""
    return Outgoing(
        type=ACK,
        sender=local_node,
        recipient=peer,
        path=ack_path(message_id),
        payload=AckPayload(acknowledged_at=at),
        correlation_id=UUID(message_id),
    )


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
    messages = masked_messages(conversation(session, notification.message_id, {NOTIFICATION: 0}))
    return NotificationRead(
        **summary(notification, utcnow()).model_dump(),
        subject=SubjectRead(
            name=notification.subject_name,
            sex=notification.subject_sex.value,
            birth_date=notification.subject_birth_date,
        ),
        details=json.loads(notification.details),
        created_by=notification.created_by,
        messages=messages,
    )


def subject_id_number(session: Session, notification_id: int) -> str:
    """The subject's full ID number, for a reveal (service.staff.reveal); reads mask it."""
    notification = session.get(Notification, notification_id)
    if notification is None:
        raise NotFound(f"no notification {notification_id}")
    return notification.subject_id_number


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
    return Notification(**_fields(message_id, direction, peer, status, payload), sent_at=utcnow())


def _fields(
    message_id: str, direction: Direction, peer: str, status: NotificationStatus, payload: NotificationPayload
) -> dict[str, Any]:
    """A new notification's columns that come from its message (``_new``'s, and the bulk path's)."""
    details: BaseModel = payload.details
    assert isinstance(details, DETAILS[payload.kind])
    return {
        "message_id": message_id,
        "direction": direction,
        "peer": peer,
        "kind": payload.kind,
        "status": status,
        "subject_id_number": payload.subject.id_number,
        "subject_name": payload.subject.name,
        "subject_sex": payload.subject.sex,
        "subject_birth_date": payload.subject.birth_date,
        "occurred_on": payload.occurred_on,
        "details": json.dumps(details.model_dump(mode="json"), ensure_ascii=False),
    }


_NOTIFICATION = Notification.__table__  # type: ignore[attr-defined]
# receive_acks' change to each notification acknowledged: the columns receive_ack sets.
_ACKNOWLEDGED = (
    update(_NOTIFICATION)
    .where(_NOTIFICATION.c.id == bindparam("b_id"))
    .values(
        acknowledged_at=bindparam("b_acknowledged_at"),
        ack_received_at=bindparam("b_ack_received_at"),
        status=NotificationStatus.acknowledged,
        updated_at=bindparam("b_updated_at"),
    )
)


# on_notification_receipts' change to each notification: what on_notification_receipt sets.
_RECEIPTED = (
    update(_NOTIFICATION)
    .where(_NOTIFICATION.c.message_id == bindparam("b_mid"))
    .values(
        received_at=bindparam("b_received_at"),
        due_at=bindparam("b_due_at"),
        status=case(
            (_NOTIFICATION.c.status == NotificationStatus.queued, NotificationStatus.delivered),
            else_=_NOTIFICATION.c.status,
        ),
        updated_at=bindparam("b_now"),
    )
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
