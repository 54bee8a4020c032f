"""The monthly report: bad input, targets, storage (idempotent), CSV/XLSX, the staff API and the CLI."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from datetime import date, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from openpyxl import load_workbook
from pydantic import ValidationError
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.certificates.rates import node_check_rate
from service.clock import clock
from service.config import Settings
from service.db import make_engine
from service.errors import ValidationFailed
from service.localnet import LocalNode
from service.models import (
    CaseStatus,
    CertificateCheck,
    Direction,
    LookupPurpose,
    MonthlyReport,
    Outcome,
    Role,
    Topic,
    VerificationCase,
)
from service.sla import report as reports
from service.sla.jobs import monthly_report_job
from service.staff.service import create_staff
from tests.certificates.factories import person
from tests.conftest import NetworkFactory, clock_offset
from tests.sla.test_rates import case, end_of, engine, sh, traffic

__all__ = ["engine"]  # the both-backends fixture, shared with the rate tests
# A node process's clock, whatever today is: October 2026 is complete, the report is due.
NOVEMBER = {"YIPANQI_CLOCK_OFFSET_SECONDS": clock_offset(at=sh("2026-11-20 10:00"))}


@pytest.fixture(autouse=True)
def _clock() -> Iterator[None]:
    clock.freeze(sh("2026-11-01 00:07"))
    yield
    clock.reset()


@pytest.mark.parametrize("month", ["2026-13", "2026-1", "oct", "2026-10-01", "1999-12", ""])
def test_a_month_that_does_not_parse_is_refused(engine: Engine, month: str) -> None:
    with Session(engine) as session, pytest.raises(ValidationFailed) as error:
        reports.ensure_report(session, month)
    assert error.value.extra["errors"][0]["field"] == "month"


@pytest.mark.parametrize("month", ["2026-11", "2026-12", "2027-01"])
def test_the_current_or_a_future_month_is_refused(engine: Engine, month: str) -> None:
    with Session(engine) as session, pytest.raises(ValidationFailed, match="not over yet"):
        reports.generate_report(session, month)


def test_october_is_complete_at_midnight_shanghai_not_utc(engine: Engine) -> None:
    clock.freeze(sh("2026-10-31 23:59"))  # already 1 November? no: still October in Shanghai
    with Session(engine) as session, pytest.raises(ValidationFailed):
        reports.compute_report(session, "2026-10")
    clock.freeze(sh("2026-11-01 00:00"))  # 31 October 16:00 UTC: October is over in Shanghai
    with Session(engine) as session:
        assert reports.compute_report(session, "2026-10").month == "2026-10"


@pytest.mark.parametrize("value", ["0", "-0.5", "1.01"])
@pytest.mark.parametrize(
    "name",
    ["target_feedback_rate", "target_processing_rate", "target_send_receive_rate", "target_check_rate"],
)
def test_a_target_outside_zero_to_one_is_refused_with_its_name(name: str, value: str) -> None:
    with pytest.raises(ValidationError) as error:
        Settings(**{name: value})  # type: ignore[arg-type]
    assert error.value.errors()[0]["loc"] == (name,)


def test_rows_below_target_are_marked_and_the_report_is_stored_once(engine: Engine) -> None:
    with Session(engine) as session:
        session.add_all(traffic())
        session.commit()
        report, generated = reports.ensure_report(session, "2026-10", Settings(target_feedback_rate=0.4))
        session.commit()
    assert generated
    assert report.due_by.isoformat() == "2026-11-04"
    rows = {(r.metric, r.direction, r.dimension, r.value): r for r in report.rows}
    assert not rows[("feedback_rate", "incoming", "all", "")].below_target  # 2/5 = 0.4, not below 0.4
    assert rows[("feedback_rate", "incoming", "peer", "411627")].below_target  # 1/3
    assert rows[("send_receive_rate", "outgoing", "all", "")].below_target  # 2/3 < 0.96
    assert not rows[("check_rate", "node", "year", "2026")].below_target  # 0/0: no rate, not below
    assert report.below_target == sum(r.below_target for r in report.rows) > 0

    clock.advance(timedelta(days=2))
    with Session(engine) as session:
        session.add_all(traffic())  # more traffic after the report: a read does not change it
        session.commit()
        again, generated = reports.ensure_report(session, "2026-10")
        session.commit()
        assert not generated
        assert again == report
        assert session.exec(select(func.count()).select_from(MonthlyReport)).one() == 1
        fresh = reports.generate_report(session, "2026-10")  # explicit regeneration replaces it
        session.commit()
        assert fresh.generated_at > report.generated_at
        assert reports.stored_report(session, "2026-10") == fresh
        assert session.exec(select(func.count()).select_from(MonthlyReport)).one() == 1


def test_csv_has_a_bom_and_chinese_headers_and_xlsx_fills_rows_below_target(engine: Engine) -> None:
    with Session(engine) as session:
        session.add_all(traffic())
        session.commit()
        report = reports.compute_report(session, "2026-10")
    body = reports.to_csv(report)
    assert body.startswith(b"\xef\xbb\xbf")
    lines = body.decode("utf-8-sig").splitlines()
    assert lines[1].split(",")[:3] == ["指标", "方向", "分组方式"]
    assert any(line.startswith("协查信息反馈率,应答方(被协查/接收),合计,,2,5,0.4,0.96,是") for line in lines)
    sheet = load_workbook(io.BytesIO(reports.to_xlsx(report))).active
    assert sheet is not None
    assert [c.value for c in sheet[2]][:2] == ["指标", "方向"]
    for excel_row, row in zip(sheet.iter_rows(min_row=3), report.rows, strict=True):
        filled = excel_row[0].fill.fgColor.rgb.endswith("FFC7CE")
        assert filled == row.below_target


def test_the_job_stores_last_month_once_on_the_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'job.db'}"
    from service import db

    engine = make_engine(url)
    from service.migrations import upgrade

    upgrade(engine)
    monkeypatch.setattr(db, "get_engine", lambda: engine)
    monthly_report_job()
    monthly_report_job()  # a second run (or replica) adds nothing
    with Session(engine) as session:
        stored = session.exec(select(MonthlyReport)).all()
    assert [r.month for r in stored] == ["2026-10"]
    engine.dispose()


def _token(node: LocalNode, role: Role) -> str:
    engine = make_engine(node.database_url)
    try:
        with Session(engine) as session:
            session.add_all(traffic())
            _, secret = create_staff(session, username=f"{role.value}-r", role=role)
            session.commit()
    finally:
        engine.dispose()
    return secret


def test_staff_api_json_csv_xlsx_and_bad_months(sqlite_network: NetworkFactory) -> None:
    node = sqlite_network([("410105", "金水区")], env=NOVEMBER)[0]
    secret = _token(node, Role.auditor)
    headers = {"Authorization": f"Bearer {secret}"}
    with httpx.Client(base_url=node.url, headers=headers, timeout=30.0) as client:
        answer = client.get("/api/v1/reports/2026-10")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["month"] == "2026-10"
        assert body["below_target"] > 0
        assert client.get("/api/v1/reports/2026-10").json() == body  # stored: the same when read again
        csv_answer = client.get("/api/v1/reports/2026-10.csv")
        assert csv_answer.status_code == 200
        assert csv_answer.content.startswith(b"\xef\xbb\xbf")
        xlsx = client.get("/api/v1/reports/2026-10.xlsx")
        assert xlsx.status_code == 200
        assert xlsx.content.startswith(b"PK")
        for bad in ("2026-13", "2099-01", "last-month"):
            problem = client.get(f"/api/v1/reports/{bad}")
            assert problem.status_code == 422, bad
            assert problem.json()["errors"][0]["field"] == "month"
        assert client.post("/api/v1/reports/2026-10/regenerate").status_code == 403  # auditor
        assert client.get("/api/v1/reports/2026-10", headers={"Authorization": "Bearer x"}).status_code == 401


def test_cli_report_table_csv_and_bad_month(sqlite_network: NetworkFactory, tmp_path: Path) -> None:
    node = sqlite_network([("410105", "金水区")], start=False, env=NOVEMBER)[0]
    _token(node, Role.operator)
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIPANQI_")}
    env.update(
        {
            "YIPANQI_DATA_DIR": str(node.data_dir),
            "YIPANQI_DATABASE_URL": node.database_url,
            "COLUMNS": "200",
            **NOVEMBER,
        }
    )

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        return subprocess.run(
            [sys.executable, "-m", "service", "report", *args], env=env, capture_output=True
        )

    table = run("--month", "2026-10")
    assert table.returncode == 0, table.stderr
    assert "协查信息反馈率" in table.stdout.decode()
    out = tmp_path / "r.csv"
    assert run("--month", "2026-10", "--format", "csv", "--output", str(out)).returncode == 0
    assert out.read_bytes().startswith(b"\xef\xbb\xbf")
    assert run("--month", "2026-10", "--format", "xlsx", "--output", str(tmp_path / "r.xlsx")).returncode == 0
    bad = run("--month", "2026-13")
    assert bad.returncode == 2
    assert "month" in bad.stdout.decode()


def _check(number: str, at: datetime) -> CertificateCheck:
    return CertificateCheck(
        message_id=str(uuid.uuid4()),
        id_number=number,
        subject_name="某某",
        origin_node="411627",
        purpose=LookupPurpose.residence_check,
        found=True,
        checked_at=at,
        response_body=b"{}",
        response_signature_input="yp=()",
        response_signature="yp=::",
    )


def test_a_month_regenerated_after_later_activity_reads_the_same(engine: Engine) -> None:
    """Every figure of October depends only on what happened by 24:00 on 31 October (Shanghai)."""
    clock.freeze(sh("2026-03-01 09:00"))
    early = person("411627", date(1990, 3, 8), 1, host="410105", arrived_on=date(2026, 2, 1))
    late = person("411627", date(1991, 4, 9), 2, host="410105", arrived_on=date(2026, 2, 1))
    open_accuracy = case(Direction.incoming, end_of("2026-10-28"), topic=Topic.record_accuracy)
    with Session(engine, expire_on_commit=False) as session:
        session.add_all([*traffic(), early, late, open_accuracy])
        session.add_all(
            [
                _check(early.id_number, sh("2026-04-01 10:00")),
                _check(early.id_number, sh("2026-10-31 23:59")),
                _check(late.id_number, sh("2026-05-01 10:00")),
            ]
        )
        session.commit()
    clock.freeze(sh("2026-11-01 00:07"))
    with Session(engine) as session:
        before = reports.generate_report(session, "2026-10")
        session.commit()
    rows = {(r.metric, r.direction, r.dimension, r.value): r for r in before.rows}
    check = rows[("check_rate", "node", "year", "2026")]
    assert (check.numerator, check.denominator) == (1, 2)
    accuracy = rows[("accuracy_rate", "incoming", "all", "")]
    assert (accuracy.numerator, accuracy.denominator) == (1, 2)  # F confirmed, G not; the open one unanswered

    # November: the second look-up of the other woman, a woman entered in the register with two
    # look-ups, a late answer to October's open accuracy case, a late ack of October's arrival.
    clock.freeze(sh("2026-11-20 10:00"))
    newcomer = person("411627", date(1992, 5, 10), 3, host="410105", arrived_on=date(2026, 3, 1))
    with Session(engine) as session:
        session.add(newcomer)
        session.add_all(
            [
                _check(late.id_number, sh("2026-11-02 10:00")),
                _check(newcomer.id_number, sh("2026-11-03 10:00")),
                _check(newcomer.id_number, sh("2026-11-04 10:00")),
            ]
        )
        stored = session.get(VerificationCase, open_accuracy.id)
        assert stored is not None
        stored.status, stored.outcome = CaseStatus.answered, Outcome.confirmed
        stored.answered_at = stored.reply_received_at = sh("2026-11-20 10:00")
        session.commit()
        after = reports.generate_report(session, "2026-10")
        session.commit()
        year_so_far = node_check_rate(session, 2026)
    assert (year_so_far.numerator, year_so_far.denominator) == (3, 3)  # the year as it stands now
    assert after.generated_at > before.generated_at
    assert after.rows == before.rows


def test_text_cells_that_look_like_formulas_are_neutralised_in_csv_and_xlsx() -> None:
    import csv
    from datetime import UTC

    from service.sla.schemas import MonthlyReport, RateRow

    values = ['=HYPERLINK("http://x")', "+1", "-1", "@SUM(A1)", "\tx", "411627"]
    rows = [
        RateRow(
            metric="feedback_rate",
            metric_name="协查信息反馈率",
            direction="incoming",
            dimension="peer",
            value=value,
            numerator=1,
            denominator=2,
            rate=0.5,
            target=0.96,
            below_target=True,
        )
        for value in values
    ]
    report = MonthlyReport(
        month="2026-05",
        node_id="410105",
        generated_at=datetime(2026, 6, 1, 1, 0, tzinfo=UTC),
        period_start=datetime(2026, 4, 30, 16, 0, tzinfo=UTC),
        period_end=datetime(2026, 5, 31, 16, 0, tzinfo=UTC),
        due_by=date(2026, 6, 4),
        targets={"feedback_rate": 0.96},
        rows=rows,
        below_target=len(rows),
    )
    expected = ['\'=HYPERLINK("http://x")', "'+1", "'-1", "'@SUM(A1)", "'\tx", "411627"]
    lines = reports.to_csv(report).decode("utf-8-sig").split("\r\n")
    parsed = list(csv.reader(lines[2:-1]))
    assert [line[3] for line in parsed] == expected
    assert lines[0].startswith("2026-05 ")
    sheet = load_workbook(io.BytesIO(reports.to_xlsx(report))).active
    assert sheet is not None
    cells = [sheet.cell(row=3 + i, column=4) for i in range(len(values))]
    assert [c.value for c in cells] == expected
    assert all(c.data_type == "s" for c in cells)  # text, not a formula
    assert sheet.cell(row=3, column=5).value == 1  # numbers stay numbers
