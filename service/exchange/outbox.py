"""Writing outgoing messages (in the same transaction as the business change they report), and
the relay's leases on them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any
from uuid import UUID

import uuid6
from pydantic import BaseModel
from sqlalchemy import ColumnElement, event, func, insert, or_, update
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
    row = OutboxMessage(**_values(Outgoing(type, sender, recipient, path, payload, correlation_id)))
    session.add(row)
    session.flush()
    session.info[_ENQUEUED] = True
    return row


@dataclass(frozen=True)
class Outgoing:
    """A message for ``enqueue_many``: ``enqueue``'s arguments."""

    type: str
    sender: str
    recipient: str
    path: str
    payload: BaseModel
    correlation_id: UUID | None = None


def enqueue_many(session: Session, messages: Sequence[Outgoing]) -> list[str]:
    """``enqueue`` for each message, in order (the same rows), written in one statement; their
    message_ids. Flush only, as ``enqueue``."""
    rows = [_values(message) for message in messages]
    if rows:
        session.connection().execute(insert(_TABLE), rows)
        session.info[_ENQUEUED] = True
    return [row["message_id"] for row in rows]


_TABLE = OutboxMessage.__table__  # type: ignore[attr-defined]


def _values(message: Outgoing) -> dict[str, Any]:
    """A new outbox row's columns (the others take their defaults, in either way of writing it)."""
    message_id, now = uuid6.uuid7(), utcnow()
    body = envelope_body(
        message_id=message_id,
        type=message.type,
        sender=message.sender,
        recipient=message.recipient,
        sent_at=now,
        correlation_id=message.correlation_id,
        payload=message.payload,
    )
    return {
        "message_id": str(message_id),
        "type": message.type,
        "recipient": message.recipient,
        "path": message.path,
        "conversation_id": str(message.correlation_id or message_id),
        "body": body,
        "digest": content_digest(body),
        "next_attempt_at": now,
        "created_at": now,
    }


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


# --- leases: which replica's relay is delivering a message ---------------------------------------


def _due(now: datetime) -> ColumnElement[bool]:
    return (
        (col(OutboxMessage.status) == OutboxStatus.pending)
        & (col(OutboxMessage.next_attempt_at) <= now)
        & or_(col(OutboxMessage.lease_until).is_(None), col(OutboxMessage.lease_until) < now)
    )


def claim_due(
    session: Session,
    *,
    owner: str,
    now: datetime,
    until: datetime,
    limit: int,
    room: Mapping[str, int],
    per_peer: int,
    batch: Mapping[str, int] | None = None,
) -> dict[str, str]:
    """Lease up to ``limit`` due messages to ``owner`` until ``until``, oldest due first; flush only.

    ``room`` says how many more deliveries a peer may have (none for a peer at 0: it is not even
    read); any other peer gets up to ``per_peer``. ``batch`` names the peers that take batches
    and how many messages one delivery may carry: for each delivery such a peer got, its next due
    messages are leased too, up to that many per delivery (beyond ``limit``). Each claim counts
    as an attempt. Message id → recipient of the messages now leased to ``owner``, per peer in
    due order. On PostgreSQL the candidates are locked with SKIP LOCKED, so concurrent claims by
    two replicas are disjoint; on SQLite the write lock taken at BEGIN does it.
    """
    full = [peer for peer, n in room.items() if n <= 0]
    query = select(OutboxMessage.message_id, OutboxMessage.recipient).where(_due(now))
    if full:
        query = query.where(col(OutboxMessage.recipient).not_in(full))
    query = query.order_by(col(OutboxMessage.next_attempt_at)).limit(limit)
    postgres = session.get_bind().dialect.name == "postgresql"
    if postgres:
        query = query.with_for_update(skip_locked=True)
    left = dict(room)
    chosen: dict[str, str] = {}
    for message_id, recipient in session.exec(query).all():
        if left.setdefault(recipient, per_peer) > 0:
            left[recipient] -= 1
            chosen[message_id] = recipient
    if not chosen:
        return {}
    for peer, deliveries in Counter(chosen.values()).items():
        more = deliveries * (batch or {}).get(peer, 1) - deliveries
        if more <= 0:
            continue
        theirs = [m for m, r in chosen.items() if r == peer]
        top_up = (
            select(OutboxMessage.message_id)
            .where(
                _due(now), col(OutboxMessage.recipient) == peer, col(OutboxMessage.message_id).not_in(theirs)
            )
            .order_by(col(OutboxMessage.next_attempt_at))
            .limit(more)
        )
        if postgres:
            top_up = top_up.with_for_update(skip_locked=True)
        chosen.update((message_id, peer) for message_id in session.exec(top_up).all())
    session.exec(
        update(OutboxMessage)
        .where(col(OutboxMessage.message_id).in_(chosen), _due(now))
        .values(lease_owner=owner, lease_until=until, attempts=OutboxMessage.attempts + 1)
    )
    mine = session.exec(
        select(OutboxMessage.message_id).where(
            col(OutboxMessage.message_id).in_(chosen),
            col(OutboxMessage.lease_owner) == owner,
            col(OutboxMessage.lease_until) == until,
        )
    ).all()
    session.flush()
    held = set(mine)
    return {message_id: peer for message_id, peer in chosen.items() if message_id in held}


def _held_by(owner: str, message_ids: Collection[str]) -> ColumnElement[bool]:
    return (
        col(OutboxMessage.message_id).in_(message_ids)
        & (col(OutboxMessage.lease_owner) == owner)
        & (col(OutboxMessage.status) == OutboxStatus.pending)
    )


def renew_leases(session: Session, *, owner: str, message_ids: Collection[str], until: datetime) -> set[str]:
    """Extend ``owner``'s leases on these messages to ``until``; the ids it still holds. Flush only.

    A message delivered, recorded or taken over by another replica meanwhile is not renewed.
    """
    if not message_ids:
        return set()
    session.exec(update(OutboxMessage).where(_held_by(owner, message_ids)).values(lease_until=until))
    held = session.exec(
        select(OutboxMessage.message_id).where(
            _held_by(owner, message_ids), col(OutboxMessage.lease_until) == until
        )
    ).all()
    session.flush()
    return set(held)


def release_leases(session: Session, *, owner: str, message_ids: Collection[str]) -> int:
    """Give up ``owner``'s leases (deliveries abandoned at shutdown): due again at once. Flush only."""
    if not message_ids:
        return 0
    result = session.exec(
        update(OutboxMessage).where(_held_by(owner, message_ids)).values(lease_owner=None, lease_until=None)
    )
    session.flush()
    return int(result.rowcount)
