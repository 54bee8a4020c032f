"""Writing outgoing messages: in the same transaction as the business change they report."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from uuid import UUID

import uuid6
from pydantic import BaseModel
from sqlalchemy import event, func, update
from sqlmodel import Session, col, select

from service.clock import utcnow
from service.errors import InvalidState, NotFound
from service.exchange.envelope import envelope_body
from service.models import OutboxMessage, OutboxStatus
from service.signing.http import content_digest


def enqueue(
    session: Session,
    *,
    type: str,
    sender: str,
    recipient: str,
    path: str,
    payload: BaseModel,
    correlation_id: UUID | None = None,
) -> OutboxMessage:
    """Add a message to the outbox (flush only: the caller's transaction commits it with its change)."""
    message_id, now = uuid6.uuid7(), utcnow()
    body = envelope_body(
        message_id=message_id,
        type=type,
        sender=sender,
        recipient=recipient,
        sent_at=now,
        correlation_id=correlation_id,
        payload=payload,
    )
    row = OutboxMessage(
        message_id=str(message_id),
        type=type,
        recipient=recipient,
        path=path,
        conversation_id=str(correlation_id or message_id),
        body=body,
        digest=content_digest(body),
        next_attempt_at=now,
        created_at=now,
    )
    session.add(row)
    session.flush()
    session.info[_ENQUEUED] = True
    return row


_ENQUEUED = "yipanqi.outbox_enqueued"
_listeners: list[Callable[[], None]] = []


def on_outbox_commit(callback: Callable[[], None]) -> None:
    """Call ``callback`` after any commit that put a message in the outbox (wakes the relay)."""
    _listeners.append(callback)


@event.listens_for(Session, "after_commit")
def _after_commit(session: Session) -> None:
    if session.info.pop(_ENQUEUED, False):
        for callback in _listeners:
            callback()


@event.listens_for(Session, "after_rollback")
def _after_rollback(session: Session) -> None:
    session.info.pop(_ENQUEUED, None)


def list_messages(
    session: Session, *, status: OutboxStatus | None, page: int, page_size: int
) -> tuple[list[OutboxMessage], int]:
    query = select(OutboxMessage)
    if status is not None:
        query = query.where(OutboxMessage.status == status)
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(
        query.order_by(col(OutboxMessage.created_at).desc()).offset((page - 1) * page_size).limit(page_size)
    ).all()
    return list(rows), total


def requeue_dead(session: Session, message_id: str | None = None) -> int:
    """Give dead messages a fresh retry budget (all of them, or one)."""
    if message_id is not None:
        row = session.get(OutboxMessage, message_id)
        if row is None:
            raise NotFound(f"no outgoing message {message_id}")
        if row.status != OutboxStatus.dead:
            raise InvalidState(f"message is {row.status.value}, only dead messages can be re-run")
    stmt = (
        update(OutboxMessage)
        .where(col(OutboxMessage.status) == OutboxStatus.dead)
        .values(
            status=OutboxStatus.pending,
            attempts=0,
            next_attempt_at=utcnow() - timedelta(seconds=1),
            lease_owner=None,
            lease_until=None,
        )
    )
    if message_id is not None:
        stmt = stmt.where(col(OutboxMessage.message_id) == message_id)
    result = session.exec(stmt)
    session.flush()
    return int(result.rowcount)
