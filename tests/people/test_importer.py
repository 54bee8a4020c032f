"""The register import: encodings, XLSX, headers, bad rows by line, dry runs, batches, duplicates."""

from __future__ import annotations

import io
import sqlite3
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openpyxl import Workbook
from sqlalchemy import event, func
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import col, select

from service.db import READ_ONLY, read_session, transaction
from service.models import Certificate, LocalNode, Notification, Person
from service.people import bulk, importer
from service.people.importer import FileRefused
from service.people.schemas import ImportReport
from service.signing.node import NodeSigner
from tests.people import factories
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


def run(engine: Engine, signer: NodeSigner, content: bytes, **kwargs: Any) -> ImportReport:
    return importer.import_people(signer, importer.read_table(content), "op", engine=engine, **kwargs)


def stored(engine: Engine) -> list[Person]:
    with read_session(engine) as session:
        return list(session.exec(select(Person).order_by(col(Person.id))))


def notifications(engine: Engine) -> list[Notification]:
    with read_session(engine) as session:
        return list(session.exec(select(Notification)))


@pytest.mark.parametrize(
    ("encoding", "detected"),
    [("utf-8", "utf-8"), ("utf-8-sig", "utf-8-sig"), ("gbk", "gbk"), ("gb18030", "gbk")],
)
def test_csv_in_utf8_with_or_without_bom_or_gbk(
    any_engine: Engine, signer: NodeSigner, encoding: str, detected: str
) -> None:
    content = "\n".join([CN, *good_rows()]).encode(encoding)
    report = run(any_engine, signer, content)
    assert (report.format, report.encoding) == ("csv", detected)
    assert (report.rows, report.stored, report.bad) == (3, 3, 0)
    people = stored(any_engine)
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
    assert len(notifications(any_engine)) == 2


def test_a_file_in_neither_encoding_is_refused(any_engine: Engine, signer: NodeSigner) -> None:
    with pytest.raises(FileRefused, match="neither UTF-8 nor GBK"):
        run(any_engine, signer, "身份证号".encode() + b"\xff\xff\xff\x80\n")


def test_xlsx_with_date_cells_and_numeric_codes(any_engine: Engine, signer: NodeSigner) -> None:
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
    report = run(any_engine, signer, buffer.getvalue())
    assert (report.format, report.encoding) == ("xlsx", None)
    assert (report.rows, report.stored) == (3, 2)
    assert [(b.line, [e.model_dump() for e in b.errors]) for b in report.bad_rows] == [
        (5, [{"field": "arrived_on", "reason": "is in the future"}])
    ]
    assert [(p.birth_date, p.host_node, p.arrived_on) for p in stored(any_engine)] == [
        (date(1995, 3, 8), HERE, date(2026, 1, 2)),
        (date(1995, 3, 8), HERE, date(2026, 1, 3)),
    ]


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (CN + ",备注", "the header's column 13 is not a known column"),
        ("身份证号,王秀英,性别,出生日期,现居住地代码", "the header's column 2 is not a known column"),
        ("身份证号,姓名,性别,出生日期", "required column(s) missing: host_node"),
        ("身份证号,姓名,性别,出生日期,现居住地代码,id_number", "column 'id_number' appears twice"),
        (f"{number(1)},王秀英,女,1995-03-08,{HERE}", "looks like data"),
        ("", "header row is needed"),
    ],
)
def test_a_header_it_does_not_know_refuses_the_whole_file(
    any_engine: Engine, signer: NodeSigner, header: str, message: str
) -> None:
    content = "\n".join([header, *good_rows()]).encode() if header else b""
    with pytest.raises(FileRefused, match=message.replace("(", r"\(").replace(")", r"\)")) as info:
        run(any_engine, signer, content)
    assert number(1) not in str(info.value.problem())
    assert "王秀英" not in str(info.value.problem())  # never a cell's value (a data row as the header)
    assert "备注" not in str(info.value.problem())
    assert stored(any_engine) == []


def test_bad_rows_are_reported_by_line_and_nothing_of_them_is_stored(
    any_engine: Engine, signer: NodeSigner
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
    report = run(any_engine, signer, "\n".join(rows).encode())
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
    assert [p.name for p in stored(any_engine)] == ["王秀英", "李建国"]
    text = report.model_dump_json()
    for value in (wrong_check, number(5), "赵敏", "钱芳", "已婚"):
        assert value not in text  # field and reason, never the value


def test_a_number_registered_already_is_a_per_row_error(any_engine: Engine, signer: NodeSigner) -> None:
    run(any_engine, signer, "\n".join([CN, good_rows()[1]]).encode())
    first = stored(any_engine)[0]
    report = run(any_engine, signer, "\n".join([CN, *good_rows()]).encode())
    assert [(b.line, b.errors[0].field, b.errors[0].reason) for b in report.bad_rows] == [
        (3, "id_number", f"duplicate_person: registered already as person {first.id}")
    ]
    assert report.stored == 2


def test_look_alikes_are_stored_and_reported(any_engine: Engine, signer: NodeSigner) -> None:
    run(any_engine, signer, "\n".join([CN, good_rows()[0]]).encode())
    first = stored(any_engine)[0]
    other = f"{number(11)},王秀英,女,1995-03-08,,{HERE},,,,,,"  # same name, birth, sex; another number
    report = run(any_engine, signer, "\n".join([CN, other]).encode())
    second = stored(any_engine)[1]
    assert [r.model_dump() for r in report.possible_duplicates] == [
        {"line": 2, "id": second.id, "possible_duplicates": [first.id]}
    ]


def test_a_dry_run_validates_everything_and_stores_nothing(any_engine: Engine, signer: NodeSigner) -> None:
    rows = [CN, *good_rows(), f"{number(5)},钱芳,女,1995-03-09,,{HERE},,,,,,"]
    with write_transactions(any_engine) as writes:
        report = run(any_engine, signer, "\n".join(rows).encode(), dry_run=True)
    assert (report.dry_run, report.rows, report.stored, report.bad, report.notifications) == (
        True,
        4,
        0,
        1,
        0,
    )
    assert [b.line for b in report.bad_rows] == [5]
    assert writes == []  # read sessions only: never the write lock
    assert stored(any_engine) == []
    assert notifications(any_engine) == []


def test_a_dry_run_needs_no_write_lock(engine: Engine, signer: NodeSigner, tmp_path: Path) -> None:
    """Another process holding SQLite's write lock does not hold up a dry run (nor make it fail)."""
    run(engine, signer, "\n".join([CN, good_rows()[1]]).encode())
    other = sqlite3.connect(tmp_path / "register.db", isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # the write lock, held by "another process"
        report = run(engine, signer, "\n".join([CN, *good_rows()]).encode(), dry_run=True)
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert (report.rows, report.stored, report.bad) == (3, 0, 1)
    assert report.bad_rows[0].errors[0].reason.startswith("duplicate_person: registered already as person")


def test_good_rows_are_stored_one_transaction_per_batch(any_engine: Engine, signer: NodeSigner) -> None:
    rows = [CN, *(f"{number(i)},人{i},女,1995-03-08,,{HERE},,,,,," for i in range(20, 27))]
    seen: list[int] = []
    with write_transactions(any_engine) as writes:
        report = run(any_engine, signer, "\n".join(rows).encode(), batch_size=3, progress=seen.append)
    assert report.stored == 7
    assert writes == [3, 6, 7]  # the register's size as each transaction commits
    assert seen[-1] == 7


def test_importing_the_same_file_again_changes_nothing(any_engine: Engine, signer: NodeSigner) -> None:
    content = "\n".join([CN, *good_rows(), f"{number(5)},钱芳,女,1995-03-09,,{HERE},,,,,,"]).encode()
    first = run(any_engine, signer, content, batch_size=2)
    before = [p.model_dump() for p in stored(any_engine)]
    sent = len(notifications(any_engine))
    again = run(any_engine, signer, content, batch_size=2)
    assert (first.stored, again.stored, again.rows, again.bad) == (3, 0, 4, 4)
    ids = {p["name"]: p["id"] for p in before}
    assert [(b.line, b.errors[0].reason) for b in again.bad_rows] == [
        (2, f"duplicate_person: registered already as person {ids['王秀英']}"),
        (3, f"duplicate_person: registered already as person {ids['李建国']}"),
        (4, f"duplicate_person: registered already as person {ids['张丽']}"),
        (5, "disagrees with the ID number (digits 7-14)"),
    ]
    assert (again.notifications, again.possible_duplicates) == (0, [])
    assert [p.model_dump() for p in stored(any_engine)] == before
    assert len(notifications(any_engine)) == sent


def test_look_alikes_within_a_batch_across_batches_and_in_a_dry_run(
    any_engine: Engine, signer: NodeSigner
) -> None:
    alike = [f"{number(i)},王秀英,女,1995-03-08,,{HERE},,,,,," for i in (31, 32, 33)]
    other = f"{number(34)},王秀云,女,1995-03-08,,{HERE},,,,,,"
    dry = run(any_engine, signer, "\n".join([CN, *alike, other]).encode(), batch_size=2, dry_run=True)
    assert dry.possible_duplicates == []  # nothing registered yet: nothing to look alike
    report = run(any_engine, signer, "\n".join([CN, *alike, other]).encode(), batch_size=2)
    a, b, c, _ = (p.id for p in stored(any_engine))
    assert [r.model_dump() for r in report.possible_duplicates] == [
        {"line": 2, "id": a, "possible_duplicates": [b]},  # the same batch: each names the other
        {"line": 3, "id": b, "possible_duplicates": [a]},
        {"line": 4, "id": c, "possible_duplicates": [a, b]},  # the next batch: both stored before
    ]
    fourth = f"{number(35)},王秀英,女,1995-03-08,,{HERE},,,,,,"
    dry = run(any_engine, signer, "\n".join([CN, fourth]).encode(), dry_run=True)
    assert [r.model_dump() for r in dry.possible_duplicates] == [
        {"line": 2, "id": None, "possible_duplicates": [a, b, c]}
    ]


def test_a_failing_read_stops_the_import_with_the_batches_before_stored(
    any_engine: Engine, signer: NodeSigner
) -> None:
    def rows() -> Iterator[tuple[int, list[Any]]]:
        for i in range(5):
            yield i + 2, [number(40 + i), f"人{i}", "女", "1995-03-08", HERE]
        raise OSError("the upload broke off")

    table = importer.Table(
        "csv", "utf-8", ["id_number", "name", "sex", "birth_date", "host_node"], rows(), None
    )
    with pytest.raises(OSError, match="broke off"):
        importer.import_people(signer, table, "op", engine=any_engine, batch_size=2)
    assert [p.name for p in stored(any_engine)] == ["人0", "人1", "人2", "人3"]


def test_a_database_error_while_storing_quotes_no_row(any_engine: Engine, signer: NodeSigner) -> None:
    """A value the column refuses (a staff name over 64 characters: the only column not validated
    before) stops the import with an error that quotes nothing of the row. SQLite does not check
    VARCHAR lengths (nor did it before: the ORM's insert was the same)."""
    content = "\n".join([CN, good_rows()[1]]).encode()
    if any_engine.dialect.name != "postgresql":
        assert run_as(any_engine, signer, content, "x" * 65).stored == 1
        return
    with pytest.raises(RuntimeError, match=r"^copying the chunk failed \(SQLSTATE 22001\)$") as info:
        run_as(any_engine, signer, content, "x" * 65)
    assert info.value.__cause__ is None
    assert info.value.__suppress_context__
    assert stored(any_engine) == []


def run_as(engine: Engine, signer: NodeSigner, content: bytes, staff: str) -> ImportReport:
    return importer.import_people(signer, importer.read_table(content), staff, engine=engine)


@contextmanager
def write_transactions(engine: Engine) -> Iterator[list[int]]:
    """The register's size as each write transaction on ``engine`` commits (read sessions not counted)."""
    sizes: list[int] = []

    def before_commit(session: OrmSession) -> None:
        if session.get_bind() is engine and not session.info.get(READ_ONLY):
            sizes.append(session.execute(select(func.count()).select_from(Person)).scalar_one())

    event.listen(OrmSession, "before_commit", before_commit)
    try:
        yield sizes
    finally:
        event.remove(OrmSession, "before_commit", before_commit)


def test_an_import_at_her_origin_issues_her_certificate(any_engine: Engine) -> None:
    """信息登记入库即视为婚育证明办理: a woman with a marital status imported at her origin holds it."""
    with transaction(any_engine) as tx:
        tx.add(LocalNode(node_id=ORIGIN, name="太康县", active_keyid=f"{ORIGIN}/k1"))
    rows = [
        CN,
        f"{number(1)},王秀英,女,1995-03-08,,{HERE},,,初婚,2018-05-01,,",  # hers: issued
        f"{number(2)},李娟,女,1995-03-08,,{HERE},,,,,,",  # no marital status: none
        f"{number(3)},张丽,女,1995-03-08,,{HERE},,,未婚,,,",  # issued
    ]
    report = run(any_engine, factories.signer(ORIGIN), "\n".join(rows).encode(), batch_size=2)
    assert (report.stored, report.certificates, report.notifications) == (3, 2, 0)
    with read_session(any_engine) as session:
        holders = session.exec(select(Person.name).join(Certificate, col(Certificate.person_id) == Person.id))
        assert sorted(holders) == ["张丽", "王秀英"]


def test_two_imports_of_the_same_file_at_once_store_each_person_once(any_engine: Engine) -> None:
    """Each row is stored by one import and reported registered already by the other (on
    PostgreSQL a chunk that loses the race on a number is checked and stored again)."""
    rows = 400
    content = "\n".join(
        [CN, *(f"{number(i % 50, birth=date(1990, 1, 1) + timedelta(days=i // 50))},人{i},女,"
               f"{date(1990, 1, 1) + timedelta(days=i // 50)},,{HERE},,,,,," for i in range(rows))]
    ).encode()  # fmt: skip
    reports: list[ImportReport] = []
    failures: list[BaseException] = []

    def one() -> None:
        try:
            reports.append(run(any_engine, factories.signer(), content, batch_size=25))
        except BaseException as exc:  # reported below, not lost in the thread
            failures.append(exc)

    threads = [threading.Thread(target=one) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert sum(r.stored for r in reports) == rows
    assert sum(r.bad for r in reports) == rows
    assert all(
        b.errors[0].reason.startswith("duplicate_person: registered") for r in reports for b in r.bad_rows
    )
    assert len(stored(any_engine)) == rows


def test_a_chunk_that_loses_a_race_is_stored_on_the_next_attempt(
    any_engine: Engine, signer: NodeSigner, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = bulk.insert
    raised: list[int] = []

    def insert_losing_once(*args: Any) -> dict[str, int]:
        if not raised:
            raised.append(1)
            raise bulk.Conflict("registered meanwhile")
        return real(*args)

    monkeypatch.setattr(bulk, "insert", insert_losing_once)
    report = run(any_engine, signer, "\n".join([CN, *good_rows()]).encode())
    assert (raised, report.stored, report.bad) == ([1], 3, 0)
    assert len(stored(any_engine)) == 3
