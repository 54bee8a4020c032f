"""Deadline policy: "15日内反馈" — the end (24:00 Asia/Shanghai) of the Nth (working) day after receipt."""

from __future__ import annotations

import logging
from datetime import UTC, date, datetime, time, timedelta
from functools import cache
from typing import Literal
from zoneinfo import ZoneInfo

import chinese_calendar
from pydantic import BaseModel, ConfigDict, Field

SHANGHAI = ZoneInfo("Asia/Shanghai")
log = logging.getLogger(__name__)
# The years whose holidays and adjusted working days (调休) the package has published.
KNOWN_YEARS = range(
    min(d.year for d in chinese_calendar.holidays), max(d.year for d in chinese_calendar.holidays) + 1
)


class DeadlineRule(BaseModel):
    """A deadline in days; ``working`` counts working days of the mainland China calendar."""

    model_config = ConfigDict(frozen=True)

    days: int = Field(gt=0, le=366)
    unit: Literal["calendar", "working"] = "calendar"


def is_working_day(day: date) -> bool:
    """Working day of the mainland China calendar (public holidays and adjusted working days).

    Past the years the holiday package knows, falls back to Monday–Friday and says so in the log:
    the State Council publishes next year's schedule each November, so keep the package current.
    """
    if day.year not in KNOWN_YEARS:
        _warn_unknown_year(day.year)
        return day.weekday() < 5
    return bool(chinese_calendar.is_workday(day))


@cache
def _warn_unknown_year(year: int) -> None:
    """Once per process and year, not once per day counted."""
    log.warning("holiday calendar has no data for year=%d; counting Monday-Friday", year)


def due_at(received_at: datetime, rule: DeadlineRule) -> datetime:
    """End of the ``rule.days``-th (working) day after the Shanghai day of ``received_at``, in UTC."""
    if received_at.tzinfo is None:
        raise ValueError("received_at must be timezone-aware")
    day = received_at.astimezone(SHANGHAI).date()
    if rule.unit == "calendar":
        day += timedelta(days=rule.days)
    else:
        remaining = rule.days
        while remaining:
            day += timedelta(days=1)
            if is_working_day(day):
                remaining -= 1
    end_of_day = datetime.combine(day + timedelta(days=1), time(0), tzinfo=SHANGHAI)
    return end_of_day.astimezone(UTC)
