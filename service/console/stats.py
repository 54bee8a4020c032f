"""统计: the SLA rates against their targets (this month and the last twelve), the monthly report
(月报) with its downloads and print view, and the role's notices (待阅提醒).

Thin: the rates are ``service.sla.rates.month_rates`` and the report ``service.sla.report`` — the
functions behind the staff API's /api/v1/reports — the notices ``service.notices.service``.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from markupsafe import Markup
from sqlmodel import Session

from service.clock import utcnow
from service.config import Settings
from service.console.auth import PREFIX, READERS, Actor, ConsoleUser, Reader, audit, source
from service.console.charts import Bar, bar_chart, trend_chart
from service.console.templating import add_nav, render
from service.db import SessionDep, transaction
from service.directory.service import peer_names
from service.errors import ValidationFailed
from service.models import ItemType, NoticeKind, Role
from service.names import KINDS as KIND_NAMES
from service.names import PRIORITIES as PRIORITY_NAMES
from service.names import TOPICS as TOPIC_NAMES
from service.notices import service as notices
from service.sla import report as reports
from service.sla.deadlines import SHANGHAI
from service.sla.rates import HEADLINES, month_rates, next_month, parse_month, require_complete
from service.sla.report import previous_month, targets
from service.sla.schemas import DIMENSION_NAMES, DIRECTION_NAMES, METRIC_NAMES, MonthlyReport, RateRow
from service.sla.warnings import prediction_quality

router = APIRouter(prefix=PREFIX, include_in_schema=False)
add_nav(40, "统计", f"{PREFIX}/stats", "反馈率、处理率等指标与目标对比，月报下载", READERS)

XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CHARTED: tuple[tuple[str, str], ...] = (*HEADLINES, ("check_rate", "node"))
BREAKDOWNS = ("peer", "topic", "priority", "kind")
NOTICE_NAMES = {
    NoticeKind.reminder: "到期提醒",
    NoticeKind.overdue: "已超期",
    NoticeKind.escalation: "督办",
    NoticeKind.flagged_lookup: "无依据查验提示",  # a look-up without standing, answered (any_trusted)
}
ITEM_LINKS = {
    ItemType.verification: f"{PREFIX}/cases/{{id}}",
    ItemType.notification: f"{PREFIX}/notifications/{{id}}",
    ItemType.person: f"{PREFIX}/people/{{id}}",
}
ITEM_NAMES = {ItemType.verification: "协查", ItemType.notification: "通报", ItemType.person: "人员"}
MonthPath = Annotated[str, Path(max_length=20)]


def metric_label(metric: str, direction: str) -> str:
    side = {"incoming": "（应答方）", "outgoing": "（发起方）", "node": ""}[direction]
    return f"{METRIC_NAMES[metric]}{side}"


def value_label(dimension: str, value: str, names: dict[str, str]) -> str:
    """A group's Chinese name: a peer's name and code, a topic, a priority, a kind."""
    if dimension == "peer":
        return f"{names[value]}（{value}）" if value in names else value
    if dimension == "topic":
        return TOPIC_NAMES.get(value, value)
    if dimension == "priority":
        return PRIORITY_NAMES.get(value, value)
    if dimension == "kind":
        item, _, kind = value.partition(":")
        if item == "verification":
            return f"协查·{TOPIC_NAMES.get(kind, kind)}"
        if item == "notification":
            return f"通报·{KIND_NAMES.get(kind, kind)}"
        return KIND_NAMES.get(value, value)
    return value


@dataclass(frozen=True)
class Figure:
    """A chart and the table of the same numbers."""

    heading: str
    svg: Markup
    bars: list[Bar]
    first_column: str


def _bar(row: RateRow, label: str, target: float | None) -> Bar:
    return Bar(label, row.numerator, row.denominator, row.rate, target)


def headline_figure(title: str, rows: list[RateRow], goals: dict[str, float]) -> Figure:
    index = {(r.metric, r.direction): r for r in rows if r.dimension in ("all", "year")}
    bars = [_bar(index[key], metric_label(*key), goals[key[0]]) for key in CHARTED if key in index]
    return Figure(title, bar_chart(title, bars), bars, "指标")


def breakdown_figures(
    rows: list[RateRow],
    metric: str,
    direction: str,
    goals: dict[str, float],
    names: dict[str, str],
    when: str,
) -> list[Figure]:
    figures = []
    for dimension in BREAKDOWNS:
        group = [r for r in rows if (r.metric, r.direction, r.dimension) == (metric, direction, dimension)]
        if not group:
            continue
        bars = [_bar(r, value_label(dimension, r.value, names), goals[metric]) for r in group]
        title = f"{when} {metric_label(metric, direction)}：按{DIMENSION_NAMES[dimension]}"
        figures.append(Figure(title, bar_chart(title, bars), bars, DIMENSION_NAMES[dimension]))
    return figures


def _today() -> date:
    return utcnow().astimezone(SHANGHAI).date()


def _months_back(current: date, count: int) -> list[date]:
    months = [current]
    for _ in range(count):
        months.append(previous_month(months[-1]))
    return list(reversed(months))


def _settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def _notices(session: Session, user: ConsoleUser, show_read: bool) -> tuple[list[dict[str, Any]], int]:
    items, total = notices.list_notices(
        session, user.staff, role=None, unread=None if show_read else True, page=1, page_size=50
    )
    shown = [
        {
            "id": n.id,
            "kind": NOTICE_NAMES[n.kind],
            "overdue": n.kind in (NoticeKind.overdue, NoticeKind.escalation),
            "item": f"{ITEM_NAMES[n.item_type]} {n.item_id}",
            "href": ITEM_LINKS[n.item_type].format(id=n.item_id),
            "due_at": n.due_at,
            "created_at": n.created_at,
            "read_at": n.read_at,
            "read_by": n.read_by,
        }
        for n in items
    ]
    return shown, total


def _choice(value: str) -> tuple[str, str]:
    metric, _, direction = value.partition(":")
    if (metric, direction) not in CHARTED:
        raise ValidationFailed(
            "unknown metric", errors=[{"field": "metric", "reason": "not a charted metric"}]
        )
    return metric, direction


@router.get("/stats")
def dashboard(
    request: Request,
    user: Reader,
    session: SessionDep,
    metric: Annotated[str, Query(max_length=60)] = "feedback_rate:incoming",
    read: Annotated[bool, Query()] = False,
) -> HTMLResponse:
    """This month so far and the last twelve (their monthly reports), against the targets;
    breakdowns; the notices."""
    try:
        chosen = _choice(metric)
    except ValidationFailed:
        return _error(request, user, "没有这个指标", "请从“指标”列表中选择要查看的指标。", 422)
    goals = targets(_settings(request))
    names = peer_names(session)
    current = _today().replace(day=1)
    months = _months_back(current, 12)
    # A closed month reads its stored monthly report (generated once, as the report page does);
    # only this month is computed on each request.
    by_month = {
        first: month_rates(session, first)
        if first == current
        else reports.ensure_report(session, f"{first:%Y-%m}", _settings(request))[0].rows
        for first in months
    }
    this_month = by_month[current]
    label = metric_label(*chosen)
    trend = []
    for first in months:
        row = next(
            r for r in by_month[first] if (r.metric, r.direction) == chosen and r.dimension in ("all", "year")
        )
        trend.append(
            Bar(
                f"{first:%Y-%m}", row.numerator, row.denominator, row.rate, goals[chosen[0]], f"{first:%y.%m}"
            )
        )
    trend_title = f"近 12 个月 {label}（{months[0]:%Y-%m} 至 {current:%Y-%m}）"
    trend_figure = Figure(trend_title, trend_chart(trend_title, trend, goals[chosen[0]]), trend, "月份")
    overview = [
        {
            "month": f"{first:%Y-%m}",
            "cells": [
                next(
                    _bar(r, "", goals[key[0]])
                    for r in by_month[first]
                    if (r.metric, r.direction) == key and r.dimension in ("all", "year")
                )
                for key in CHARTED
            ],
        }
        for first in reversed(months)
    ]
    last = previous_month(current)
    notice_rows, notice_total = _notices(session, user, read)
    context = {
        "current": f"{current:%Y-%m}",
        "headline": headline_figure(f"本月（{current:%Y-%m}，截至今日）各项指标", this_month, goals),
        "trend": trend_figure,
        "breakdowns": breakdown_figures(this_month, *chosen, goals, names, f"本月（{current:%Y-%m}）"),
        "choices": [(f"{m}:{d}", metric_label(m, d)) for m, d in CHARTED],
        "chosen": f"{chosen[0]}:{chosen[1]}",
        "chosen_label": label,
        "columns": [metric_label(m, d) for m, d in CHARTED],
        "overview": overview,
        "reports": [f"{m:%Y-%m}" for m in reversed(months[:-1])],
        "quality": prediction_quality(session, last),
        "notices": notice_rows,
        "notice_total": notice_total,
        "show_read": read,
        "can_mark": user.role != Role.auditor,
    }
    return render(request, "stats/dashboard.html", context, user=user)


def _error(request: Request, user: ConsoleUser, title: str, message: str, status: int) -> HTMLResponse:
    return render(request, "error.html", {"title": title, "message": message}, user=user, status_code=status)


def _month_or_error(request: Request, user: ConsoleUser, month: str) -> str | HTMLResponse:
    """A complete month ``YYYY-MM``, or the Chinese error page saying what is wrong with it."""
    try:
        first = parse_month(month)
    except ValidationFailed:
        message = f"“{month}”不是有效的月份：请按 YYYY-MM 填写，例如 2026-05（2000-01 至 2100-12）。"
        return _error(request, user, "月份有误", message, 422)
    try:
        require_complete(first)
    except ValidationFailed:
        message = f"{first:%Y-%m} 尚未结束，月报在次月 1 日生成；本月的进度请看统计页。"
        return _error(request, user, "该月尚无月报", message, 422)
    return f"{first:%Y-%m}"


def _report(
    request: Request, user: ConsoleUser, session: Session, month: str
) -> MonthlyReport | HTMLResponse:
    checked = _month_or_error(request, user, month)
    if isinstance(checked, HTMLResponse):
        return checked
    report, _ = reports.ensure_report(session, checked, _settings(request))
    return report


def _download(body: bytes, media_type: str, name: str) -> Response:
    return Response(
        body, media_type=media_type, headers={"Content-Disposition": f'attachment; filename="{name}"'}
    )


@router.get("/stats/{month}.xlsx")
def report_xlsx(request: Request, month: MonthPath, user: Reader, session: SessionDep) -> Response:
    report = _report(request, user, session, month)
    if isinstance(report, HTMLResponse):
        return report
    audit("report_downloaded", user.staff.username, source(request), month=report.month, format="xlsx")
    return _download(reports.to_xlsx(report), XLSX, f"yipanqi-{report.month}.xlsx")


@router.get("/stats/{month}.csv")
def report_csv(request: Request, month: MonthPath, user: Reader, session: SessionDep) -> Response:
    report = _report(request, user, session, month)
    if isinstance(report, HTMLResponse):
        return report
    audit("report_downloaded", user.staff.username, source(request), month=report.month, format="csv")
    return _download(reports.to_csv(report), "text/csv; charset=utf-8", f"yipanqi-{report.month}.csv")


def _report_context(session: Session, report: MonthlyReport) -> dict[str, object]:
    names = peer_names(session)
    goals = report.targets
    first = parse_month(report.month)
    sections = []
    for metric, direction in CHARTED:
        figures = breakdown_figures(report.rows, metric, direction, goals, names, report.month)
        if figures:
            sections.append({"label": metric_label(metric, direction), "figures": figures})
    return {
        "report": report,
        "headline": headline_figure(f"{report.month} 月报各项指标", report.rows, goals),
        "sections": sections,
        "names": names,
        "previous": f"{previous_month(first):%Y-%m}",
        "next": f"{next_month(first):%Y-%m}" if next_month(first) < _today().replace(day=1) else None,
        "DIRECTION_NAMES": DIRECTION_NAMES,
        "DIMENSION_NAMES": DIMENSION_NAMES,
    }


@router.get("/stats/{month}/print")
def report_print(request: Request, month: MonthPath, user: Reader, session: SessionDep) -> HTMLResponse:
    """The report for paper: the charts and tables, no menu."""
    report = _report(request, user, session, month)
    if isinstance(report, HTMLResponse):
        return report
    return render(request, "stats/print.html", _report_context(session, report), user=user)


@router.get("/stats/{month}")
def report_page(request: Request, month: MonthPath, user: Reader, session: SessionDep) -> HTMLResponse:
    """月报 of a complete month: stored when first opened (as through the staff API)."""
    report = _report(request, user, session, month)
    if isinstance(report, HTMLResponse):
        return report
    return render(request, "stats/report.html", _report_context(session, report), user=user)


@router.post("/stats/notices/{notice_id:int}/read")
def mark_notice_read(notice_id: int, user: Actor) -> RedirectResponse:
    """Mark a notice read for its role (经办人, 负责人, 管理员; an auditor only reads)."""
    with transaction() as tx:
        notices.mark_read(tx, user.staff, notice_id, utcnow())
    return RedirectResponse(f"{PREFIX}/stats#notices", status_code=303)
