"""月报: the month's rates against the targets, stored once generated, exported as CSV and XLSX.

A report is for a complete month (Asia/Shanghai). ``ensure_report`` returns the stored one or
generates and stores it (the scheduler's job on the 1st, the staff API and the CLI all go through
it, so a second run adds nothing); ``generate_report`` computes it anew and replaces what was
stored (an explicit regeneration). Reports are due before the 5th of the next month (``due_by``
is the 4th).
"""

from __future__ import annotations

import csv
import io
from datetime import date, timedelta

from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, select

from service.certificates.service import local_node_id
from service.clock import utcnow
from service.config import Settings, get_settings
from service.db import transaction
from service.models import MonthlyReport as StoredReport
from service.sla.rates import month_bounds, month_rates, next_month, parse_month, require_complete
from service.sla.schemas import DIMENSION_NAMES, DIRECTION_NAMES, MonthlyReport, RateRow

DUE_DAY = 5  # "月报于次月5日前上报"


def targets(settings: Settings) -> dict[str, float]:
    """Each metric's target from the settings (the key-target variants share their metric's)."""
    return {
        "feedback_rate": settings.target_feedback_rate,
        "key_target_feedback_rate": settings.target_feedback_rate,
        "processing_rate": settings.target_processing_rate,
        "send_receive_rate": settings.target_send_receive_rate,
        "key_send_receive_rate": settings.target_send_receive_rate,
        "check_rate": settings.target_check_rate,
        "accuracy_rate": settings.target_accuracy_rate,
    }


def due_by(first: date) -> date:
    return next_month(first).replace(day=DUE_DAY) - timedelta(days=1)


def previous_month(today: date) -> date:
    """The first day of the month before ``today``'s month."""
    last = today.replace(day=1) - timedelta(days=1)
    return last.replace(day=1)


def compute_report(session: Session, month: str, settings: Settings | None = None) -> MonthlyReport:
    """The report as it would read now (nothing stored); 422 for a bad or incomplete month."""
    first = parse_month(month)
    require_complete(first)
    goals = targets(settings or get_settings())
    rows: list[RateRow] = []
    for row in month_rates(session, first):
        target = goals[row.metric]
        below = row.rate is not None and row.rate < target
        rows.append(row.model_copy(update={"target": target, "below_target": below}))
    start, end = month_bounds(first)
    return MonthlyReport(
        month=f"{first:%Y-%m}",
        node_id=local_node_id(session),
        generated_at=utcnow(),
        period_start=start,
        period_end=end,
        due_by=due_by(first),
        targets=goals,
        rows=rows,
        below_target=sum(r.below_target for r in rows),
    )


def stored_report(session: Session, month: str) -> MonthlyReport | None:
    first = parse_month(month)
    row = session.exec(select(StoredReport).where(StoredReport.month == f"{first:%Y-%m}")).first()
    return MonthlyReport.model_validate_json(row.content) if row is not None else None


def generate_report(session: Session, month: str, settings: Settings | None = None) -> MonthlyReport:
    """Compute the month's report (reading with ``session``), then store it in one short
    transaction, replacing a stored one."""
    report = compute_report(session, month, settings)
    content = report.model_dump_json()
    with transaction(session) as tx:
        row = tx.exec(select(StoredReport).where(StoredReport.month == report.month)).first()
        if row is None:
            row = StoredReport(month=report.month, generated_at=report.generated_at, content="")
        row.generated_at, row.content = report.generated_at, content
        tx.add(row)
    return report


def ensure_report(
    session: Session, month: str, settings: Settings | None = None
) -> tuple[MonthlyReport, bool]:
    """The stored report, or a new one generated and stored; ``True`` when this call generated it.

    Computed while reading, stored in one short transaction. Two replicas racing: the loser's
    insert hits the unique month and it returns the winner's report.
    """
    existing = stored_report(session, month)
    if existing is not None:
        return existing, False
    report = compute_report(session, month, settings)
    content = report.model_dump_json()
    try:
        with transaction(session) as tx:
            tx.add(StoredReport(month=report.month, generated_at=report.generated_at, content=content))
    except IntegrityError:
        session.commit()  # a fresh snapshot, which holds the winner's row
        winner = stored_report(session, month)
        assert winner is not None
        return winner, False
    return report, True


HEADERS = ["指标", "方向", "分组方式", "分组", "分子", "分母", "比率", "目标", "低于目标"]
FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def neutralise(value: object) -> object:
    """A text cell that a spreadsheet would read as a formula (= + - @, tab, CR) gets a leading
    apostrophe, in CSV and XLSX alike (CSV/formula injection); numbers are left as they are."""
    if isinstance(value, str) and value.startswith(FORMULA_STARTS):
        return "'" + value
    return value


def _cells(row: RateRow) -> list[object]:
    return [neutralise(cell) for cell in _raw_cells(row)]


def _raw_cells(row: RateRow) -> list[object]:
    return [
        row.metric_name,
        DIRECTION_NAMES[row.direction],
        DIMENSION_NAMES[row.dimension],
        row.value,
        row.numerator,
        row.denominator,
        round(row.rate, 4) if row.rate is not None else "",
        row.target if row.target is not None else "",
        "是" if row.below_target else "",
    ]


def _title(report: MonthlyReport) -> list[object]:
    cells = [
        f"{report.month} 流动人口信息交换月报",
        f"节点 {report.node_id}",
        f"生成时间 {report.generated_at.isoformat()}",
        f"上报截止 {report.due_by.isoformat()}",
    ]
    return [neutralise(cell) for cell in cells]


def to_csv(report: MonthlyReport) -> bytes:
    """UTF-8 with BOM (Excel opens it as Unicode), Chinese headers, one line per rate."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\r\n")
    writer.writerow(_title(report))
    writer.writerow(HEADERS)
    for row in report.rows:
        writer.writerow(_cells(row))
    return out.getvalue().encode("utf-8-sig")


BELOW_COLOR = "FFC7CE"  # the fill of a row below its target


def to_xlsx(report: MonthlyReport) -> bytes:
    """One sheet, Chinese headers, rows below their target filled red."""
    # Imported here: openpyxl (and the numpy it loads when installed) costs every process start
    # a tenth of a second, and only a spreadsheet download needs it.
    from openpyxl import Workbook
    from openpyxl.styles import Font, PatternFill

    below = PatternFill("solid", start_color=BELOW_COLOR, end_color=BELOW_COLOR)
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.title = f"{report.month}月报"
    sheet.append(_title(report))
    sheet.append(HEADERS)
    for cell in sheet[2]:
        cell.font = Font(bold=True)
    for row in report.rows:
        sheet.append(_cells(row))
        if row.below_target:
            for cell in sheet[sheet.max_row]:
                cell.fill = below
    for column, width in zip("ABCDEFGHI", (30, 20, 10, 28, 10, 10, 10, 8, 10), strict=True):
        sheet.column_dimensions[column].width = width
    sheet.freeze_panes = "A3"
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()
