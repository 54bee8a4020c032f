"""The register import: encodings, XLSX, headers, bad rows by line, dry runs, batches, duplicates."""

from __future__ import annotations

import io
from datetime import date, datetime
from typing import Any

import pytest
from openpyxl import Workbook
from sqlmodel import Session, select

from service.models import Notification, Person
from service.people import importer
from service.people.importer import FileRefused
from service.people.schemas import ImportReport
from service.signing.node import NodeSigner
from tests.people.factories import HERE, ORIGIN, id_number

CN = ",".join(importer.HEADERS)  # 身份证号,姓名,性别,出生日期,户籍地代码,现居住地代码,流入日期,…


def number(seq: int, sex: str = "F", birth: date = date(1995, 3, 8), region: str = ORIGIN) -> str:
    return id_number(region, birth, seq, sex)


def good_rows() -> list[str]:
    return [
        f"{number(1)},王秀英,女,1995-03-08,,{HERE},2026/01/02,,初婚,20180501,上环,2021-01-01",
        f"{number(2, 'M')},李建国,男,19950308,{ORIGIN},{HERE},,,,,,",
        f"{number(3)},张丽,女,1995/3/8,,{HERE},2025-12-01,2026-02-01,未婚,,,",
    ]


def run(session: Session, signer: NodeSigner, content: bytes, **kwargs: Any) -> ImportReport:
    return importer.import_people(
        session, signer, importer.read_table(content), "op", commit=session.commit, **kwargs
    )


def stored(session: Session) -> list[Person]:
    return list(session.exec(select(Person).order_by(Person.id)))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("encoding", "detected"),
    [("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig"), ("gbk", "gbk"), ("gb18030", "gbk")],
)
def test_csv_in_utf8_with_or_without_bom_or_gbk(
    session: Session, signer: NodeSigner, encoding: str, detected: str
) -> None:
    content = "\n".join([CN, *good_rows()]).encode(encoding)
    report = run(session, signer, content)
    assert (report.format, report.encoding) == ("csv", detected)
    assert (report.rows, report.stored, report.bad) == (3, 3, 0)
    people = stored(session)
    assert [p.name for p in people] == ["王秀英", "李建国", "张丽"]
    first = people[0]
    assert (first.origin_node, first.arrived_on, first.marital_status) == (
        ORIGIN,
        date(2026, 1, 2),
        "first_marriage",
    )
    assert (first.marriage_date, first.contraception_method) == (date(2018, 5, 1), "iud")
    # Two arrivals here from a peer: each tells the origin by itself.
    assert report.notifications == 2
    assert len(session.exec(select(Notification)).all()) == 2


def test_a_file_in_neither_encoding_is_refused(session: Session, signer: NodeSigner) -> None:
    with pytest.raises(FileRefused, match="neither UTF-8 nor GBK"):
        run(session, signer, "身份证号".encode() + b"\xff\xff\xff\x80\n")


def test_xlsx_with_date_cells_and_numeric_codes(session: Session, signer: NodeSigner) -> None:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(
        ["id_number", "name", "sex", "birth_date", "host_node", "arrived_on", "contraception_method"]
    )
    sheet.append([number(1), "王秀英", "F", datetime(1995, 3, 8), int(HERE), datetime(2026, 1, 2), "iud"])
    sheet.append([number(2, "M"), "李建国", "男", 19950308, float(HERE), "2026-01-03", None])
    sheet.append([None, None, None, None, None, None, None])  # empty rows a spreadsheet keeps
    sheet.append([number(3), "张丽", "女", datetime(1995, 3, 8), int(HERE), datetime(2099, 1, 1), None])
    buffer = io.BytesIO()
    book.save(buffer)
    report = run(session, signer, buffer.getvalue())
    assert (report.format, report.encoding) == ("xlsx", None)
    assert (report.rows, report.stored) == (3, 2)
    assert [(b.line, [e.model_dump() for e in b.errors]) for b in report.bad_rows] == [
        (5, [{"field": "arrived_on", "reason": "is in the future"}])
    ]
    assert [(p.birth_date, p.host_node, p.arrived_on) for p in stored(session)] == [
        (date(1995, 3, 8), HERE, date(2026, 1, 2)),
        (date(1995, 3, 8), HERE, date(2026, 1, 3)),
    ]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (CN + ",备注", "unknown column '备注'"),
        ("身份证号,姓名,性别,出生日期", "required column(s) missing: host_node"),
        ("身份证号,姓名,性别,出生日期,现居住地代码,id_number", "column 'id_number' appears twice"),
        (f"{number(1)},王秀英,女,1995-03-08,{HERE}", "looks like data"),
        ("", "header row is needed"),
    ],
)
def test_a_header_it_does_not_know_refuses_the_whole_file(
    session: Session, signer: NodeSigner, header: str, message: str
) -> None:
    content = "\n".join([header, *good_rows()]).encode() if header else b""
    with pytest.raises(FileRefused, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        run(session, signer, content)
    assert number(1) not in str(info.value.problem())
    assert stored(session) == []


def test_bad_rows_are_reported_by_line_and_nothing_of_them_is_stored(
    session: Session, signer: NodeSigner
) -> None:
    wrong_check = number(4)[:17] + ("0" if number(4)[17] != "0" else "1")
    rows = [
        CN,
        good_rows()[0],  # line 2: good
        f"{wrong_check},赵敏,女,1995-03-08,,{HERE},,,,,,",  # 3: check digit
        f"{number(5)},钱芳,女,1995-03-09,,{HERE},,,,,,",  # 4: birth date disagrees
        f"{number(6)},孙丽,男,1995-03-08,,{HERE},,,已婚,,,",  # 5: sex + unknown marital label
        f"{number(7, 'M')},周强,男,1995-03-08,,{HERE},,,初婚,,,",  # 6: man with marital status
        f"{number(8)},吴静,女,1995-13-01,,{HERE},2026-01-01,2025-01-01,,,,",  # 7: impossible date
        "",  # 8: blank line, skipped
        f"{number(1)},王秀英,女,1995-03-08,,{HERE},,,,,,",  # 9: same number as line 2
        f"{number(9)},郑洁,女,1995-03-08,,{HERE},,,,,,,extra",  # 10: too many cells
        good_rows()[1],  # 11: good
    ]
    report = run(session, signer, "\n".join(rows).encode())
    assert (report.rows, report.stored, report.bad) == (9, 2, 7)
    found = {b.line: {e.field: e.reason for e in b.errors} for b in report.bad_rows}
    assert [b.line for b in report.bad_rows] == [3, 4, 5, 6, 7, 9, 10]
    assert found[3] == {"id_number": "Value error, check digit (GB 11643) does not match"}
    assert found[4] == {"birth_date": "disagrees with the ID number (digits 7-14)"}
    assert set(found[5]) == {"marital_status"}  # the label is checked before the cross-field rules
    assert found[6] == {"marital_status": "only for women of childbearing age (15-49)"}
    assert found[7] == {"birth_date": "not a valid calendar date"}
    assert found[9] == {"id_number": "duplicate_person: the same ID number is on line 2"}
    assert found[10] == {"row": "has more cells than the header's 12"}
    assert [p.name for p in stored(session)] == ["王秀英", "李建国"]
    text = report.model_dump_json()
    for value in (wrong_check, number(5), "赵敏", "钱芳", "已婚"):
        assert value not in text  # field and reason, never the value


def test_a_number_registered_already_is_a_per_row_error(session: Session, signer: NodeSigner) -> None:
    run(session, signer, "\n".join([CN, good_rows()[1]]).encode())
    first = stored(session)[0]
    report = run(session, signer, "\n".join([CN, *good_rows()]).encode())
    assert [(b.line, b.errors[0].field, b.errors[0].reason) for b in report.bad_rows] == [
        (3, "id_number", f"duplicate_person: registered already as person {first.id}")
    ]
    assert report.stored == 2


def test_look_alikes_are_stored_and_reported(session: Session, signer: NodeSigner) -> None:
    run(session, signer, "\n".join([CN, good_rows()[0]]).encode())
    first = stored(session)[0]
    other = f"{number(11)},王秀英,女,1995-03-08,,{HERE},,,,,,"  # same name, birth, sex; another number
    report = run(session, signer, "\n".join([CN, other]).encode())
    second = stored(session)[1]
    assert [r.model_dump() for r in report.possible_duplicates] == [
        {"line": 2, "id": second.id, "possible_duplicates": [first.id]}
    ]


def test_a_dry_run_validates_everything_and_stores_nothing(session: Session, signer: NodeSigner) -> None:
    rows = [CN, *good_rows(), f"{number(5)},钱芳,女,1995-03-09,,{HERE},,,,,,"]
    commits: list[int] = []
    table = importer.read_table("\n".join(rows).encode())
    report = importer.import_people(
        session, signer, table, "op", dry_run=True, commit=lambda: commits.append(1)
    )
    session.commit()
    assert (report.dry_run, report.rows, report.stored, report.bad, report.notifications) == (
        True,
        4,
        0,
        1,
        0,
    )
    assert [b.line for b in report.bad_rows] == [5]
    assert commits == []
    assert stored(session) == []
    assert session.exec(select(Notification)).all() == []


def test_good_rows_are_stored_one_transaction_per_batch(session: Session, signer: NodeSigner) -> None:
    rows = [CN, *(f"{number(i)},人{i},女,1995-03-08,,{HERE},,,,,," for i in range(20, 27))]
    commits: list[int] = []
    seen: list[int] = []
    table = importer.read_table("\n".join(rows).encode())

    def commit() -> None:
        session.commit()
        commits.append(len(stored(session)))

    report = importer.import_people(
        session, signer, table, "op", batch_size=3, commit=commit, progress=seen.append
    )
    assert report.stored == 7
    assert commits == [3, 6, 7]
    assert seen[-1] == 7
