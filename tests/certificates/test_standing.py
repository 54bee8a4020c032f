"""Origin side: a look-up is answered only for a node with standing (docs/protocol.md, "Standing"),
every one is recorded, a refusal says nothing of the person; per-peer rate and concurrency limits."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.certificates import peer
from service.certificates.peer import REFUSAL, NoStanding, answer_lookup
from service.certificates.schemas import LookupAnswer, LookupPayload
from service.certificates.throttle import PeerLimits
from service.config import Settings
from service.errors import TooManyRequests
from service.exchange.envelope import Envelope
from service.exchange.inbox import InboundMessage
from service.models import (
    CaseStatus,
    Direction,
    ItemType,
    LookupLog,
    LookupPurpose,
    LookupStanding,
    NoticeKind,
    Notification,
    NotificationKind,
    NotificationStatus,
    Person,
    Priority,
    Role,
    Sex,
    StaffNotice,
    Topic,
    VerificationCase,
)
from tests.certificates.factories import id_number, person

Freeze = Callable[[str], None]
BORN = date(1990, 3, 8)
HOST, STRANGER, ORIGIN = "410105", "310110", "411627"
AT = datetime(2026, 6, 1, 2, 0, 1, tzinfo=UTC)


def woman(session: Session, serial: int = 1, host: str = HOST) -> Person:
    row = person(ORIGIN, BORN, serial, host=host)
    session.add(row)
    session.flush()
    return row


def ask(
    session: Session,
    number: str,
    sender: str = HOST,
    purpose: LookupPurpose = LookupPurpose.service,
    name: str = "王秀英",
) -> LookupAnswer | NoStanding:
    envelope = Envelope[LookupPayload](
        message_id=uuid.uuid4(),
        type="certificate.lookup",
        sender=sender,
        recipient=ORIGIN,
        sent_at=AT,
        correlation_id=None,
        payload=LookupPayload(id_number=number, name=name, purpose=purpose),
    )
    answer = answer_lookup(session, InboundMessage(envelope, AT, f"{sender}/k1"))
    assert isinstance(answer, LookupAnswer | NoStanding)
    return answer


def notified(session: Session, row: Person, sender: str, kind: NotificationKind, on: date) -> None:
    session.add(
        Notification(
            message_id=str(uuid.uuid4()),
            direction=Direction.incoming,
            peer=sender,
            kind=kind,
            status=NotificationStatus.received,
            subject_id_number=row.id_number,
            subject_name=row.name,
            subject_sex=Sex.F,
            subject_birth_date=row.birth_date,
            occurred_on=on,
            details="{}",
            sent_at=AT,
        )
    )
    session.flush()


def case_with(session: Session, row: Person, other: str, status: CaseStatus) -> None:
    session.add(
        VerificationCase(
            request_message_id=str(uuid.uuid4()),
            direction=Direction.incoming,
            peer=other,
            status=status,
            subject_id_number=row.id_number,
            subject_name=row.name,
            subject_sex=Sex.F,
            subject_birth_date=row.birth_date,
            topic=Topic.marital_status,
            priority=Priority.normal,
            key_target=False,
            question="请核实。",
            sent_at=AT,
        )
    )
    session.flush()


def logs(session: Session) -> list[LookupLog]:
    return list(session.exec(select(LookupLog).order_by(LookupLog.id)).all())  # type: ignore[arg-type]


def test_her_registered_host_is_answered_for_every_purpose(origin: Engine, at: Freeze) -> None:
    at("2026-06-01 10:00")
    with Session(origin) as session:
        row = woman(session)
        for purpose in LookupPurpose:
            answer = ask(session, row.id_number, purpose=purpose)
            assert isinstance(answer, LookupAnswer)
            assert answer.found is True
        assert [(g.standing, g.refused, g.flagged, g.person_id) for g in logs(session)] == [
            (LookupStanding.host, False, False, row.id)
        ] * 3


def test_a_stranger_is_refused_alike_for_a_registered_woman_and_an_unknown_number(
    origin: Engine, at: Freeze
) -> None:
    at("2026-06-01 10:00")
    with Session(origin) as session:
        row = woman(session)
        unknown = id_number(ORIGIN, date(1992, 1, 1), 7)
        known = ask(session, row.id_number, sender=STRANGER)
        nobody = ask(session, unknown, sender=STRANGER)
        wrong_name = ask(session, row.id_number, sender=STRANGER, name="王秀兰")
        # The same problem, word for word: the refusal does not tell whether she is registered.
        assert isinstance(known, NoStanding)
        assert isinstance(nobody, NoStanding)
        assert isinstance(wrong_name, NoStanding)
        assert known.problem() == nobody.problem() == wrong_name.problem()
        assert (known.status_code, known.code, known.detail) == (403, "no_standing", REFUSAL)
        assert row.id_number not in str(known.problem())
        # Each one recorded, her record named where the number is hers.
        assert [(g.requester, g.standing, g.refused, g.found, g.person_id) for g in logs(session)] == [
            (STRANGER, LookupStanding.none, True, False, row.id),
            (STRANGER, LookupStanding.none, True, False, None),
            (STRANGER, LookupStanding.none, True, False, row.id),
        ]
        assert session.exec(select(StaffNotice)).first() is None  # refused: nothing to flag


def test_an_arrival_notified_gives_standing_until_the_same_node_notifies_her_departure(
    origin: Engine, at: Freeze
) -> None:
    at("2026-06-01 10:00")
    with Session(origin) as session:
        row = woman(session, host="999999")  # the register does not know she moved
        assert isinstance(ask(session, row.id_number), NoStanding)
        notified(session, row, HOST, NotificationKind.arrival, date(2026, 3, 1))
        answer = ask(session, row.id_number)
        assert isinstance(answer, LookupAnswer)
        assert answer.found is True
        notified(session, row, STRANGER, NotificationKind.arrival, date(2026, 2, 1))  # another node's
        notified(session, row, HOST, NotificationKind.departure, date(2026, 5, 1))
        assert isinstance(ask(session, row.id_number), NoStanding)
        notified(session, row, HOST, NotificationKind.arrival, date(2026, 5, 20))  # back again
        assert isinstance(ask(session, row.id_number), LookupAnswer)
        assert [g.standing for g in logs(session)] == [
            LookupStanding.none,
            LookupStanding.arrival,
            LookupStanding.none,
            LookupStanding.arrival,
        ]


def test_an_arrival_gives_standing_for_a_number_the_register_does_not_hold(
    origin: Engine, at: Freeze
) -> None:
    at("2026-06-01 10:00")
    with Session(origin) as session:
        row = person(ORIGIN, BORN, 9, host=HOST)  # not in the register
        notified(session, row, HOST, NotificationKind.arrival, date(2026, 3, 1))
        answer = ask(session, row.id_number)
        assert answer == LookupAnswer(found=False)  # the node that told us of her learns we lack her
        assert [(g.standing, g.refused, g.person_id) for g in logs(session)] == [
            (LookupStanding.arrival, False, None)
        ]


def test_an_open_case_gives_standing_for_the_residence_check_only(origin: Engine, at: Freeze) -> None:
    at("2026-06-01 10:00")
    with Session(origin) as session:
        row = woman(session, host="999999")
        case_with(session, row, STRANGER, CaseStatus.acknowledged)
        residence = ask(session, row.id_number, sender=STRANGER, purpose=LookupPurpose.residence_check)
        assert isinstance(residence, LookupAnswer)
        assert residence.found is True
        assert isinstance(ask(session, row.id_number, sender=STRANGER), NoStanding)  # purpose service
        other = woman(session, serial=2, host="999999")
        case_with(session, other, STRANGER, CaseStatus.answered)  # closed: no standing
        closed = ask(session, other.id_number, sender=STRANGER, purpose=LookupPurpose.residence_check)
        assert isinstance(closed, NoStanding)
        assert [g.standing for g in logs(session)] == [
            LookupStanding.case,
            LookupStanding.none,
            LookupStanding.none,
        ]


def test_any_trusted_answers_a_stranger_and_flags_it_to_the_supervisors(
    origin: Engine, at: Freeze, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(peer, "get_settings", lambda: Settings(lookup_standing="any_trusted"))
    at("2026-06-01 10:00")
    with Session(origin) as session:
        row = woman(session)
        answer = ask(session, row.id_number, sender=STRANGER)
        assert isinstance(answer, LookupAnswer)
        assert answer.found is True
        notice = session.exec(select(StaffNotice)).one()
        assert (notice.kind, notice.item_type, notice.item_id, notice.role) == (
            NoticeKind.flagged_lookup,
            ItemType.person,
            row.id,
            Role.supervisor,
        )
        notice.read_at, notice.read_by = AT, "supervisor"
        session.add(notice)
        session.flush()
        assert isinstance(ask(session, row.id_number, sender=STRANGER), LookupAnswer)
        again = session.exec(select(StaffNotice)).one()  # one notice, raised again: unread
        assert (again.read_at, again.read_by) == (None, None)
        ask(session, row.id_number)  # her host: not flagged
        unknown = ask(session, id_number(ORIGIN, date(1992, 1, 1), 7), sender=STRANGER)
        assert unknown == LookupAnswer(found=False)  # nobody to tell the staff about
        assert [(g.standing, g.refused, g.flagged) for g in logs(session)] == [
            (LookupStanding.none, False, True),
            (LookupStanding.none, False, True),
            (LookupStanding.host, False, False),
            (LookupStanding.none, False, False),
        ]
        assert len(session.exec(select(StaffNotice)).all()) == 1


# --- per-peer limits ---------------------------------------------------------------------------------


def test_a_peer_past_its_rate_is_refused_with_retry_after_and_others_are_not() -> None:
    limits = PeerLimits("3/hour", concurrency=8)
    for _ in range(3):
        with limits.admit(HOST):
            pass
    with pytest.raises(TooManyRequests) as refused, limits.admit(HOST):
        pass
    assert refused.value.status_code == 429
    assert 1 <= int(refused.value.headers()["Retry-After"]) <= 3600
    with limits.admit(STRANGER):  # its own budget
        pass
    assert limits.in_flight(HOST) == 0


def test_a_peer_past_its_number_at_once_is_refused_until_one_ends() -> None:
    limits = PeerLimits("1000/hour", concurrency=2)
    with limits.admit(HOST), limits.admit(HOST):
        assert limits.in_flight(HOST) == 2
        with pytest.raises(TooManyRequests) as refused, limits.admit(HOST):
            pass
        assert refused.value.headers() == {"Retry-After": "1"}
        with limits.admit(STRANGER):
            pass
    with pytest.raises(RuntimeError), limits.admit(HOST):  # a failed look-up gives its place back
        raise RuntimeError("boom")
    assert limits.in_flight(HOST) == 0
    with limits.admit(HOST):
        pass


def test_the_rate_setting_is_checked() -> None:
    with pytest.raises(ValueError, match="rate limit"):
        Settings(lookup_rate_limit="lots")
    assert Settings().lookup_standing == "standing"  # the safe default
