"""Deadline policy: the end (24:00 Asia/Shanghai) of the Nth calendar or working day after receipt."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from datetime import UTC, date, datetime, timedelta
from pathlib import Path

import chinese_calendar
import pytest
from pydantic import ValidationError

from service.config import Settings
from service.sla.deadlines import SHANGHAI, DeadlineRule, _warn_unknown_year, due_at, is_working_day

CALENDAR_30 = DeadlineRule(days=30)


def utc(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def shanghai(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=SHANGHAI)


def working(days: int) -> DeadlineRule:
    return DeadlineRule(days=days, unit="working")


def first_unknown_year() -> int:
    """The first year from 2027 on that the holiday package has no schedule for."""
    for year in range(2027, 2100):
        try:
            chinese_calendar.is_workday(date(year, 1, 5))
        except NotImplementedError:
            return year
    raise AssertionError("the holiday package claims to know every year up to 2100")


# --- calendar days -----------------------------------------------------------------------------------


def test_the_protocol_vector_example() -> None:
    # vectors/verification-request.json: a normal request received 2026-11-22 09:30:01 Shanghai.
    assert due_at(utc("2026-11-22T01:30:01Z"), CALENDAR_30) == utc("2026-12-22T16:00:00Z")


def test_due_at_is_utc_and_the_end_of_a_shanghai_day() -> None:
    result = due_at(utc("2026-03-05T07:12:13Z"), DeadlineRule(days=15))
    assert result.tzinfo is UTC
    assert result == utc("2026-03-20T16:00:00Z")  # 24:00 on 2026-03-20 in Shanghai
    assert result.astimezone(SHANGHAI).time() == datetime.min.time()


def test_the_same_instant_in_any_zone_gives_the_same_deadline() -> None:
    instant = utc("2026-11-22T01:30:01Z")
    assert due_at(instant.astimezone(SHANGHAI), CALENDAR_30) == due_at(instant, CALENDAR_30)


@pytest.mark.parametrize(
    ("received", "due"),
    [
        # 23:59:59 in Shanghai on the 22nd: day 0 is the 22nd.
        ("2026-11-22T15:59:59Z", "2026-12-22T16:00:00Z"),
        # One second later it is 00:00 on the 23rd in Shanghai, though still the 22nd in UTC.
        ("2026-11-22T16:00:00Z", "2026-12-23T16:00:00Z"),
        # Just after Shanghai midnight the UTC date is the day before.
        ("2026-11-22T16:00:01Z", "2026-12-23T16:00:00Z"),
    ],
)
def test_receipt_around_shanghai_midnight(received: str, due: str) -> None:
    assert due_at(utc(received), CALENDAR_30) == utc(due)


def test_calendar_days_run_through_holidays() -> None:
    # The National Day holiday counts for calendar-day deadlines.
    assert due_at(shanghai("2026-09-30T10:00:00"), DeadlineRule(days=7)) == shanghai("2026-10-08T00:00:00")


def test_naive_receipt_time_is_refused() -> None:
    with pytest.raises(ValueError, match="timezone-aware"):
        due_at(datetime(2026, 11, 22, 9, 30), CALENDAR_30)


# --- working days: the 2026 mainland China calendar ------------------------------------------------


def test_the_holiday_package_knows_the_2026_national_day_schedule() -> None:
    # State Council schedule for 2026 as the package has it: 中秋 Sep 25–27, 国庆 Oct 1–7,
    # with Sunday Sep 20 and Saturday Oct 10 as adjusted working days (调休上班).
    holidays = [date(2026, 9, 25) + timedelta(days=i) for i in range(3)]
    holidays += [date(2026, 10, 1) + timedelta(days=i) for i in range(7)]
    for day in holidays:
        assert not is_working_day(day), day
    for day in (date(2026, 9, 20), date(2026, 10, 10)):
        assert day.weekday() >= 5
        assert is_working_day(day), day
    assert is_working_day(date(2026, 9, 30))
    assert is_working_day(date(2026, 10, 8))
    assert not is_working_day(date(2026, 10, 11))  # an ordinary Sunday


@pytest.mark.parametrize(
    ("received", "days", "due_day"),
    [
        # Received the day before the holiday: the first working day after it is Oct 8.
        ("2026-09-30T10:00:00", 1, "2026-10-08"),
        ("2026-09-30T10:00:00", 2, "2026-10-09"),
        # Saturday Oct 10 is an adjusted working day; Sunday Oct 11 is not.
        ("2026-09-30T10:00:00", 3, "2026-10-10"),
        ("2026-09-30T10:00:00", 4, "2026-10-12"),
        # Received during the holiday: the clock starts on the next working day.
        ("2026-10-03T10:00:00", 1, "2026-10-08"),
        # Received on a Friday: Sunday Sep 20 is a working day, the Mid-Autumn holiday is not.
        ("2026-09-18T16:00:00", 1, "2026-09-20"),
        ("2026-09-18T16:00:00", 6, "2026-09-28"),
        # 15 working days across both holidays: 5 in Sep 20–24, 3 in Sep 28–30, 7 from Oct 8.
        ("2026-09-18T16:00:00", 15, "2026-10-15"),
    ],
)
def test_working_days_across_the_2026_national_day_holiday(received: str, days: int, due_day: str) -> None:
    expected = datetime.combine(
        date.fromisoformat(due_day) + timedelta(days=1), datetime.min.time(), SHANGHAI
    )
    assert due_at(shanghai(received), working(days)) == expected


def test_working_day_receipt_around_shanghai_midnight() -> None:
    # 23:59 on Wednesday Sep 30 in Shanghai vs. 00:00 on Thursday Oct 1 (a holiday).
    assert due_at(utc("2026-09-30T15:59:00Z"), working(1)) == shanghai("2026-10-09T00:00:00")
    assert due_at(utc("2026-09-30T16:00:00Z"), working(1)) == shanghai("2026-10-09T00:00:00")
    assert due_at(utc("2026-09-30T16:00:00Z"), working(2)) == shanghai("2026-10-10T00:00:00")
    assert due_at(utc("2026-09-29T16:00:00Z"), working(2)) == shanghai("2026-10-10T00:00:00")


# --- a year the package does not know: Monday to Friday, with a warning ---------------------------


@pytest.mark.parametrize("year", [first_unknown_year(), 2090])
def test_unknown_year_falls_back_to_monday_to_friday(year: int, caplog: pytest.LogCaptureFixture) -> None:
    with pytest.raises(NotImplementedError):
        chinese_calendar.is_workday(date(year, 1, 5))
    friday = next(date(year, 3, d) for d in range(1, 8) if date(year, 3, d).weekday() == 4)
    _warn_unknown_year.cache_clear()
    with caplog.at_level(logging.WARNING, logger="service.sla.deadlines"):
        assert is_working_day(friday)
        assert not is_working_day(friday + timedelta(days=1))
        assert not is_working_day(friday + timedelta(days=2))
        due = due_at(datetime.combine(friday, datetime.min.time(), SHANGHAI), working(1))
    assert due == datetime.combine(friday + timedelta(days=4), datetime.min.time(), SHANGHAI)  # Monday's end
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # once per year and process, not once per day counted
    assert f"no data for year={year}" in warnings[0].getMessage()


def test_oct_1_in_an_unknown_year_is_a_plain_weekday(caplog: pytest.LogCaptureFixture) -> None:
    # Without the State Council's schedule the fallback cannot know holidays: it says so in the log.
    year = 2090
    day = date(year, 10, 2)
    _warn_unknown_year.cache_clear()
    with caplog.at_level(logging.WARNING, logger="service.sla.deadlines"):
        assert is_working_day(day) is (day.weekday() < 5)
    assert "counting Monday-Friday" in caplog.text


# --- the rule and its settings ------------------------------------------------------------------------


@pytest.mark.parametrize("days", [0, -1, -30, 367])
def test_rule_refuses_days_out_of_range(days: int) -> None:
    with pytest.raises(ValidationError, match="days"):
        DeadlineRule(days=days)


def test_rule_refuses_an_unknown_unit() -> None:
    with pytest.raises(ValidationError, match="unit"):
        DeadlineRule(days=15, unit="weeks")  # type: ignore[arg-type]


def test_rule_bounds_and_defaults() -> None:
    assert DeadlineRule(days=1).unit == "calendar"
    assert DeadlineRule(days=366, unit="working").days == 366


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("YIPANQI_"):
            monkeypatch.delenv(name)
    return monkeypatch


@pytest.mark.usefixtures("clean_env")
def test_settings_default_deadlines_follow_the_documented_practice() -> None:
    settings = Settings()
    assert settings.deadline_urgent == DeadlineRule(days=15)
    assert settings.deadline_normal == DeadlineRule(days=30)
    assert settings.deadline_discrepancy == DeadlineRule(days=7)


def test_settings_read_deadlines_from_nested_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("YIPANQI_DEADLINE_NORMAL__DAYS", "20")
    clean_env.setenv("YIPANQI_DEADLINE_NORMAL__UNIT", "working")
    assert Settings().deadline_normal == DeadlineRule(days=20, unit="working")


@pytest.mark.parametrize("value", ["0", "-5"])
def test_settings_refuse_a_non_positive_deadline(clean_env: pytest.MonkeyPatch, value: str) -> None:
    clean_env.setenv("YIPANQI_DEADLINE_NORMAL__DAYS", value)
    with pytest.raises(ValidationError) as excinfo:
        Settings()
    assert "deadline_normal.days" in str(excinfo.value)
    assert "greater than 0" in str(excinfo.value)


def test_settings_refuse_an_unknown_unit(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("YIPANQI_DEADLINE_URGENT__DAYS", "10")
    clean_env.setenv("YIPANQI_DEADLINE_URGENT__UNIT", "fortnights")
    with pytest.raises(ValidationError, match=r"deadline_urgent\.unit"):
        Settings()


def test_unit_alone_keeps_the_default_days(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YIPANQI_DEADLINE_NORMAL__UNIT", "working")
    settings = Settings()
    assert settings.deadline_normal == DeadlineRule(days=30, unit="working")
    assert settings.deadline_urgent == DeadlineRule(days=15, unit="calendar")


def test_serve_refuses_a_zero_deadline_naming_the_variable(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIPANQI_")}
    env.update({"YIPANQI_DATA_DIR": str(tmp_path), "YIPANQI_DEADLINE_URGENT__DAYS": "0", "COLUMNS": "200"})
    result = subprocess.run(
        [sys.executable, "-m", "service", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2
    assert "YIPANQI_DEADLINE_URGENT__DAYS" in result.stdout
