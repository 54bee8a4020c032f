"""Host side: what counts as a disagreement between the origin's answer and this register."""

from __future__ import annotations

from datetime import UTC, date, datetime

from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.certificates.lookups import discrepancies, question
from service.certificates.schemas import CertificateDoc, Discrepancy, Holder
from service.models import CertificateCheck, ContraceptionMethod, LookupPurpose, MaritalStatus, Person
from tests.certificates.factories import add, person

ISSUED = datetime(2026, 1, 5, tzinfo=UTC)


def doc(row: Person, **shown: object) -> CertificateDoc:
    holder = Holder(id_number=row.id_number, name=row.name, sex=row.sex, birth_date=row.birth_date)
    return CertificateDoc(
        certificate_no="411627-2026-000001",
        holder=holder,
        status="valid",  # type: ignore[arg-type]
        issued_by="411627",
        issued_at=ISSUED,
        updated_at=ISSUED,
        **shown,  # type: ignore[arg-type]
    )


def test_only_disclosed_fields_the_register_holds_are_compared(host: Engine) -> None:
    row = person("411627", date(1990, 3, 8), 1, host="410105", marriage_date=None)
    add(host, row, children=1)
    with Session(host) as session:
        stored = session.get(Person, row.id)
        assert stored is not None
        same = doc(stored, marital_status=MaritalStatus.first_marriage)
        assert discrepancies(session, stored, same) == []
        other = doc(
            stored,
            marital_status=MaritalStatus.divorced,
            marriage_date=date(2014, 5, 1),  # the register has no marriage date: nothing to disagree with
            children=[],
            contraception={"method": ContraceptionMethod.implant},
        )
        assert discrepancies(session, stored, other) == [
            Discrepancy(field="marital_status", in_register="first_marriage", in_certificate="divorced"),
            Discrepancy(field="contraception", in_register="iud", in_certificate="implant"),
            Discrepancy(field="children_count", in_register=1, in_certificate=0),
        ]
        assert discrepancies(session, None, other) == []
        assert discrepancies(session, stored, None) == []


def test_the_question_names_fields_not_people() -> None:
    check = CertificateCheck(
        message_id="m",
        id_number="411627199003080022",
        subject_name="王秀英",
        origin_node="411627",
        purpose=LookupPurpose.service,
        found=True,
        discrepancy='[{"field": "children_count", "in_register": 2, "in_certificate": 1}]',
        checked_at=ISSUED,
        response_body=b"{}",
        response_signature_input="",
        response_signature="",
    )
    text = question(check)
    assert text == "婚育证明查验与本地登记不一致：子女数（本地登记：2；婚育证明：1）。请核实并反馈。"
    assert "王秀英" not in text
    check.found, check.discrepancy = False, None
    assert "未查到" in question(check)
