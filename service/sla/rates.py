"""The month's SLA rates, from SQL aggregates (GROUP BY over the indexed queue columns).

Definitions (every rate is numerator / denominator; ``rate`` is null when the denominator is 0):

- **The month** is a calendar month in Asia/Shanghai, compared as UTC instants. An item belongs to the
  month that holds its deadline's day: a ``due_at`` is the end (24:00) of a day, so the month holds
  due_at in (00:00 on the 1st, 24:00 on its last day] — due at 24:00 on 31 October is October's,
  due at 24:00 on 30 September (= 00:00 on 1 October) is September's.
  An item without a ``due_at`` (an outgoing one still queued: the peer's receipt, which starts the
  clock, has not come back) is in no month.
- **协查信息反馈率** (``feedback_rate``), per side: the 协查 cases due in the month; the numerator is those
  whose reply was received (``reply_received_at``, the reply's receipt time, the same instant on both
  sides) at or before ``due_at``. A reply at the deadline exactly is on time; a late reply, or none
  (still open at month end), is not. ``incoming``: we answered; ``outgoing``: the peer answered us.
  By peer, topic and priority; ``key_target_feedback_rate`` (重点服务对象协查信息反馈率): key targets alone.
- **待办事宜处理率** (``processing_rate``), incoming only: 协查 cases we were asked (handled = answered as
  above) plus 通报 we received (handled = we acknowledged, ``acknowledged_at`` <= ``due_at``; the ack
  is enqueued at that instant) due in the month. By peer and by kind (``verification:<topic>``,
  ``notification:<kind>``).
- **信息发送接收率** (``send_receive_rate``): 通报 due in the month acknowledged by their deadline.
  ``outgoing`` (the rate the targets mean): ours, acknowledged when the peer's ack was received here
  (``ack_received_at`` <= ``due_at``); ``incoming``: the peers', acknowledged by us. By peer and kind;
  ``key_send_receive_rate`` (重点服务管理对象信息发送接收率): contraception and birth alone.
- **个案信息准确率** (``accuracy_rate``), per side: ``record_accuracy`` cases due in the month that have
  been answered (a reply received, on time or not); numerator: outcome ``confirmed``. By peer.
- **婚育证明查验率** (``check_rate``): ``service.certificates.rates.node_check_rate`` for the month's year
  up to the month's last day (year to date as of the end of the month), one row for the node.

Every figure of month M depends only on what happened by the end of M: a reply or ack after the month
is past every deadline in it, an answer received after it does not enter ``accuracy_rate``, and the
check rate stops at the month's end. So a report regenerated later reads the same.
"""

from __future__ import annotations

import re
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import Select, and_, case, func, literal, select
from sqlmodel import Session, col

from service.certificates.rates import node_check_rate
from service.clock import utcnow
from service.errors import ValidationFailed
from service.models import (
    CaseStatus,
    Direction,
    Notification,
    NotificationKind,
    NotificationStatus,
    Outcome,
    Topic,
    VerificationCase,
)
from service.sla.deadlines import SHANGHAI
from service.sla.schemas import METRIC_NAMES, Dimension, Metric, Rate, RateRow

MONTH = re.compile(r"^(\d{4})-(\d{2})$")
KEY_KINDS = (NotificationKind.contraception, NotificationKind.birth)
HEADLINES: tuple[tuple[Metric, str], ...] = (
    ("feedback_rate", "incoming"),
    ("feedback_rate", "outgoing"),
    ("key_target_feedback_rate", "incoming"),
    ("key_target_feedback_rate", "outgoing"),
    ("processing_rate", "incoming"),
    ("send_receive_rate", "incoming"),
    ("send_receive_rate", "outgoing"),
    ("key_send_receive_rate", "incoming"),
    ("key_send_receive_rate", "outgoing"),
    ("accuracy_rate", "incoming"),
    ("accuracy_rate", "outgoing"),
)


def parse_month(text: str) -> date:
    """``YYYY-MM`` → its first day; anything else is a 422 naming the field ``month``."""
    match = MONTH.match(text)
    if match is None or not 1 <= int(match[2]) <= 12 or not 2000 <= int(match[1]) <= 2100:
        raise ValidationFailed(
            "month must be YYYY-MM (2000-01 … 2100-12)",
            errors=[{"field": "month", "reason": "not a month in the form YYYY-MM"}],
        )
    return date(int(match[1]), int(match[2]), 1)


def next_month(first: date) -> date:
    return date(first.year + first.month // 12, first.month % 12 + 1, 1)


def month_bounds(first: date) -> tuple[datetime, datetime]:
    """00:00 on the 1st of the month and of the next month, Asia/Shanghai, as UTC instants."""
    start = datetime.combine(first, time(0), tzinfo=SHANGHAI).astimezone(UTC)
    end = datetime.combine(next_month(first), time(0), tzinfo=SHANGHAI).astimezone(UTC)
    return start, end


def require_complete(first: date, now: datetime | None = None) -> None:
    """Refuse the current or a future month: its rates would still change."""
    _, end = month_bounds(first)
    if (now or utcnow()) < end:
        raise ValidationFailed(
            f"month {first:%Y-%m} is not over yet in Asia/Shanghai; only a complete month has a report",
            errors=[{"field": "month", "reason": "the current or a future month"}],
        )


@dataclass
class _Count:
    numerator: int = 0
    denominator: int = 0

    def add(self, numerator: int, denominator: int) -> None:
        self.numerator += numerator
        self.denominator += denominator


class _Rows:
    """Roll grouped counts up into rows: each (metric, direction, dimension, value) one counter."""

    def __init__(self) -> None:
        self.counts: dict[tuple[Metric, str, Dimension, str], _Count] = defaultdict(_Count)
        for metric, direction in HEADLINES:  # always there, 0 / 0 in a quiet month
            self.counts[(metric, direction, "all", "")] = _Count()

    def add(
        self, metric: Metric, direction: str, groups: Iterable[tuple[Dimension, str]], num: int, den: int
    ) -> None:
        self.counts[(metric, direction, "all", "")].add(num, den)
        for dimension, value in groups:
            self.counts[(metric, direction, dimension, value)].add(num, den)

    def rows(self) -> list[RateRow]:
        out = []
        for (metric, direction, dimension, value), count in sorted(self.counts.items()):
            rate = Rate.of(count.numerator, count.denominator)
            out.append(
                RateRow(
                    metric=metric,
                    metric_name=METRIC_NAMES[metric],
                    direction=direction,
                    dimension=dimension,
                    value=value,
                    numerator=rate.numerator,
                    denominator=rate.denominator,
                    rate=rate.rate,
                )
            )
        return out


def case_counts_query(start: datetime, end: datetime) -> Select[tuple[Any, ...]]:
    c = VerificationCase
    on_time = and_(col(c.reply_received_at).is_not(None), col(c.reply_received_at) <= col(c.due_at))
    answered = and_(col(c.reply_received_at).is_not(None), col(c.reply_received_at) <= end)  # by month end
    query = (
        select(
            col(c.direction),
            col(c.peer),
            col(c.topic),
            col(c.priority),
            col(c.key_target),
            func.count(),
            func.sum(case((on_time, 1), else_=0)),
            func.sum(case((answered, 1), else_=0)),
            func.sum(case((and_(answered, col(c.outcome) == Outcome.confirmed), 1), else_=0)),
        )
        # Every direction and status named: the planner walks ix_case_queue (direction, status, due_at).
        .where(
            col(c.direction).in_(list(Direction)),
            col(c.status).in_(list(CaseStatus)),
            col(c.due_at) > start,
            col(c.due_at) <= end,
        )
        .group_by(col(c.direction), col(c.peer), col(c.topic), col(c.priority), col(c.key_target))
    )
    return query  # type: ignore[return-value]


def notification_counts_query(start: datetime, end: datetime) -> Select[tuple[Any, ...]]:
    n = Notification
    handled = case(
        (
            and_(col(n.direction) == Direction.incoming, col(n.acknowledged_at) <= col(n.due_at)),
            1,
        ),
        (
            and_(col(n.direction) == Direction.outgoing, col(n.ack_received_at) <= col(n.due_at)),
            1,
        ),
        else_=literal(0),
    )
    query = (
        select(col(n.direction), col(n.peer), col(n.kind), func.count(), func.sum(handled))
        .where(
            col(n.direction).in_(list(Direction)),
            col(n.status).in_(list(NotificationStatus)),
            col(n.due_at) > start,
            col(n.due_at) <= end,
        )
        .group_by(col(n.direction), col(n.peer), col(n.kind))
    )
    return query  # type: ignore[return-value]


def _counts(session: Session, query: Select[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    return [tuple(row) for row in session.execute(query).all()]


def month_rates(session: Session, first: date) -> list[RateRow]:
    """Every rate of the month, in a stable order (metric, direction, dimension, value)."""
    start, end = month_bounds(first)
    rows = _Rows()
    for direction, peer, topic, priority, key_target, total, on_time, answered, confirmed in _counts(
        session, case_counts_query(start, end)
    ):
        direction, topic, priority = str(direction), str(topic), str(priority)
        on_time, answered, confirmed = int(on_time or 0), int(answered or 0), int(confirmed or 0)
        groups: list[tuple[Dimension, str]] = [("peer", peer), ("topic", topic), ("priority", priority)]
        rows.add("feedback_rate", direction, groups, on_time, total)
        if key_target:
            key_groups: list[tuple[Dimension, str]] = [("peer", peer), ("priority", priority)]
            rows.add("key_target_feedback_rate", direction, key_groups, on_time, total)
        if direction == Direction.incoming:
            pending: list[tuple[Dimension, str]] = [("peer", peer), ("kind", f"verification:{topic}")]
            rows.add("processing_rate", direction, pending, on_time, total)
        if topic == Topic.record_accuracy:
            rows.add("accuracy_rate", direction, [("peer", peer)], confirmed, answered)
    for direction, peer, kind, total, handled in _counts(session, notification_counts_query(start, end)):
        direction, kind, handled = str(direction), str(kind), int(handled or 0)
        rows.add("send_receive_rate", direction, [("peer", peer), ("kind", kind)], handled, total)
        if kind in KEY_KINDS:
            rows.add("key_send_receive_rate", direction, [("peer", peer), ("kind", kind)], handled, total)
        if direction == Direction.incoming:
            to_ack: list[tuple[Dimension, str]] = [("peer", peer), ("kind", f"notification:{kind}")]
            rows.add("processing_rate", direction, to_ack, handled, total)
    check = node_check_rate(session, first.year, through=next_month(first) - timedelta(days=1))
    result = rows.rows()
    result.append(
        RateRow(
            metric="check_rate",
            metric_name=METRIC_NAMES["check_rate"],
            direction="node",
            dimension="year",
            value=str(first.year),
            numerator=check.numerator,
            denominator=check.denominator,
            rate=check.rate,
        )
    )
    return result
