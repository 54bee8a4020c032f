"""The month's rates against a hand-computed table (October 2026, Asia/Shanghai), both backends."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.clock import clock
from service.db import make_engine
from service.migrations import upgrade
from service.models import (
    CaseStatus,
    Direction,
    LocalNode,
    Notification,
    NotificationKind,
    NotificationStatus,
    Outcome,
    Priority,
    Sex,
    Topic,
    VerificationCase,
)
from service.sla.deadlines import SHANGHAI, DeadlineRule, due_at
from service.sla.rates import month_rates
from service.sla.schemas import RateRow

PEER, OTHER = "411627", "440106"
SECOND = timedelta(seconds=1)


def sh(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI).astimezone(UTC)


def end_of(day: str) -> datetime:
    """24:00 of that Shanghai day: how every due_at is set."""
    return sh(day) + timedelta(days=1)


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
        session.commit()
    yield engine
    engine.dispose()


def case(
    direction: Direction,
    due: datetime | None,
    reply: datetime | None = None,
    *,
    peer: str = PEER,
    topic: Topic = Topic.marital_status,
    priority: Priority = Priority.normal,
    key: bool = False,
    outcome: Outcome | None = None,
) -> VerificationCase:
    if reply is not None:
        status = CaseStatus.answered
    elif due is None:
        status = CaseStatus.queued
    else:
        status = CaseStatus.acknowledged if direction is Direction.incoming else CaseStatus.delivered
    received = due - timedelta(days=30) if due is not None else None
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
        key_target=key,
        question="?",
        sent_at=received or sh("2026-10-30 09:00"),
        received_at=received,
        due_at=due,
        answered_at=reply,
        reply_received_at=reply,
        outcome=outcome if reply is not None else None,
    )


def notice(
    direction: Direction,
    kind: NotificationKind,
    due: datetime,
    *,
    acknowledged: datetime | None = None,
    ack_received: datetime | None = None,
) -> Notification:
    done = acknowledged is not None
    return Notification(
        message_id=str(uuid.uuid4()),
        direction=direction,
        peer=PEER,
        kind=kind,
        status=NotificationStatus.acknowledged if done else NotificationStatus.received,
        subject_id_number="41162719900308002X",
        subject_name="王秀英",
        subject_sex=Sex.F,
        subject_birth_date=date(1990, 3, 8),
        occurred_on=date(2026, 9, 1),
        details="{}",
        sent_at=due - timedelta(days=30),
        received_at=due - timedelta(days=30),
        due_at=due,
        acknowledged_at=acknowledged,
        ack_received_at=ack_received,
    )


IN, OUT = Direction.incoming, Direction.outgoing
# F: received Monday 28 September, 3 working days: 29 and 30 September, then the National Day
# holiday (1–7 October), so the 3rd working day is Thursday 8 October — not 1 October.
F_DUE = due_at(sh("2026-09-28 10:00"), DeadlineRule(days=3, unit="working"))


def traffic() -> list[Any]:
    return [
        # A: the reply's receipt exactly at the deadline: on time.
        case(IN, end_of("2026-10-10"), end_of("2026-10-10"), priority=Priority.urgent, key=True),
        # B: one second late.
        case(IN, end_of("2026-10-20"), end_of("2026-10-20") + SECOND, topic=Topic.contraception),
        # C: due at 24:00 on 31 October (00:00 1 November in Shanghai) and still open: October's, late.
        case(IN, end_of("2026-10-31"), key=True),
        # D: due at 24:00 on 30 September (= 00:00 1 October, Shanghai): September's, not October's.
        case(IN, end_of("2026-09-30"), sh("2026-09-29 10:00")),
        # E: 20:00 UTC on 31 October is 04:00 on 1 November in Shanghai: November's (UTC would say October).
        case(IN, datetime(2026, 10, 31, 20, 0, tzinfo=UTC)),
        # F: the working-day deadline over the holiday, answered on 8 October: on time.
        case(
            IN,
            F_DUE,
            sh("2026-10-08 15:00"),
            peer=OTHER,
            topic=Topic.record_accuracy,
            outcome=Outcome.confirmed,
        ),
        # G: answered late, not confirmed.
        case(
            IN,
            end_of("2026-10-15"),
            sh("2026-10-16 09:00"),
            peer=OTHER,
            topic=Topic.record_accuracy,
            outcome=Outcome.not_confirmed,
        ),
        # H, I: the peer answered us on time; J: still queued, no deadline yet: in no month.
        case(OUT, end_of("2026-10-05"), sh("2026-10-03 11:00"), key=True),
        case(
            OUT,
            end_of("2026-10-25"),
            sh("2026-10-25 12:00"),
            topic=Topic.record_accuracy,
            outcome=Outcome.confirmed,
        ),
        case(OUT, None),
        # N1: acknowledged by us in time; N2: never acknowledged.
        notice(IN, NotificationKind.contraception, end_of("2026-10-12"), acknowledged=sh("2026-10-11 09:00")),
        notice(IN, NotificationKind.arrival, end_of("2026-10-31")),
        # N3: the ack's receipt exactly at the deadline; N4: acked (by the peer's clock) in time, received
        # late: late; N5: on time; N6: due in November.
        notice(
            OUT,
            NotificationKind.birth,
            end_of("2026-10-20"),
            acknowledged=sh("2026-10-20 20:00"),
            ack_received=end_of("2026-10-20"),
        ),
        notice(
            OUT,
            NotificationKind.contraception,
            end_of("2026-10-22"),
            acknowledged=sh("2026-10-22 10:00"),
            ack_received=sh("2026-10-23 09:00"),
        ),
        notice(
            OUT,
            NotificationKind.health_check,
            end_of("2026-10-09"),
            acknowledged=sh("2026-10-02 10:00"),
            ack_received=sh("2026-10-02 10:00"),
        ),
        notice(OUT, NotificationKind.birth, end_of("2026-11-02")),
    ]


# (metric, direction, dimension, value): (numerator, denominator), worked out by hand above.
EXPECTED = {
    ("feedback_rate", "incoming", "all", ""): (2, 5),  # A F of A B C F G
    ("feedback_rate", "incoming", "peer", PEER): (1, 3),  # A of A B C
    ("feedback_rate", "incoming", "peer", OTHER): (1, 2),  # F of F G
    ("feedback_rate", "incoming", "topic", "marital_status"): (1, 2),  # A of A C
    ("feedback_rate", "incoming", "topic", "contraception"): (0, 1),
    ("feedback_rate", "incoming", "topic", "record_accuracy"): (1, 2),
    ("feedback_rate", "incoming", "priority", "urgent"): (1, 1),
    ("feedback_rate", "incoming", "priority", "normal"): (1, 4),  # F of B C F G
    ("feedback_rate", "outgoing", "all", ""): (2, 2),  # H I
    ("key_target_feedback_rate", "incoming", "all", ""): (1, 2),  # A of A C
    ("key_target_feedback_rate", "outgoing", "all", ""): (1, 1),  # H
    ("processing_rate", "incoming", "all", ""): (3, 7),  # A F N1 of A B C F G N1 N2
    ("processing_rate", "incoming", "kind", "notification:contraception"): (1, 1),
    ("processing_rate", "incoming", "kind", "notification:arrival"): (0, 1),
    ("processing_rate", "incoming", "kind", "verification:marital_status"): (1, 2),
    ("send_receive_rate", "outgoing", "all", ""): (2, 3),  # N3 N5 of N3 N4 N5
    ("send_receive_rate", "outgoing", "kind", "birth"): (1, 1),
    ("send_receive_rate", "outgoing", "kind", "contraception"): (0, 1),
    ("send_receive_rate", "incoming", "all", ""): (1, 2),
    ("key_send_receive_rate", "outgoing", "all", ""): (1, 2),  # N3 of N3 N4
    ("key_send_receive_rate", "incoming", "all", ""): (1, 1),  # N1
    ("accuracy_rate", "incoming", "all", ""): (1, 2),  # F confirmed, G not
    ("accuracy_rate", "incoming", "peer", OTHER): (1, 2),
    ("accuracy_rate", "outgoing", "all", ""): (1, 1),  # I
    ("check_rate", "node", "year", "2026"): (0, 0),
}


def rows_by_key(rows: list[RateRow]) -> dict[tuple[str, str, str, str], RateRow]:
    return {(r.metric, r.direction, r.dimension, r.value): r for r in rows}


def test_working_day_deadline_over_the_holiday() -> None:
    assert F_DUE == end_of("2026-10-08")
    assert due_at(sh("2026-09-28 10:00"), DeadlineRule(days=3)) == end_of("2026-10-01")


def test_october_rates_match_the_hand_computed_table(engine: Engine) -> None:
    with Session(engine) as session:
        session.add_all(traffic())
        session.commit()
        rows = rows_by_key(month_rates(session, date(2026, 10, 1)))
    for key, (numerator, denominator) in EXPECTED.items():
        row = rows[key]
        assert (row.numerator, row.denominator) == (numerator, denominator), key
        assert row.rate == (numerator / denominator if denominator else None), key
    # Nothing outside the table: every incoming feedback row is one of A B C F G.
    assert sum(1 for k in rows if k[:3] == ("feedback_rate", "incoming", "peer")) == 2


def test_september_gets_d_and_november_gets_e(engine: Engine) -> None:
    with Session(engine) as session:
        session.add_all(traffic())
        session.commit()
        september = rows_by_key(month_rates(session, date(2026, 9, 1)))
        november = rows_by_key(month_rates(session, date(2026, 11, 1)))
    assert (
        september[("feedback_rate", "incoming", "all", "")].numerator,
        september[("feedback_rate", "incoming", "all", "")].denominator,
    ) == (1, 1)
    assert november[("feedback_rate", "incoming", "all", "")].denominator == 1  # E
    assert november[("send_receive_rate", "outgoing", "all", "")].denominator == 1  # N6


def test_a_quiet_month_has_every_headline_at_zero_over_zero(engine: Engine) -> None:
    with Session(engine) as session:
        rows = month_rates(session, date(2026, 10, 1))
    headlines = [r for r in rows if r.dimension == "all"]
    assert len(headlines) == 11
    assert all(r.numerator == r.denominator == 0 and r.rate is None for r in headlines)


@pytest.fixture(autouse=True)
def _clock() -> Iterator[None]:
    clock.freeze(sh("2026-11-01 08:00"))
    yield
    clock.reset()
