"""Staff API for the monthly report (月报): JSON, CSV and XLSX, and an explicit regeneration."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path
from fastapi.responses import Response

from service.db import SessionDep
from service.errors import staff_errors
from service.sla import report as reports
from service.sla.schemas import MONTH_PATTERN, MonthlyReport
from service.staff.dependencies import Reader, Supervisor
from service.staff.service import audit

router = APIRouter(prefix="/api/v1/reports", tags=["月报 reports"])

Month = Annotated[
    str,
    Path(
        description="YYYY-MM, a complete month in Asia/Shanghai: 2000-01 … 2100-12, before the current one",
        examples=["2026-10"],
        pattern=MONTH_PATTERN,
    ),
]
ERRORS: dict[int | str, dict[str, Any]] = staff_errors(422, codes={422: "validation_failed (month)"})
XLSX = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"


def _get(session: SessionDep, month: str) -> MonthlyReport:
    report, _ = reports.ensure_report(session, month)
    return report


def _download(body: bytes, media_type: str, name: str) -> Response:
    disposition = f'attachment; filename="{name}"'
    return Response(body, media_type=media_type, headers={"Content-Disposition": disposition})


@router.get(
    "/{month}.xlsx",
    responses={**ERRORS, 200: {"content": {XLSX: {}}, "description": "the report as an Excel workbook"}},
    response_class=Response,
)
def report_xlsx(month: Month, session: SessionDep, staff: Reader) -> Response:
    """The month's report as XLSX (Chinese headers, rows below target filled red)."""
    report = _get(session, month)
    audit(staff, "report.read", f"report:{report.month}.xlsx")
    return _download(reports.to_xlsx(report), XLSX, f"yipanqi-{report.month}.xlsx")


@router.get(
    "/{month}.csv",
    responses={**ERRORS, 200: {"content": {"text/csv": {}}, "description": "the report as CSV (UTF-8, BOM)"}},
    response_class=Response,
)
def report_csv(month: Month, session: SessionDep, staff: Reader) -> Response:
    """The month's report as CSV: UTF-8 with BOM, Chinese headers."""
    report = _get(session, month)
    audit(staff, "report.read", f"report:{report.month}.csv")
    return _download(reports.to_csv(report), "text/csv; charset=utf-8", f"yipanqi-{report.month}.csv")


@router.get("/{month}", response_model=MonthlyReport, responses=ERRORS)
def report_json(month: Month, session: SessionDep, staff: Reader) -> MonthlyReport:
    """The month's report: stored when first asked for (or by the scheduler on the 1st)."""
    report = _get(session, month)
    audit(staff, "report.read", f"report:{report.month}")
    return report


@router.post("/{month}/regenerate", response_model=MonthlyReport, responses=ERRORS)
def regenerate(month: Month, session: SessionDep, staff: Supervisor) -> MonthlyReport:
    """Compute the month's report anew and replace the stored one (负责人 only)."""
    report = reports.generate_report(session, month)
    audit(staff, "report.regenerate", f"report:{report.month}")
    return report
