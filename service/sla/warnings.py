"""预警 (early warning): open items likely to miss their deadline, flagged days ahead.

Plain functions over a session and an injected ``now`` (no HTTP); the console's 预警 page and the
scheduler's sweep call them.

**History.** For each open item, the past items of its group: for an incoming item (we owe the
answer) this node's own past items of the same type and class, for an outgoing one (the peer owes
it) that peer's past items. The classes follow the deadline rules: a 协查 is 普通 (normal), 紧急
(urgent) or 婚育证明不一致 (certificate_discrepancy, its own deadline); a 通报 its kind. A past item
is one with a deadline within the last ``window_days`` or already done; its duration ``D`` is
received → done (the reply's receipt for a 协查, the 接收确认 for a 通报) in calendar days, or
infinite when it is still not done past its deadline. Items still open before their deadline are
left out (their duration is not known yet).

**The estimate.** For an open item received ``e`` days ago and due ``a`` days after receipt: of the
past items of its group that took longer than ``e`` (those still open at its age), the share done
within ``a``. Conditioning on the age is what flags an item days ahead: a fresh item of a fast
group is fine, the same item still waiting at an age when the group is normally done is not.
A group with fewer than ``min_history`` past items gets no estimate (we say so instead).

**Flagged** when any of: the estimate is below ``threshold``; an incoming item has more open
items of its type ahead of it (earlier deadlines) than this node's recent pace (done per day over
``pace_days``) clears in its time left (the queue is a signal of its own, not folded into the
estimate, because the past durations already hold the node's usual queueing); a 协查 not yet 签收
(a 通报 not yet confirmed) with at most ``little_days`` left.

**Recorded.** ``record_warnings`` stores each flagged item once (``early_warning``, the first
raising kept) — the scheduler's sweep does it every few minutes — and ``prediction_quality``
compares a month's warnings with the items of that month that were actually late (the same month
membership and lateness as the SLA rates: due in the month, not done by the deadline).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any

from sqlalchemy import and_, case, func, or_, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, col

from service import names
from service.clock import utcnow
from service.db import read_session, transaction
from service.directory.service import peer_names
from service.models import (
    CaseStatus,
    Direction,
    EarlyWarning,
    ItemType,
    Notification,
    NotificationStatus,
    Topic,
    VerificationCase,
)
from service.sla.rates import month_bounds
from service.sla.schemas import Rate

log = logging.getLogger(__name__)
WARNINGS = SQLModel.metadata.tables[EarlyWarning.__tablename__]
DAY = timedelta(days=1)
BATCH = 500

TOPIC_NAMES = names.TOPICS
PRIORITY_NAMES = names.PRIORITIES
KIND_NAMES = names.KINDS
ITEM_NAMES = {ItemType.verification: "协查", ItemType.notification: "通报"}
DIRECTION_NAMES = {Direction.incoming: "待我方办理", Direction.outgoing: "待对方办理"}
OPEN = {
    (ItemType.verification, Direction.incoming): (CaseStatus.received, CaseStatus.acknowledged),
    (ItemType.verification, Direction.outgoing): (CaseStatus.delivered, CaseStatus.acknowledged),
    (ItemType.notification, Direction.incoming): (NotificationStatus.received,),
    (ItemType.notification, Direction.outgoing): (NotificationStatus.delivered,),
}
NOT_ACKNOWLEDGED = {CaseStatus.received, CaseStatus.delivered}  # 协查 not yet 签收 (either side)


@dataclass(frozen=True)
class Policy:
    """How far back to look and when to flag (defaults: 180 days, below 80%, at least 10 past items)."""

    window_days: int = 180
    threshold: float = 0.8
    min_history: int = 10
    little_days: float = 3.0  # "little time left" for an item not yet 签收
    pace_days: int = 30  # the recent pace of this node, for its queue


def group_of_case(topic: str, priority: str) -> str:
    if topic == Topic.certificate_discrepancy:
        return "verification:discrepancy"
    return f"verification:{priority}"


def group_label(group: str) -> str:
    """The group's Chinese name: 普通协查, 紧急协查, 婚育证明不一致协查, 生育通报 …"""
    item_type, _, klass = group.partition(":")
    if item_type == ItemType.verification:
        if klass == "discrepancy":
            return "婚育证明不一致协查"
        return f"{PRIORITY_NAMES.get(klass, klass)}协查"
    return f"{KIND_NAMES.get(klass, klass)}通报"


@dataclass(frozen=True)
class Item:
    """What the estimate needs of one 协查 or 通报, either direction, open or past."""

    item_type: ItemType
    item_id: int
    direction: Direction
    peer: str
    group: str
    status: str
    received_at: datetime
    due_at: datetime
    done_at: datetime | None

    @property
    def key(self) -> tuple[str, str, str]:
        """Whose history predicts it: this node's own (incoming) or the peer's (outgoing)."""
        who = self.peer if self.direction == Direction.outgoing else ""
        return (self.direction.value, self.group, who)


@dataclass(frozen=True)
class Forecast:
    """One open item's estimate, whether it is flagged and why (in Chinese, numbers from the data)."""

    item_type: ItemType
    item_id: int
    direction: Direction
    peer: str
    peer_name: str
    label: str
    status: str
    received_at: datetime
    due_at: datetime
    remaining_days: float
    probability: float | None  # the chance of being on time; None: too little history
    history: int  # past items of its group
    flagged: bool
    reasons: tuple[str, ...]

    @property
    def reason(self) -> str:
        return "；".join(self.reasons) + "。"


@dataclass
class Outlook:
    """Every open item looked at now: the flagged ones, and those with too little history."""

    now: datetime
    policy: Policy
    checked: int = 0
    flagged: list[Forecast] = field(default_factory=list)
    unpredicted: list[Forecast] = field(default_factory=list)  # not flagged, too little history


def _days(delta: timedelta) -> float:
    return delta / DAY


def fmt_days(days: float) -> str:
    """3 → "3 天", 7.58 → "7.6 天", 0.4 → "不足 1 天"."""
    if math.isinf(days):
        return "无限期"
    if days < 1:
        return "不足 1 天"
    text = f"{days:.1f}".removesuffix(".0")
    return f"{text} 天"


def _case_item(row: Any) -> Item:
    item_id, direction, peer, status, topic, priority, received, due, answered, reply = row
    return Item(
        ItemType.verification,
        item_id,
        Direction(direction),
        peer,
        group_of_case(topic, priority),
        str(status),
        received,
        due,
        reply or answered if status == CaseStatus.answered else None,
    )


def _notification_item(row: Any) -> Item:
    item_id, direction, peer, status, kind, received, due, acknowledged, ack_received = row
    done = acknowledged if direction == Direction.incoming else ack_received
    if status != NotificationStatus.acknowledged:
        done = None
    return Item(
        ItemType.notification,
        item_id,
        Direction(direction),
        peer,
        f"notification:{kind}",
        str(status),
        received,
        due,
        done,
    )


def _case_rows(session: Session, *where: Any) -> list[Item]:
    c = VerificationCase
    query = select(
        col(c.id),
        col(c.direction),
        col(c.peer),
        col(c.status),
        col(c.topic),
        col(c.priority),
        col(c.received_at),
        col(c.due_at),
        col(c.answered_at),
        col(c.reply_received_at),
    ).where(col(c.received_at).is_not(None), *where)
    return [_case_item(row) for row in session.execute(query).all()]


def _notification_rows(session: Session, *where: Any) -> list[Item]:
    n = Notification
    query = select(
        col(n.id),
        col(n.direction),
        col(n.peer),
        col(n.status),
        col(n.kind),
        col(n.received_at),
        col(n.due_at),
        col(n.acknowledged_at),
        col(n.ack_received_at),
    ).where(col(n.received_at).is_not(None), *where)
    return [_notification_item(row) for row in session.execute(query).all()]


def _open_items(session: Session, now: datetime) -> list[Item]:
    """Open items before their deadline (an overdue one is late already: the SLA sweep's business)."""
    items: list[Item] = []
    for (item_type, direction), statuses in OPEN.items():
        table = VerificationCase if item_type == ItemType.verification else Notification
        where = (
            col(table.direction) == direction,
            col(table.status).in_(list(statuses)),
            col(table.due_at) >= now,
        )
        rows = _case_rows if item_type == ItemType.verification else _notification_rows
        items += rows(session, *where)
    return items


def _past_items(session: Session, now: datetime, policy: Policy) -> list[Item]:
    """Items due within the window or later (the index on direction, status, due_at), then the past
    ones kept: done, or not done past their deadline."""
    since = now - policy.window_days * DAY
    items: list[Item] = []
    for table, statuses, rows in (
        (VerificationCase, list(CaseStatus), _case_rows),
        (Notification, list(NotificationStatus), _notification_rows),
    ):
        where = (
            col(table.direction).in_(list(Direction)),
            col(table.status).in_(statuses),
            col(table.due_at) >= since,
        )
        items += rows(session, *where)
    return [
        item
        for item in items
        if (item.done_at is not None and item.done_at <= now) or (item.done_at is None and item.due_at < now)
    ]


def _durations(past: Iterable[Item]) -> dict[tuple[str, str, str], list[float]]:
    groups: dict[tuple[str, str, str], list[float]] = defaultdict(list)
    for item in past:
        duration = _days(item.done_at - item.received_at) if item.done_at is not None else math.inf
        groups[item.key].append(duration)
    for durations in groups.values():
        durations.sort()
    return groups


def _paces(past: Iterable[Item], now: datetime, policy: Policy) -> dict[ItemType, float]:
    """Incoming items this node finished per day, over the last ``pace_days``, by type."""
    since = now - policy.pace_days * DAY
    done: dict[ItemType, int] = defaultdict(int)
    for item in past:
        if item.direction == Direction.incoming and item.done_at is not None and item.done_at > since:
            done[item.item_type] += 1
    return {item_type: count / policy.pace_days for item_type, count in done.items()}


def forecast(session: Session, now: datetime, policy: Policy | None = None) -> Outlook:
    """Every open item's estimate at ``now`` (reads only)."""
    policy = policy or Policy()
    past = _past_items(session, now, policy)
    groups = _durations(past)
    paces = _paces(past, now, policy)
    names = peer_names(session)
    items = sorted(_open_items(session, now), key=lambda i: (i.due_at, i.item_id))
    ahead: dict[ItemType, int] = defaultdict(int)  # open incoming items of the type due earlier
    outlook = Outlook(now=now, policy=policy)
    for item in items:
        waiting = ahead[item.item_type] if item.direction == Direction.incoming else 0
        if item.direction == Direction.incoming:
            ahead[item.item_type] += 1
        result = _estimate(item, groups.get(item.key, []), waiting, paces, names, now, policy)
        outlook.checked += 1
        if result.flagged:
            outlook.flagged.append(result)
        elif result.probability is None:
            outlook.unpredicted.append(result)
    outlook.flagged.sort(key=lambda f: (f.probability if f.probability is not None else 1.0, f.due_at))
    return outlook


def _estimate(
    item: Item,
    durations: Sequence[float],
    waiting: int,
    paces: dict[ItemType, float],
    names: dict[str, str],
    now: datetime,
    policy: Policy,
) -> Forecast:
    incoming = item.direction == Direction.incoming
    who = "本节点" if incoming else names.get(item.peer, item.peer)
    label = group_label(item.group)
    verb = "反馈" if item.item_type == ItemType.verification else "确认接收"
    elapsed = max(0.0, _days(now - item.received_at))
    allowed = _days(item.due_at - item.received_at)
    remaining = _days(item.due_at - now)
    window = f"过去 {policy.window_days} 天内"
    n = len(durations)
    reasons: list[str] = []
    probability: float | None = None
    flagged = False
    if n < policy.min_history:
        reasons.append(
            f"{who}{window}仅有 {n} 件{label}（少于 {policy.min_history} 件），历史不足，不作概率预测"
        )
    else:
        start = bisect.bisect_right(durations, elapsed)  # the past items still open at this age
        still_open = n - start
        within = bisect.bisect_right(durations, allowed) - start
        probability = within / still_open if still_open else 0.0
        flagged = probability < policy.threshold
        if still_open == n:
            reasons.append(
                f"{who}{window} {n} 件{label}中 {within} 件（{probability:.0%}）"
                f"在收到后 {fmt_days(allowed)}内{verb}"
            )
        elif still_open:
            reasons.append(
                f"{who}{window} {n} 件{label}中，收到后 {fmt_days(elapsed)}仍未{verb}的 {still_open} 件里，"
                f"{within} 件（{probability:.0%}）在收到后 {fmt_days(allowed)}内{verb}"
            )
        else:
            reasons.append(
                f"{who}{window} {n} 件{label}都在收到后 {fmt_days(elapsed)}内{verb}，此件已比以往同类件都慢"
            )
    pace = paces.get(item.item_type, 0.0)
    if incoming and waiting and pace > 0 and waiting / pace > remaining:
        flagged = True
        reasons.append(
            f"本节点还有 {waiting} 件更早到期的待办{ITEM_NAMES[item.item_type]}，按近 {policy.pace_days} 天"
            f"日均办结 {pace:.1f} 件计约需 {fmt_days(waiting / pace)}，多于此件剩余的 {fmt_days(remaining)}"
        )
    unacknowledged = item.status in NOT_ACKNOWLEDGED or item.item_type == ItemType.notification
    status = f"此件剩 {fmt_days(remaining)}"
    if item.item_type == ItemType.verification and item.status in NOT_ACKNOWLEDGED:
        status += "且尚未签收" if incoming else "且对方尚未签收"
    if unacknowledged and remaining <= policy.little_days:
        flagged = True
    reasons.append(status)
    return Forecast(
        item_type=item.item_type,
        item_id=item.item_id,
        direction=item.direction,
        peer=item.peer,
        peer_name=names.get(item.peer, item.peer),
        label=label,
        status=item.status,
        received_at=item.received_at,
        due_at=item.due_at,
        remaining_days=remaining,
        probability=probability,
        history=n,
        flagged=flagged,
        reasons=tuple(reasons),
    )


def record_warnings(on: Engine | Session | None, now: datetime, flagged: Sequence[Forecast]) -> int:
    """Store each flagged item once (its first raising is kept), in short transactions of at most
    ``BATCH`` rows; returns how many were new."""
    made = 0
    for start in range(0, len(flagged), BATCH):
        rows = [
            {
                "item_type": f.item_type,
                "item_id": f.item_id,
                "direction": f.direction,
                "due_at": f.due_at,
                "raised_at": now,
                "reason": f.reason,
                "probability": f.probability,
            }
            for f in flagged[start : start + BATCH]
        ]
        with transaction(on) as tx:
            insert = pg_insert if tx.get_bind().dialect.name == "postgresql" else sqlite_insert
            statement = (
                insert(WARNINGS)
                .values(rows)
                .on_conflict_do_nothing(index_elements=["item_type", "item_id"])
                .returning(WARNINGS.c.id)
            )
            made += len(tx.connection().execute(statement).all())
    return made


def raised(session: Session, items: Iterable[tuple[ItemType, int]]) -> dict[tuple[ItemType, int], datetime]:
    """When each of ``items`` was first flagged (those recorded)."""
    wanted = list(items)
    found: dict[tuple[ItemType, int], datetime] = {}
    for item_type in ItemType:
        ids = [item_id for t, item_id in wanted if t == item_type]
        for start in range(0, len(ids), BATCH):
            query = select(col(EarlyWarning.item_id), col(EarlyWarning.raised_at)).where(
                col(EarlyWarning.item_type) == item_type,
                col(EarlyWarning.item_id).in_(ids[start : start + BATCH]),
            )
            for item_id, at in session.execute(query).all():
                found[(item_type, item_id)] = at
    return found


def early_warning_job(policy: Policy | None = None) -> None:
    """The scheduler's sweep: estimate while reading, then record the new warnings."""
    now = utcnow()
    with read_session() as session:
        outlook = forecast(session, now, policy)
    made = record_warnings(None, now, outlook.flagged)
    if made:
        log.info("early warnings raised=%d open_checked=%d", made, outlook.checked)


@dataclass(frozen=True)
class QualityRow:
    """A month's warnings against its late items, for one side (or both: ``direction`` None)."""

    direction: Direction | None
    items: int  # due in the month
    late: int  # not done by the deadline
    flagged: int  # warned before the deadline
    hits: int  # warned and late

    @property
    def precision(self) -> Rate:
        return Rate.of(self.hits, self.flagged)

    @property
    def recall(self) -> Rate:
        return Rate.of(self.hits, self.late)

    @property
    def name(self) -> str:
        return DIRECTION_NAMES[self.direction] if self.direction is not None else "合计"


@dataclass(frozen=True)
class Quality:
    month: str
    rows: list[QualityRow]

    @property
    def total(self) -> QualityRow:
        return self.rows[-1]


def prediction_quality(session: Session, first: date) -> Quality:
    """How well the warnings predicted the late items due in the month of ``first``.

    Recall = warned late items / late items; precision = warned items that were late / warned items.
    An item counts as warned when it was flagged before its deadline."""
    start, end = month_bounds(first)
    counts: dict[Direction, list[int]] = {d: [0, 0, 0, 0] for d in Direction}
    w = EarlyWarning
    c, n = VerificationCase, Notification
    on_time_case = and_(col(c.reply_received_at).is_not(None), col(c.reply_received_at) <= col(c.due_at))
    on_time_notification = or_(
        and_(col(n.direction) == Direction.incoming, col(n.acknowledged_at) <= col(n.due_at)),
        and_(col(n.direction) == Direction.outgoing, col(n.ack_received_at) <= col(n.due_at)),
    )
    for table, item_type, on_time in (
        (c, ItemType.verification, on_time_case),
        (n, ItemType.notification, on_time_notification),
    ):
        late = case((on_time, 0), else_=1)
        warned = case((col(w.id).is_not(None), 1), else_=0)
        query = (
            select(
                col(table.direction),
                func.count(),
                func.sum(late),
                func.sum(warned),
                func.sum(case((col(w.id).is_not(None), late), else_=0)),
            )
            .select_from(table)
            .outerjoin(
                w,
                and_(
                    col(w.item_type) == item_type,
                    col(w.item_id) == col(table.id),
                    col(w.raised_at) <= col(table.due_at),
                ),
            )
            .where(col(table.due_at) > start, col(table.due_at) <= end)
            .group_by(col(table.direction))
        )
        for direction, total, late_count, warned_count, hits in session.execute(query).all():
            row = counts[Direction(direction)]
            for i, value in enumerate((total, late_count, warned_count, hits)):
                row[i] += int(value or 0)
    rows = [QualityRow(d, *counts[d]) for d in (Direction.incoming, Direction.outgoing)]
    rows.append(QualityRow(None, *(sum(r[i] for r in counts.values()) for i in range(4))))
    return Quality(month=f"{first:%Y-%m}", rows=rows)
