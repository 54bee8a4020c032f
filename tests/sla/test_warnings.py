"""预警: constructed histories, an injected now, both backends (service/sla/warnings.py)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.db import make_engine, read_session
from service.migrations import upgrade
from service.models import (
    CaseStatus,
    Direction,
    EarlyWarning,
    ItemType,
    LocalNode,
    Notification,
    NotificationKind,
    NotificationStatus,
    Peer,
    Priority,
    Sex,
    Topic,
    VerificationCase,
)
from service.sla.deadlines import SHANGHAI
from service.sla.warnings import Policy, forecast, prediction_quality, record_warnings

NOW = datetime(2026, 6, 10, 10, 0, tzinfo=SHANGHAI).astimezone(UTC)  # injected: not the test clock
DAY = timedelta(days=1)
SLOW, FAST, HOST = "411627", "440106", "410105"
IN, OUT = Direction.incoming, Direction.outgoing


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (
        f"sqlite:///{tmp_path / 'node.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres").new_database()
    )
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session:
        session.add(LocalNode(node_id="410105", name="金水区", active_keyid="410105/k1"))
        session.add(Peer(node_id=SLOW, name="太康县", url="http://127.0.0.1:1"))
        session.add(Peer(node_id=FAST, name="天河区", url="http://127.0.0.1:2"))
        session.commit()
    yield engine
    engine.dispose()


def case(
    direction: Direction,
    received: datetime,
    took: float | None = None,
    *,
    peer: str = SLOW,
    days: int = 30,
    status: CaseStatus | None = None,
    priority: Priority = Priority.normal,
    topic: Topic = Topic.marital_status,
) -> VerificationCase:
    """A 协查 received at ``received``, due ``days`` later, answered after ``took`` days (None: open)."""
    answered = received + took * DAY if took is not None else None
    if status is None:
        if answered is not None:
            status = CaseStatus.answered
        else:
            status = CaseStatus.acknowledged
    return VerificationCase(
        request_message_id=str(uuid.uuid4()),
        direction=direction,
        peer=peer,
        status=status,
        subject_id_number="41162719900308002X",
        subject_name="王秀英",
        subject_sex=Sex.F,
        subject_birth_date=date(1990, 3, 8),
        topic=topic,
        priority=priority,
        key_target=False,
        question="?",
        sent_at=received,
        received_at=received,
        due_at=received + days * DAY,
        acknowledged_at=received if status != CaseStatus.received else None,
        answered_at=answered,
        reply_received_at=answered,
    )


def notification(
    direction: Direction, received: datetime, took: float | None, days: int = 30
) -> Notification:
    acked = received + took * DAY if took is not None else None
    done = acked is not None
    return Notification(
        message_id=str(uuid.uuid4()),
        direction=direction,
        peer=SLOW,
        kind=NotificationKind.arrival,
        status=NotificationStatus.acknowledged if done else NotificationStatus.received,
        subject_id_number="41162719900308002X",
        subject_name="王秀英",
        subject_sex=Sex.F,
        subject_birth_date=date(1990, 3, 8),
        occurred_on=date(2026, 1, 1),
        details="{}",
        sent_at=received,
        received_at=received,
        due_at=received + days * DAY,
        acknowledged_at=acked,
        ack_received_at=acked,
    )


def add(engine: Engine, *rows: object) -> list[int]:
    with Session(engine, expire_on_commit=False) as session:
        session.add_all(rows)
        session.commit()
        return [getattr(row, "id") for row in rows]  # noqa: B009


def history(peer: str, durations: list[float], direction: Direction = OUT) -> list[VerificationCase]:
    """Past normal 协查 (30 days), received 40–160 days ago, each answered after its duration."""
    return [case(direction, NOW - (40 + 10 * i) * DAY, took, peer=peer) for i, took in enumerate(durations)]


def flagged_ids(engine: Engine, now: datetime = NOW, policy: Policy | None = None) -> dict[int, str]:
    with read_session(engine) as session:
        outlook = forecast(session, now, policy)
    return {f.item_id: f.reason for f in outlook.flagged if f.item_type == ItemType.verification}


def test_a_slow_peer_is_chased_at_once_and_a_fast_one_only_when_it_is_late_for_it(engine: Engine) -> None:
    # 太康县 answered 12 normal 协查 in 20–42 days (4 of 12 within 30); 天河区 all within 2–6 days.
    add(engine, *history(SLOW, [20, 24, 26, 29, 31, 33, 35, 36, 38, 40, 41, 42]))
    add(engine, *history(FAST, [2, 2.5, 3, 3, 3.5, 4, 4, 4.5, 5, 5, 5.5, 6]))
    slow_new, fast_new, fast_waiting = add(
        engine,
        case(OUT, NOW - 1 * DAY, peer=SLOW),  # a day old, 29 days left
        case(OUT, NOW - 1 * DAY, peer=FAST),
        case(OUT, NOW - 8 * DAY, peer=FAST),  # 8 days without an answer: longer than 天河区 ever took
    )
    flagged = flagged_ids(engine)
    assert slow_new in flagged
    assert flagged[slow_new] == (
        "太康县过去 180 天内 12 件普通协查中 4 件（33%）在收到后 30 天内反馈；此件剩 29 天。"
    )
    assert fast_new not in flagged
    assert fast_waiting in flagged
    slower = "天河区过去 180 天内 12 件普通协查都在收到后 8 天内反馈，此件已比以往同类件都慢"
    assert slower in flagged[fast_waiting]


def test_the_estimate_is_conditional_on_the_age_of_the_item(engine: Engine) -> None:
    # 10 of 12 answered within 5 days, 2 late (never answered): a fresh item is fine (83%), one that
    # has waited 6 days is among the 2 slow ones: 0 of 2 were in time.
    add(engine, *history(SLOW, [1, 1, 2, 2, 2, 3, 3, 4, 4, 5]))
    add(engine, *[case(OUT, NOW - (50 + i) * DAY, None, peer=SLOW) for i in range(2)])  # overdue, open
    fresh, waited = add(engine, case(OUT, NOW - 0.5 * DAY), case(OUT, NOW - 6 * DAY))
    with read_session(engine) as session:
        outlook = forecast(session, NOW)
    flagged = {f.item_id: f for f in outlook.flagged}
    assert fresh not in flagged
    assert flagged[waited].probability == 0.0
    assert "收到后 6 天仍未反馈的 2 件里，0 件（0%）在收到后 30 天内反馈" in flagged[waited].reason


def test_too_little_history_is_said_instead_of_predicted(engine: Engine) -> None:
    add(engine, *history(SLOW, [40, 40, 40]))  # 3 late items only
    (item,) = add(engine, case(OUT, NOW - DAY))
    with read_session(engine) as session:
        outlook = forecast(session, NOW)
    assert not outlook.flagged
    (unpredicted,) = outlook.unpredicted
    assert unpredicted.item_id == item
    assert unpredicted.probability is None
    assert "仅有 3 件普通协查（少于 10 件），历史不足，不作概率预测" in unpredicted.reason


def test_an_unacknowledged_incoming_case_with_little_time_left_is_flagged(engine: Engine) -> None:
    urgent, acknowledged = add(
        engine,
        case(IN, NOW - 13 * DAY, days=15, status=CaseStatus.received, priority=Priority.urgent, peer=HOST),
        case(IN, NOW - 13 * DAY, days=15, priority=Priority.urgent, peer=HOST),  # 签收 already
    )
    flagged = flagged_ids(engine)
    assert flagged[urgent].endswith("此件剩 2 天且尚未签收。")
    assert "本节点过去 180 天内仅有 0 件紧急协查" in flagged[urgent]
    assert acknowledged not in flagged


def test_a_long_queue_ahead_flags_an_incoming_item(engine: Engine) -> None:
    # The node answered 15 incoming 协查 in the last 30 days (0.5 a day), each in 3 days, all on time.
    done = [case(IN, NOW - (5 + 1.5 * i) * DAY, 3, peer=HOST) for i in range(15)]
    add(engine, *done)
    # 6 open ones due within 4 days, then this one due in 5 days: 12 days of work ahead of it.
    ahead = [case(IN, NOW - (26 + i * 0.1) * DAY, peer=HOST) for i in range(6)]
    add(engine, *ahead)
    (item,) = add(engine, case(IN, NOW - 25 * DAY, peer=HOST))
    flagged = flagged_ids(engine)
    queue = "本节点还有 6 件更早到期的待办协查，按近 30 天日均办结 0.5 件计约需 12 天，多于此件剩余的 5 天"
    assert queue in flagged[item]


def test_notifications_are_predicted_from_their_acknowledgements(engine: Engine) -> None:
    add(engine, *[notification(IN, NOW - (40 + i) * DAY, 35) for i in range(10)])  # all acked late
    (item,) = add(engine, notification(IN, NOW - DAY, None))
    with read_session(engine) as session:
        outlook = forecast(session, NOW)
    (flagged,) = outlook.flagged
    assert (flagged.item_type, flagged.item_id) == (ItemType.notification, item)
    assert flagged.reason.startswith("本节点过去 180 天内 10 件流入通报中 0 件（0%）在收到后 30 天内确认接收")


def test_warnings_are_recorded_once_with_their_first_raising(engine: Engine) -> None:
    add(engine, *history(SLOW, [40] * 12))
    (item,) = add(engine, case(OUT, NOW - DAY))
    with read_session(engine) as session:
        first = forecast(session, NOW)
    assert record_warnings(engine, NOW, first.flagged) == 1
    with read_session(engine) as session:
        again = forecast(session, NOW + DAY)
    assert record_warnings(engine, NOW + DAY, again.flagged) == 0
    with Session(engine) as session:
        (row,) = session.exec(select(EarlyWarning)).all()
    assert (row.item_type, row.item_id, row.raised_at) == (ItemType.verification, item, NOW)
    assert row.probability == 0.0
    assert row.reason.startswith("太康县过去 180 天内 12 件普通协查中 0 件（0%）")


def test_precision_and_recall_of_a_month(engine: Engine) -> None:
    may = datetime(2026, 5, 1, tzinfo=SHANGHAI).astimezone(UTC)
    received = may - 10 * DAY  # due 20 May (30 days)
    late_warned, _late_missed, on_time_warned, _on_time, late_warned_too_late, _june = add(
        engine,
        case(OUT, received, None),  # never answered
        case(OUT, received, 35),  # answered late
        case(OUT, received, 10),
        case(IN, received, 5, peer=HOST),
        case(IN, received, 31, peer=HOST),
        case(IN, received + 30 * DAY, None, peer=HOST),  # due in June: not May's
    )
    late_notification, _ = add(engine, notification(IN, received, None), notification(OUT, received, 3))
    rows = [
        EarlyWarning(
            item_type=item_type,
            item_id=item_id,
            direction=direction,
            due_at=received + 30 * DAY,
            raised_at=raised_at,
            reason="…",
            probability=0.5,
        )
        for item_type, item_id, direction, raised_at in (
            (ItemType.verification, late_warned, OUT, received + 5 * DAY),
            (ItemType.verification, on_time_warned, OUT, received + 2 * DAY),
            (ItemType.verification, late_warned_too_late, IN, received + 31 * DAY),  # after the deadline
            (ItemType.notification, late_notification, IN, received + 20 * DAY),
        )
    ]
    add(engine, *rows)
    with read_session(engine) as session:
        quality = prediction_quality(session, date(2026, 5, 1))
    incoming, outgoing, total = quality.rows
    assert (incoming.items, incoming.late, incoming.flagged, incoming.hits) == (3, 2, 1, 1)
    assert (outgoing.items, outgoing.late, outgoing.flagged, outgoing.hits) == (4, 2, 2, 1)
    assert (total.items, total.late, total.flagged, total.hits) == (7, 4, 3, 2)
    assert (total.precision.numerator, total.precision.denominator) == (2, 3)
    assert (total.recall.numerator, total.recall.denominator) == (2, 4)
    assert total.recall.rate == 0.5
    assert quality.month == "2026-05"
