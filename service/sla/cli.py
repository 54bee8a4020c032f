"""``yipanqi report``: the monthly report as a table, CSV or XLSX."""

from __future__ import annotations

import sys
from datetime import datetime
from pathlib import Path

from rich.console import Console
from rich.table import Column, Table

from service.db import read_session
from service.errors import DomainError
from service.sla import report as reports
from service.sla.deadlines import SHANGHAI
from service.sla.schemas import DIMENSION_NAMES, METRIC_NAMES, MonthlyReport, RateRow

FORMATS = ("table", "csv", "xlsx")


def run_report(console: Console, month: str, format: str, output: Path | None, *, regenerate: bool) -> int:
    if format not in FORMATS:
        console.print(f"[red]error:[/red] --format must be one of {', '.join(FORMATS)}")
        return 2
    if format == "xlsx" and output is None:
        console.print("[red]error:[/red] --format xlsx needs --output FILE")
        return 2
    with read_session() as session:
        try:
            if regenerate:
                report = reports.generate_report(session, month)
            else:
                report, _ = reports.ensure_report(session, month)
        except DomainError as exc:
            console.print(f"[red]error:[/red] {exc.detail}")
            return 2
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


# Short names for the side, so that a row fits in 80 columns; the legend under the title explains them.
SIDES = {"incoming": "应答方", "outgoing": "发起方", "node": "本节点"}


def _table(console: Console, report: MonthlyReport) -> None:
    """One small table per metric under its full name: readable at 80 columns."""
    console.print(f"[bold]{report.month} 月报[/bold]  节点 {report.node_id}  上报截止 {report.due_by}")
    console.print(f"统计期 {_shanghai(report.period_start)} 至 {_shanghai(report.period_end)}（北京时间）")
    console.print("应答方：本节点被协查、接收通报；发起方：本节点发起协查、发送通报")
    by_metric: dict[str, list[RateRow]] = {metric: [] for metric in METRIC_NAMES}
    for row in report.rows:
        by_metric.setdefault(row.metric, []).append(row)
    for metric, group in by_metric.items():
        if not group:
            continue
        first = group[0]
        target = f"  目标 {first.target:.0%}" if first.target is not None else ""
        console.print()
        console.print(f"[bold]{first.metric_name}[/bold] {metric}{target}")
        numbers = [Column(name, justify="right") for name in ("分子", "分母", "比率")]
        table = Table("方向", "分组", *numbers, "低于目标")
        for row in group:
            table.add_row(
                SIDES[row.direction],
                _group(row),
                str(row.numerator),
                str(row.denominator),
                f"{row.rate:.2%}" if row.rate is not None else "—",
                "是" if row.below_target else "",
                style="red" if row.below_target else None,
            )
        console.print(table)
    console.print(
        f"生成于 {_shanghai(report.generated_at, seconds=True)} 北京时间 (UTC+08:00)；"
        f"{report.below_target} 行低于目标"
    )


def _group(row: RateRow) -> str:
    name = DIMENSION_NAMES[row.dimension]
    return f"{name} {row.value}" if row.value and row.dimension != "all" else name


def _shanghai(value: datetime, *, seconds: bool = False) -> str:
    return value.astimezone(SHANGHAI).strftime("%Y-%m-%d %H:%M:%S" if seconds else "%Y-%m-%d %H:%M")
