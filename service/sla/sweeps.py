"""SLA sweeps: reminders before a deadline, the overdue state after it, escalation to the supervisor.

Definitions (the items are the ones this node owes an answer to: incoming 协查 cases waiting for
签收 or 反馈, incoming 通报 waiting for 接收确认):

- **Reminder** (到期提醒, role operator): once the item's deadline is at most ``reminder_before``
  (working) days ahead, i.e. ``due_at`` ≤ the end of the N-th (working) day after today
  (Asia/Shanghai) and ``due_at`` ≥ now. With the default of 2 working days and a deadline at the
  end of a Friday, the reminder comes on the Wednesday. An item found already past its deadline
  gets the overdue notice instead.
- **Overdue** (已超期): ``due_at`` < now and the item is not done (a 协查 case not answered, a
  通报 not acknowledged). The sweep records ``overdue_at`` (the first sweep that saw it: kept when
  the item is answered later, as the record that it was late) on incoming and outgoing items, and
  makes an ``overdue`` notice for the operator and, with ``escalate_overdue``, an ``escalation``
  notice (督办) for the supervisor, for incoming items. An outgoing item late on the peer's side
  is listed by ``?direction=outgoing&overdue=true`` (催办) but makes no notice.
- Done items never get a notice. An interim answer (the ack's ``promised_by``, "will answer by")
  never moves ``due_at``: a promise past the deadline is still overdue at the deadline.

Each notice exists at most once per (kind, item) — a unique constraint, inserted with ON CONFLICT
DO NOTHING — so a clock moved back and forth, a sweep run twice or two replicas sweeping together
never make a second one. On PostgreSQL the candidate rows are claimed with ``FOR UPDATE SKIP
LOCKED`` (replicas take different rows instead of queueing), and ``overdue_at`` is set only where
still NULL, so each item is handled by exactly one sweep. The functions take the session and
``now`` and only flush; ``sweep_all`` commits batch by batch for the scheduler.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import Table, exists, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.sql import Select
from sqlmodel import Session, SQLModel

from service.config import Settings
from service.models import (
    CaseStatus,
    Direction,
    ItemType,
    NoticeKind,
    Notification,
    NotificationStatus,
    Role,
    StaffNotice,
    VerificationCase,
)
from service.sla.deadlines import due_at

BATCH = 500
NOTICES = SQLModel.metadata.tables[StaffNotice.__tablename__]


@dataclass(frozen=True)
class Queue:
    """Where items of one type wait, and which statuses are still open (not done)."""

    item_type: ItemType
    table: Table
    open_incoming: tuple[StrEnum, ...]  # we owe the answer
    open_outgoing: tuple[StrEnum, ...]  # the peer owes it


QUEUES = (
    Queue(
        ItemType.verification,
        SQLModel.metadata.tables[VerificationCase.__tablename__],
        (CaseStatus.received, CaseStatus.acknowledged),
        (CaseStatus.delivered, CaseStatus.acknowledged),
    ),
    Queue(
        ItemType.notification,
        SQLModel.metadata.tables[Notification.__tablename__],
        (NotificationStatus.received,),
        (NotificationStatus.delivered,),
    ),
)


@dataclass(frozen=True)
class ItemRef:
    item_type: ItemType
    item_id: int


@dataclass
class Batch:
    """What one call handled; ``more`` when a queue filled its batch (call again)."""

    handled: list[ItemRef] = field(default_factory=list)
    notices: list[tuple[NoticeKind, ItemRef]] = field(default_factory=list)
    more: bool = False


def reminder_horizon(now: datetime, settings: Settings) -> datetime:
    """Deadlines up to this instant are reminded now: the end of the N-th (working) day after today."""
    return due_at(now, settings.reminder_before)


def remind(session: Session, now: datetime, settings: Settings, limit: int = BATCH) -> Batch:
    """Reminder notices for incoming items whose reminder time has come (see the module's definitions)."""
    horizon = reminder_horizon(now, settings)
    batch = Batch()
    for queue in QUEUES:
        t = queue.table
        reminded = exists().where(
            NOTICES.c.kind == NoticeKind.reminder,
            NOTICES.c.item_type == queue.item_type,
            NOTICES.c.item_id == t.c.id,
        )
        query = (
            select(t.c.id, t.c.due_at)
            .where(
                t.c.direction == Direction.incoming,
                t.c.status.in_(queue.open_incoming),
                t.c.due_at >= now,
                t.c.due_at <= horizon,
                ~reminded,
            )
            .order_by(t.c.due_at, t.c.id)
            .limit(limit)
        )
        rows = session.connection().execute(_claim(session, query, t)).all()
        batch.more |= len(rows) == limit
        kind, item_type = NoticeKind.reminder, queue.item_type
        notices = [_notice(kind, item_type, item_id, Role.operator, due, now) for item_id, due in rows]
        made = _insert_notices(session, notices)
        _collect(batch, queue.item_type, made)
    return batch


def mark_overdue(session: Session, now: datetime, settings: Settings, limit: int = BATCH) -> Batch:
    """Record ``overdue_at`` on items past their deadline; notices (and escalations) for incoming ones."""
    batch = Batch()
    for queue in QUEUES:
        t = queue.table
        is_open = ((t.c.direction == Direction.incoming) & t.c.status.in_(queue.open_incoming)) | (
            (t.c.direction == Direction.outgoing) & t.c.status.in_(queue.open_outgoing)
        )
        query = (
            select(t.c.id)
            .where(is_open, t.c.due_at < now, t.c.overdue_at.is_(None))
            .order_by(t.c.due_at, t.c.id)
            .limit(limit)
        )
        ids = list(session.connection().execute(_claim(session, query, t)).scalars())
        batch.more |= len(ids) == limit
        if not ids:
            continue
        # Only where still NULL: whatever claimed the row first keeps it, nothing is marked twice.
        marked = (
            session.connection()
            .execute(
                update(t)
                .where(t.c.id.in_(ids), t.c.overdue_at.is_(None))
                .values(overdue_at=now)
                .returning(t.c.id, t.c.direction, t.c.due_at)
            )
            .all()
        )
        batch.handled += [ItemRef(queue.item_type, item_id) for item_id, _, _ in marked]
        notices = []
        for item_id, direction, due in marked:
            if direction != Direction.incoming:
                continue
            notices.append(_notice(NoticeKind.overdue, queue.item_type, item_id, Role.operator, due, now))
            if settings.escalate_overdue:
                notices.append(
                    _notice(NoticeKind.escalation, queue.item_type, item_id, Role.supervisor, due, now)
                )
        for kind, item_id in _insert_notices(session, notices):
            batch.notices.append((kind, ItemRef(queue.item_type, item_id)))
    return batch


def sweep(session: Session, now: datetime, settings: Settings, limit: int = BATCH) -> Batch:
    """One batch of both sweeps (overdue first: an item past its deadline is not reminded)."""
    overdue = mark_overdue(session, now, settings, limit)
    reminders = remind(session, now, settings, limit)
    return Batch(
        handled=overdue.handled + reminders.handled,
        notices=overdue.notices + reminders.notices,
        more=overdue.more or reminders.more,
    )


def sweep_all(
    session_factory: Callable[[], Session], now: datetime, settings: Settings, limit: int = BATCH
) -> Batch:
    """Sweep until nothing is left, one transaction per batch (the scheduler's job)."""
    total = Batch()
    while True:
        with session_factory() as session:
            batch = sweep(session, now, settings, limit)
            session.commit()
        total.handled += batch.handled
        total.notices += batch.notices
        if not batch.more:
            return total


def _claim(session: Session, query: Select[Any], table: Table) -> Select[Any]:
    """On PostgreSQL lock the candidate rows, skipping those another replica holds."""
    if session.get_bind().dialect.name == "postgresql":
        return query.with_for_update(skip_locked=True, of=table)
    return query  # SQLite: BEGIN IMMEDIATE (service/db.py) already makes writers take turns


def _notice(
    kind: NoticeKind, item_type: ItemType, item_id: int, role: Role, due: datetime, now: datetime
) -> dict[str, Any]:
    return {
        "kind": kind,
        "item_type": item_type,
        "item_id": item_id,
        "role": role,
        "due_at": due,
        "created_at": now,
    }


def _insert_notices(session: Session, rows: list[dict[str, Any]]) -> list[tuple[NoticeKind, int]]:
    """Insert what does not exist yet; returns the (kind, item_id) of the notices made by this call."""
    if not rows:
        return []
    dialect = session.get_bind().dialect.name
    insert = pg_insert if dialect == "postgresql" else sqlite_insert
    statement = (
        insert(NOTICES)
        .values(rows)
        .on_conflict_do_nothing(index_elements=["kind", "item_type", "item_id"])
        .returning(NOTICES.c.kind, NOTICES.c.item_id)
    )
    return [(NoticeKind(kind), int(item_id)) for kind, item_id in session.connection().execute(statement)]


def _collect(batch: Batch, item_type: ItemType, made: Iterable[tuple[NoticeKind, int]]) -> None:
    for kind, item_id in made:
        ref = ItemRef(item_type, item_id)
        batch.handled.append(ref)
        batch.notices.append((kind, ref))
