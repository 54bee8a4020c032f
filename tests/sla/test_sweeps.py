"""SLA sweeps: reminders, overdue state and escalations on hand-computed times, both backends.

Times are Asia/Shanghai. The default reminder rule is 2 working days before the due day: a deadline
at 24:00 on Friday 20 November 2026 is reminded from 00:00 on Wednesday 18 November.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import pytest
from pydantic import ValidationError
from sqlalchemy import func, select
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.clock import OFFSET_ENV, Clock, offset_from_env, utcnow
from service.config import Settings
from service.db import make_engine
from service.migrations import upgrade
from service.models import (
    CaseStatus,
    Direction,
    ItemType,
    NoticeKind,
    Notification,
    NotificationKind,
    NotificationStatus,
    OutboxMessage,
    Priority,
    Role,
    Sex,
    StaffNotice,
    Topic,
    VerificationCase,
)
from service.sla.deadlines import SHANGHAI, DeadlineRule
from service.sla.sweeps import ItemRef, mark_overdue, remind, sweep, sweep_all

DUE = datetime(2026, 11, 21, 0, 0, tzinfo=SHANGHAI)  # 24:00 on Friday 20 November
RECEIVED = datetime(2026, 10, 22, 9, 0, tzinfo=SHANGHAI)
SETTINGS = Settings()


def sh(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = (
        f"sqlite:///{tmp_path / 'node.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres").new_database()
    )
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


_seq = iter(range(10**9))


def case(
    session: Session,
    *,
    due: datetime = DUE,
    direction: Direction = Direction.incoming,
    status: CaseStatus = CaseStatus.received,
    promised_by: date | None = None,
) -> int:
    n = next(_seq)
    row = VerificationCase(
        request_message_id=f"00000000-0000-7000-8000-{n:012d}",
        direction=direction,
        peer="410105",
        status=status,
        subject_id_number="411627199503080024",
        subject_name="王秀英",
        subject_sex=Sex.F,
        subject_birth_date=date(1995, 3, 8),
        topic=Topic.marital_status,
        priority=Priority.normal,
        key_target=False,
        question="请核实该对象婚育情况。",
        sent_at=RECEIVED,
        received_at=RECEIVED,
        due_at=due.astimezone(UTC),
        promised_by=promised_by,
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    return row.id


def notification(
    session: Session, *, due: datetime = DUE, status: NotificationStatus = NotificationStatus.received
) -> int:
    n = next(_seq)
    row = Notification(
        message_id=f"00000000-0000-7000-9000-{n:012d}",
        direction=Direction.incoming,
        peer="410105",
        kind=NotificationKind.arrival,
        status=status,
        subject_id_number="411627199503080024",
        subject_name="王秀英",
        subject_sex=Sex.F,
        subject_birth_date=date(1995, 3, 8),
        occurred_on=date(2026, 10, 20),
        details="{}",
        sent_at=RECEIVED,
        received_at=RECEIVED,
        due_at=due.astimezone(UTC),
    )
    session.add(row)
    session.flush()
    assert row.id is not None
    return row.id


def notices(engine: Engine) -> list[tuple[str, str, int, str]]:
    with Session(engine) as session:
        rows = session.exec(select(StaffNotice)).scalars().all()  # type: ignore[call-overload]
        return sorted((n.kind.value, n.item_type.value, n.item_id, n.role.value) for n in rows)


def run(engine: Engine, now: datetime, settings: Settings = SETTINGS) -> list[ItemRef]:
    with Session(engine) as session:
        batch = sweep(session, now.astimezone(UTC), settings)
        session.commit()
    return batch.handled


def test_reminder_comes_two_working_days_before_the_due_day(engine: Engine) -> None:
    with Session(engine) as session:
        item = case(session)
        session.commit()
    assert run(engine, sh("2026-11-17 23:59:59")) == []  # Tuesday: Thursday and Friday still ahead
    assert run(engine, sh("2026-11-18 00:00")) == [ItemRef(ItemType.verification, item)]  # Wednesday
    assert notices(engine) == [("reminder", "verification", item, "operator")]
    with Session(engine) as session:
        notice = session.exec(select(StaffNotice)).scalars().one()  # type: ignore[call-overload]
        assert notice.due_at == DUE
        assert notice.created_at == sh("2026-11-18 00:00")
        assert notice.read_at is None


def test_reminder_before_a_deadline_after_the_national_day_holiday(engine: Engine) -> None:
    """Due 24:00 Thu 8 Oct 2026 (1–7 Oct off): 2 working days before are Tue 29 and Wed 30 Sep."""
    with Session(engine) as session:
        item = case(session, due=sh("2026-10-09 00:00"))
        session.commit()
    assert run(engine, sh("2026-09-28 23:59")) == []
    assert run(engine, sh("2026-09-29 00:00")) == [ItemRef(ItemType.verification, item)]


def test_calendar_days_reminder(engine: Engine) -> None:
    settings = Settings(reminder_before=DeadlineRule(days=3))
    with Session(engine) as session:
        item = case(session)  # due 24:00 Fri 20 Nov: 3 calendar days before is Tue 17 Nov
        session.commit()
    assert run(engine, sh("2026-11-16 23:59"), settings) == []
    assert run(engine, sh("2026-11-17 00:00"), settings) == [ItemRef(ItemType.verification, item)]


def test_a_reply_at_the_deadline_exactly_is_not_overdue(engine: Engine) -> None:
    with Session(engine) as session:
        item = case(session, status=CaseStatus.acknowledged)
        session.commit()
    run(engine, DUE)  # now == due_at: not past it
    assert [k for k, *_ in notices(engine)] == ["reminder"]
    run(engine, DUE + timedelta(seconds=1))
    assert notices(engine) == [
        ("escalation", "verification", item, "supervisor"),
        ("overdue", "verification", item, "operator"),
        ("reminder", "verification", item, "operator"),
    ]
    with Session(engine) as session:
        row = session.get(VerificationCase, item)
        assert row is not None
        assert row.overdue_at == DUE + timedelta(seconds=1)


def test_an_item_found_past_its_deadline_gets_no_reminder(engine: Engine) -> None:
    with Session(engine) as session:
        item = notification(session)
        session.commit()
    run(engine, sh("2026-11-25 10:00"))
    assert notices(engine) == [
        ("escalation", "notification", item, "supervisor"),
        ("overdue", "notification", item, "operator"),
    ]


def test_done_items_never_get_notices(engine: Engine) -> None:
    with Session(engine) as session:
        answered = case(session, status=CaseStatus.answered)
        acknowledged = notification(session, status=NotificationStatus.acknowledged)
        session.commit()
    for now in (sh("2026-11-19 10:00"), sh("2026-12-30 10:00")):
        assert run(engine, now) == []
    assert notices(engine) == []
    with Session(engine) as session:
        a, b = session.get(VerificationCase, answered), session.get(Notification, acknowledged)
        assert a is not None
        assert a.overdue_at is None
        assert b is not None
        assert b.overdue_at is None


def test_outgoing_items_are_marked_overdue_without_notices(engine: Engine) -> None:
    with Session(engine) as session:
        waiting = case(session, direction=Direction.outgoing, status=CaseStatus.delivered)
        session.commit()
    assert run(engine, sh("2026-11-19 10:00")) == []  # no reminder: the peer owes the answer
    assert run(engine, sh("2026-11-21 00:00:01")) == [ItemRef(ItemType.verification, waiting)]
    assert notices(engine) == []
    with Session(engine) as session:
        row = session.get(VerificationCase, waiting)
        assert row is not None
        assert row.overdue_at == sh("2026-11-21 00:00:01")


def test_no_escalation_when_turned_off(engine: Engine) -> None:
    settings = Settings(escalate_overdue=False)
    with Session(engine) as session:
        item = case(session)
        session.commit()
    run(engine, sh("2026-11-22 10:00"), settings)
    assert notices(engine) == [("overdue", "verification", item, "operator")]


def test_an_interim_answer_never_moves_the_deadline(engine: Engine) -> None:
    """签收 with "will answer by 30 Nov": still reminded on 18 Nov and overdue after 24:00 on 20 Nov."""
    with Session(engine) as session:
        item = case(session, status=CaseStatus.acknowledged, promised_by=date(2026, 11, 30))
        session.commit()
    assert run(engine, sh("2026-11-18 08:00")) == [ItemRef(ItemType.verification, item)]
    assert run(engine, sh("2026-11-21 08:00")) == [ItemRef(ItemType.verification, item)]
    with Session(engine) as session:
        row = session.get(VerificationCase, item)
        assert row is not None
        assert row.due_at == DUE
        assert row.promised_by == date(2026, 11, 30)
        assert row.overdue_at == sh("2026-11-21 08:00")
    assert [k for k, *_ in notices(engine)] == ["escalation", "overdue", "reminder"]


def test_a_clock_that_jumps_never_makes_a_notice_twice(engine: Engine) -> None:
    with Session(engine) as session:
        items = [case(session), notification(session)]
        session.commit()
    jumps = [
        "2026-11-18 09:00",
        "2026-11-10 09:00",
        "2026-11-19 09:00",
        "2026-11-23 09:00",
        "2026-11-18 09:00",
        "2026-11-24 09:00",
        "2026-11-01 00:00",
        "2026-12-10 09:00",
    ]
    for moment in jumps:
        sweep_all(lambda: Session(engine), sh(moment), SETTINGS)
    kinds = Counter((kind, item_type, item_id) for kind, item_type, item_id, _ in notices(engine))
    assert set(kinds.values()) == {1}
    assert len(kinds) == 3 * len(items)
    with Session(engine) as session:
        overdue_at = session.get(VerificationCase, items[0])
        assert overdue_at is not None
        assert overdue_at.overdue_at == sh("2026-11-23 09:00")


def test_sweep_all_works_in_batches(engine: Engine) -> None:
    with Session(engine) as session:
        ids = [case(session) for _ in range(7)]
        session.commit()
    reminded = sweep_all(lambda: Session(engine), sh("2026-11-19 09:00"), SETTINGS, limit=3)
    assert sorted(r.item_id for r in reminded.handled) == ids
    overdue = sweep_all(lambda: Session(engine), sh("2026-11-22 09:00"), SETTINGS, limit=3)
    assert sorted(r.item_id for r in overdue.handled) == ids
    assert Counter(kind for kind, _ in overdue.notices) == {NoticeKind.overdue: 7, NoticeKind.escalation: 7}


# --- settings and the clock --------------------------------------------------------------------


@pytest.mark.parametrize("value", ["0", "-2"])
def test_settings_refuse_a_non_positive_reminder(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv("YIPANQI_REMINDER_BEFORE__DAYS", value)
    with pytest.raises(ValidationError, match=r"reminder_before\.days"):
        Settings()


def test_settings_refuse_a_zero_sweep_interval(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIPANQI_SWEEP_INTERVAL_SECONDS", "0")
    with pytest.raises(ValidationError, match="sweep_interval_seconds"):
        Settings()


def test_reminder_unit_alone_keeps_the_default_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIPANQI_REMINDER_BEFORE__UNIT", "calendar")
    assert Settings().reminder_before == DeadlineRule(days=2, unit="calendar")


def test_clock_offset_from_the_environment() -> None:
    assert offset_from_env({}) == timedelta(0)
    assert offset_from_env({OFFSET_ENV: "86400"}) == timedelta(days=1)
    assert offset_from_env({OFFSET_ENV: "-3600.5"}) == timedelta(seconds=-3600.5)
    for bad in ("soon", "nan", "inf", "1e12"):
        with pytest.raises(ValueError, match=OFFSET_ENV):
            offset_from_env({OFFSET_ENV: bad})
    moved = Clock(timedelta(days=40))
    assert moved.now() - datetime.now(UTC) > timedelta(days=39)  # real clock
    moved.advance(timedelta(days=1))
    moved.reset()  # back to the offset it started with, not to none
    assert timedelta(days=39) < moved.now() - datetime.now(UTC) < timedelta(days=41)  # real clock


# --- two replicas on one PostgreSQL ------------------------------------------------------------


@pytest.mark.postgres
def test_two_replicas_sweep_together_and_handle_each_item_once(postgres: object) -> None:
    url = postgres.new_database()  # type: ignore[attr-defined]
    first = make_engine(url)
    upgrade(first)
    second = make_engine(url)
    try:
        expected = _due_items(first, 120)
        handled: dict[str, list[tuple[NoticeKind, ItemRef]]] = {"a": [], "b": []}
        moments = [
            "2026-11-17 09:00",
            "2026-11-18 09:00",
            "2026-11-19 09:00",
            "2026-11-21 09:00",
            "2026-11-25 09:00",
            "2026-11-18 09:00",
            "2026-11-30 09:00",
        ]

        def replica(name: str, engine: Engine, now: datetime) -> None:
            handled[name].extend(sweep_all(lambda: Session(engine), now, SETTINGS, 7).notices)

        for moment in moments:
            now = sh(moment)
            _together(lambda n=now: replica("a", first, n), lambda n=now: replica("b", second, n))
        both = Counter(handled["a"] + handled["b"])
        assert set(both.values()) == {1}  # no notice made by both replicas, none twice
        assert handled["a"]
        assert handled["b"]
        assert len(both) == 3 * expected
        with Session(first) as session:
            per_kind = dict(
                session.execute(select(StaffNotice.kind, func.count()).group_by(StaffNotice.kind)).all()
            )
            assert per_kind == {
                NoticeKind.reminder: expected,
                NoticeKind.overdue: expected,
                NoticeKind.escalation: expected,
            }
    finally:
        first.dispose()
        second.dispose()


@pytest.mark.postgres
def test_two_replicas_claim_disjoint_outbox_rows(postgres: object) -> None:
    from service.exchange.relay import Relay

    url = postgres.new_database()  # type: ignore[attr-defined]
    first = make_engine(url)
    upgrade(first)
    second = make_engine(url)
    now = utcnow()
    with Session(first) as session:
        for n in range(150):
            session.add(
                OutboxMessage(
                    message_id=f"00000000-0000-7000-a000-{n:012d}",
                    type="verification.request",
                    recipient="411627",
                    path="/verification-requests",
                    conversation_id=f"00000000-0000-7000-a000-{n:012d}",
                    body=b"{}",
                    digest="sha-256=:x:",
                    next_attempt_at=now - timedelta(seconds=1),
                )
            )
        session.commit()
    settings = Settings(relay_batch_size=9, relay_lease_seconds=3600)
    relays = [Relay(settings, lambda e=e: Session(e), None, {}) for e in (first, second)]  # type: ignore[arg-type, misc]
    claimed: list[list[str]] = [[], []]

    def drain(i: int) -> None:
        while ids := relays[i].claim():
            claimed[i].extend(ids)

    try:
        _together(lambda: drain(0), lambda: drain(1))
        assert not set(claimed[0]) & set(claimed[1])
        assert len(claimed[0]) + len(claimed[1]) == 150
    finally:
        for relay in relays:
            relay.client.close()
        first.dispose()
        second.dispose()


def _due_items(engine: Engine, n: int) -> int:
    with Session(engine) as session:
        for i in range(n):
            due = DUE + timedelta(days=i % 3)
            if i % 2:
                case(session, due=due)
            else:
                notification(session, due=due)
        session.commit()
    return n


def _together(*work: object) -> None:
    """Run the callables at once on threads (a barrier lines them up); re-raise the first failure."""
    barrier = threading.Barrier(len(work))
    errors: list[BaseException] = []

    def run(fn: object) -> None:
        try:
            barrier.wait()
            fn()  # type: ignore[operator]
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(fn,)) for fn in work]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def test_notice_roles_match_kinds(engine: Engine) -> None:
    with Session(engine) as session:
        case(session)
        session.commit()
    run(engine, sh("2026-11-18 09:00"))
    run(engine, sh("2026-11-22 09:00"))
    roles = {kind: role for kind, _, _, role in notices(engine)}
    assert roles == {
        "reminder": Role.operator.value,
        "overdue": Role.operator.value,
        "escalation": Role.supervisor.value,
    }


def test_remind_and_mark_overdue_are_separate_steps(engine: Engine) -> None:
    with Session(engine) as session:
        item = case(session)
        session.commit()
    with Session(engine) as session:
        assert mark_overdue(session, sh("2026-11-19 09:00").astimezone(UTC), SETTINGS).handled == []
        assert remind(session, sh("2026-11-19 09:00").astimezone(UTC), SETTINGS).handled == [
            ItemRef(ItemType.verification, item)
        ]
        session.rollback()  # flush only: nothing kept without the caller's commit
    assert notices(engine) == []
