"""Origin side: who holds a certificate, its number, versions, cancellation, lapse, and disclosure."""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.certificates import service
from service.certificates.peer import answer_lookup
from service.certificates.schemas import CertificateCorrect, LookupPayload
from service.errors import DomainError, InvalidState, ValidationFailed
from service.exchange.envelope import Envelope
from service.exchange.inbox import InboundMessage
from service.models import (
    Certificate,
    CertificateStatus,
    CertificateVersion,
    Child,
    LookupLog,
    LookupPurpose,
    MaritalStatus,
    Person,
)
from tests.certificates.factories import id_number, person

Freeze = Callable[[str], None]
BORN = date(1990, 3, 8)


def holder(session: Session, **fields: object) -> Person:
    row = person("411627", fields.pop("birth", BORN), int(fields.pop("serial", 1)), host="410105", **fields)  # type: ignore[arg-type]
    session.add(row)
    session.flush()
    return row


def test_a_registered_married_woman_holds_a_numbered_certificate(origin: Engine, at: Freeze) -> None:
    at("2026-06-01 10:00")
    with Session(origin) as session:
        first = service.ensure_certificate(session, holder(session), "clerk")
        second = service.ensure_certificate(session, holder(session, serial=2), None)
        assert first is not None
        assert second is not None
        assert first.certificate_no == "411627-2026-000001"
        assert second.certificate_no == "411627-2026-000002"
        again = service.ensure_certificate(session, session.get(Person, first.person_id), "clerk")  # type: ignore[arg-type]
        assert again is not None
        assert again.id == first.id  # one certificate per person
        version = session.exec(
            select(CertificateVersion).where(CertificateVersion.certificate_id == first.id)
        ).one()
        snapshot = json.loads(version.snapshot)
        assert version.version == 1
        assert version.changed_by == "clerk"
        assert snapshot["certificate_no"] == "411627-2026-000001"
        assert snapshot["status"] == "valid"
        assert snapshot["issued_by"] == "411627"
        assert snapshot["holder"]["birth_date"] == "1990-03-08"


@pytest.mark.parametrize(
    ("fields", "reason"),
    [
        ({"sex": "M", "name": "李强"}, "women"),
        ({"birth": date(2009, 1, 1)}, "18–49"),  # 17 on 2026-06-01
        ({"birth": date(1976, 5, 31)}, "18–49"),  # 50 the day before
        ({"marital_status": None}, "marital_status"),
    ],
)
def test_who_does_not_hold_one(origin: Engine, at: Freeze, fields: dict[str, object], reason: str) -> None:
    at("2026-06-01 10:00")
    with Session(origin) as session:
        row = holder(session, **fields)
        assert service.ensure_certificate(session, row, None) is None
        assert row.id is not None
        with pytest.raises(ValidationFailed, match=reason):
            service.issue(session, row.id, "clerk")
        assert session.exec(select(Certificate)).first() is None


def test_a_migrant_from_elsewhere_gets_no_certificate_here(origin: Engine, at: Freeze) -> None:
    at("2026-06-01 10:00")
    with Session(origin) as session:
        row = person("410105", BORN, 1, host="411627")
        session.add(row)
        session.flush()
        assert service.ensure_certificate(session, row, None) is None


def test_the_certificate_lapses_by_itself_past_49(origin: Engine, at: Freeze) -> None:
    at("2026-03-07 23:59")
    with Session(origin) as session:
        certificate = service.ensure_certificate(session, holder(session, birth=date(1976, 3, 8)), None)
        session.commit()
        assert certificate is not None
        assert certificate.id is not None
        assert service.read(session, certificate.id).status == CertificateStatus.valid
        at("2026-03-08 00:00")  # her 50th birthday in China (still 7 March in UTC)
        read = service.read(session, certificate.id)
        assert read.status == CertificateStatus.lapsed
        assert read.certificate["status"] == "lapsed"
        assert read.versions[0].certificate["status"] == "valid"  # not stored: computed when read
        assert read.version == 1


def test_corrections_and_cancellation_are_versions(origin: Engine, at: Freeze) -> None:
    at("2026-06-01 10:00")
    with Session(origin) as session:
        certificate = service.ensure_certificate(session, holder(session), None)
        assert certificate is not None
        assert certificate.id is not None
        at("2026-07-01 09:00")
        change = CertificateCorrect(
            reason="离婚登记",
            marital_status=MaritalStatus.divorced,
            children=[{"birth_order": 1, "birth_date": date(2016, 6, 1), "sex": "F", "name": "张小丽"}],
        )
        service.correct(session, certificate.id, change, "clerk-a")
        at("2026-08-01 09:00")
        service.cancel(session, certificate.id, "户籍迁出", "clerk-b")
        read = service.read(session, certificate.id)
        assert [v.version for v in read.versions] == [1, 2, 3]
        v2, v3 = read.versions[1], read.versions[2]
        assert (v2.changed_by, v2.reason) == ("clerk-a", "离婚登记")
        assert v2.changed_at == datetime(2026, 7, 1, 1, 0, tzinfo=UTC)
        assert v2.certificate["marital_status"] == "divorced"
        assert v2.certificate["children"] == [{"birth_order": 1, "birth_date": "2016-06-01", "sex": "F"}]
        assert read.versions[0].certificate["marital_status"] == "first_marriage"
        assert (v3.changed_by, v3.certificate["status"]) == ("clerk-b", "cancelled")
        assert read.status == CertificateStatus.cancelled
        child = session.exec(select(Child)).one()
        assert child.name == "张小丽"
        with pytest.raises(InvalidState):
            service.cancel(session, certificate.id, "again", "clerk-b")
        with pytest.raises(InvalidState):
            service.correct(session, certificate.id, CertificateCorrect(reason="x", marriage_date=None), None)


def test_a_correction_must_change_something_valid(origin: Engine, at: Freeze) -> None:
    at("2026-06-01 10:00")
    with Session(origin) as session:
        certificate = service.ensure_certificate(session, holder(session), None)
        assert certificate is not None
        assert certificate.id is not None
        same = CertificateCorrect(reason="复核", marital_status=MaritalStatus.first_marriage)
        with pytest.raises(ValidationFailed, match="changes nothing"):
            service.correct(session, certificate.id, same, None)
        with pytest.raises(ValidationFailed) as bad:
            service.correct(
                session, certificate.id, CertificateCorrect(reason="x", marriage_date=date(1980, 1, 1)), None
            )
        assert bad.value.extra["field"] == "marriage_date"
        with pytest.raises(ValidationFailed) as none:
            service.correct(
                session, certificate.id, CertificateCorrect(reason="x", marital_status=None), None
            )
        assert none.value.extra["field"] == "marital_status"
        with pytest.raises(ValueError, match="distinct"):
            CertificateCorrect(
                reason="x",
                children=[
                    {"birth_order": 1, "birth_date": date(2016, 6, 1), "sex": "F"},
                    {"birth_order": 1, "birth_date": date(2018, 6, 1), "sex": "M"},
                ],
            )
        assert service.read(session, certificate.id).version == 1


def ask(session: Session, number: str, name: str, purpose: LookupPurpose) -> dict[str, object]:
    envelope = Envelope[LookupPayload](
        message_id=uuid.uuid4(),
        type="certificate.lookup",
        sender="410105",
        recipient="411627",
        sent_at=datetime(2026, 6, 1, 2, 0, tzinfo=UTC),
        correlation_id=None,
        payload=LookupPayload(id_number=number, name=name, purpose=purpose),
    )
    inbound = InboundMessage(envelope, datetime(2026, 6, 1, 2, 0, 1, tzinfo=UTC), "410105/k1")
    answer = answer_lookup(session, inbound)
    if isinstance(answer, DomainError):  # a refusal (no standing): its problem body
        return answer.problem()
    dumped: dict[str, object] = answer.model_dump(mode="json")
    return dumped


BASE = {"certificate_no", "holder", "marital_status", "status", "issued_by", "issued_at", "updated_at"}


@pytest.mark.parametrize(
    ("purpose", "extra"),
    [
        (LookupPurpose.residence_check, set()),
        (LookupPurpose.service, {"contraception", "children"}),
        (LookupPurpose.birth_registration, {"marriage_date", "children"}),
    ],
)
def test_disclosure_follows_the_purpose(
    origin: Engine, at: Freeze, purpose: LookupPurpose, extra: set[str]
) -> None:
    at("2026-06-01 10:00")
    with Session(origin) as session:
        row = holder(session)
        add_child = Child(person_id=row.id, birth_order=1, birth_date=date(2015, 6, 1), sex="M")  # type: ignore[arg-type]
        session.add(add_child)
        session.flush()
        answer = ask(session, row.id_number, " 王 秀英 ", purpose)  # spacing does not matter
        assert answer["found"] is True
        certificate = answer["certificate"]
        assert isinstance(certificate, dict)
        assert set(certificate) == BASE | extra
        assert certificate["holder"] == {
            "id_number": row.id_number,
            "name": "王秀英",
            "sex": "F",
            "birth_date": "1990-03-08",
        }
        log = session.exec(select(LookupLog)).one()
        assert (log.requester, log.keyid, log.purpose, log.found) == ("410105", "410105/k1", purpose, True)
        assert log.person_id == row.id
        assert log.id_number_masked == row.id_number[:4] + "**********" + row.id_number[-4:]


def test_a_wrong_name_finds_nothing_an_unknown_number_is_refused_both_logged(
    origin: Engine, at: Freeze
) -> None:
    at("2026-06-01 10:00")
    with Session(origin) as session:
        row = holder(session)
        assert ask(session, row.id_number, "王秀兰", LookupPurpose.service) == {"found": False}
        unknown = id_number("411627", date(1992, 1, 1), 7)
        # Unknown, and so nobody's host: refused (tests/certificates/test_standing.py).
        assert ask(session, unknown, "王秀英", LookupPurpose.residence_check)["code"] == "no_standing"
        logs = session.exec(select(LookupLog).order_by(LookupLog.id)).all()  # type: ignore[arg-type]
        # Her number: her record is named (for her page), though the caller learns nothing.
        assert [(g.found, g.person_id, g.refused) for g in logs] == [
            (False, row.id, False),
            (False, None, True),
        ]
        # Nothing was issued for a caller who did not know the name.
        assert session.exec(select(Certificate)).first() is None
