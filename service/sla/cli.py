"""``yipanqi report``: the monthly report as a table, CSV or XLSX."""

from __future__ import annotations

import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from service.db import new_session
from service.errors import DomainError
from service.sla import report as reports
from service.sla.schemas import DIMENSION_NAMES, DIRECTION_NAMES, MonthlyReport

FORMATS = ("table", "csv", "xlsx")


def run_report(console: Console, month: str, format: str, output: Path | None, *, regenerate: bool) -> int:
    if format not in FORMATS:
        console.print(f"[red]error:[/red] --format must be one of {', '.join(FORMATS)}")
        return 2
    if format == "xlsx" and output is None:
        console.print("[red]error:[/red] --format xlsx needs --output FILE")
        return 2
    with new_session() as session:
        try:
            if regenerate:
                report = reports.generate_report(session, month)
            else:
                report, _ = reports.ensure_report(session, month)
        except DomainError as exc:
            console.print(f"[red]error:[/red] {exc.detail}")
            return 2
        session.commit()
    if format == "table":
        _table(console, report)
        return 0
    body = reports.to_csv(report) if format == "csv" else reports.to_xlsx(report)
    if output is None:
        sys.stdout.buffer.write(body)
        sys.stdout.buffer.flush()
    else:
        output.write_bytes(body)
        console.print(
            f"wrote {output}: {report.month}, {len(report.rows)} rows, {report.below_target} below target"
        )
    return 0


def _table(console: Console, report: MonthlyReport) -> None:
    title = f"{report.month} 月报 节点 {report.node_id} (上报截止 {report.due_by})"
    table = Table(*reports.HEADERS, title=title)
    for row in report.rows:
        rate = f"{row.rate:.2%}" if row.rate is not None else "—"
        style = "red" if row.below_target else None
        table.add_row(
            row.metric_name,
            DIRECTION_NAMES[row.direction],
            DIMENSION_NAMES[row.dimension],
            row.value,
            str(row.numerator),
            str(row.denominator),
            rate,
            f"{row.target:.0%}" if row.target is not None else "",
            "是" if row.below_target else "",
            style=style,
        )
    console.print(table)
    console.print(f"generated {report.generated_at.isoformat()}; {report.below_target} row(s) below target")
