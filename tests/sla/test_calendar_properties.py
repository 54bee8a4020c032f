"""Property tests of the working-day calendar (service/sla/deadlines.py): N working days after a day
land on a working day, the Nth one exactly (counted back, day by day), later for more days or a later
start; calendar days are plain addition. Across the years the holiday package knows and past them."""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta

import chinese_calendar
from hypothesis import given, settings
from hypothesis import strategies as st

from service.sla.deadlines import KNOWN_YEARS, SHANGHAI, DeadlineRule, due_at, is_working_day

PROPERTY = settings(max_examples=200, deadline=None)

# The package's years and a few past them (Monday–Friday there).
days = st.dates(min_value=date(KNOWN_YEARS.start, 1, 1), max_value=date(KNOWN_YEARS.stop + 2, 12, 31))
moments = st.times()  # the time of day in Shanghai the item was received
counts = st.integers(min_value=1, max_value=60)


def received(day: date, at: time) -> datetime:
    return datetime.combine(day, at, tzinfo=SHANGHAI).astimezone(UTC)


def due_day(received_at: datetime, rule: DeadlineRule) -> date:
    """The Shanghai day whose end (24:00) is the deadline."""
    end = due_at(received_at, rule).astimezone(SHANGHAI)
    assert end.time() == time(0)  # always the end of a day
    return end.date() - timedelta(days=1)


def working_days_between(start: date, end: date) -> int:
    """The day counter: working days after ``start`` up to ``end``, both ends as (start, end]."""
    return sum(1 for n in range(1, (end - start).days + 1) if is_working_day(start + timedelta(days=n)))


@PROPERTY
@given(day=days, at=moments, n=counts)
def test_n_working_days_land_on_a_working_day_never_a_weekend_or_holiday(day: date, at: time, n: int) -> None:
    last = due_day(received(day, at), DeadlineRule(days=n, unit="working"))
    assert is_working_day(last)
    if last.year in KNOWN_YEARS:
        assert last not in chinese_calendar.holidays
        assert last.weekday() < 5 or last in chinese_calendar.workdays  # a weekend only as 调休
    else:
        assert last.weekday() < 5


@PROPERTY
@given(day=days, at=moments, n=counts)
def test_the_due_day_round_trips_with_the_day_counter(day: date, at: time, n: int) -> None:
    last = due_day(received(day, at), DeadlineRule(days=n, unit="working"))
    assert working_days_between(day, last) == n
    assert working_days_between(day, last - timedelta(days=1)) == n - 1  # the Nth, not a later one


@PROPERTY
@given(day=days, at=moments, n=counts, more=st.integers(1, 30), later=st.integers(0, 60))
def test_more_days_or_a_later_start_never_give_an_earlier_deadline(
    day: date, at: time, n: int, more: int, later: int
) -> None:
    start = received(day, at)
    rule = DeadlineRule(days=n, unit="working")
    assert due_at(start, DeadlineRule(days=n + more, unit="working")) > due_at(start, rule)
    assert due_at(start + timedelta(days=later), rule) >= due_at(start, rule)
    assert due_at(start, rule) >= due_at(start, DeadlineRule(days=n))  # never sooner than calendar days


@PROPERTY
@given(day=days, at=moments, n=counts)
def test_calendar_days_are_plain_addition_in_shanghai(day: date, at: time, n: int) -> None:
    assert due_day(received(day, at), DeadlineRule(days=n)) == day + timedelta(days=n)
