"""婚育证明查验率: the share of this host's migrant women 18–49 whose certificate was checked.

docs/domain.md: "首次查验后，每年查询2次以上视为婚育证明查验". Read here as:

- a **look-up** is a ``CertificateCheck`` of the person's ID number (found or not — the host asked)
  whose date in China (Asia/Shanghai) is on or after her ``arrived_on`` (any date if unknown); a
  check made before she arrived was not a host's check and never counts;
- her **first check** is the earliest such look-up;
- she **counts as checked for year Y** when at least 2 look-ups are dated in Y (1 January –
  31 December, Asia/Shanghai). The first check counts among them when it falls in Y; since it is
  the earliest look-up after arrival, "a first check, then ≥ 2 look-ups in the year" reduces to
  "≥ 2 look-ups after arrival dated in Y".

The **denominator** of year Y: people registered at this host (``host_node`` is this node, from
another origin — a local resident is no migrant), not merged into another record, women aged
18–49 at some time in Y, arrived by 31 December of Y (or arrival unknown), not departed before
1 January of Y. The **numerator**: those of them checked for Y. Both are SQL aggregates.

**As of a day** (``through``, the monthly report's last day of its month): the same, for the year up
to the end of that day in Asia/Shanghai — look-ups dated after it, women who turn 18, arrive or were
entered in the register after it, are left out, so a month's figure never changes with what came
later. Corrections to a record (an edited arrival date, a merge) are not versioned and apply as they
read now.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlalchemy import ColumnElement, Date, and_, func, or_, true
from sqlalchemy.ext.compiler import compiles
from sqlalchemy.sql.compiler import SQLCompiler
from sqlalchemy.sql.functions import FunctionElement
from sqlmodel import Session, col, select

from service.certificates.schemas import CheckRate, PersonCheckStatus
from service.certificates.service import MAX_AGE, MIN_AGE, local_node_id
from service.errors import NotFound
from service.models import CertificateCheck, Person, Sex
from service.sla.deadlines import SHANGHAI

MIN_CHECKS = 2


class shanghai_date(FunctionElement[date]):
    """The calendar date in Asia/Shanghai of a UTC timestamp column (China keeps no DST)."""

    type = Date()
    inherit_cache = True


@compiles(shanghai_date, "sqlite")
def _sqlite(element: shanghai_date, compiler: SQLCompiler, **kw: Any) -> str:
    return f"date({compiler.process(element.clauses, **kw)}, '+8 hours')"


@compiles(shanghai_date, "postgresql")
def _postgresql(element: shanghai_date, compiler: SQLCompiler, **kw: Any) -> str:
    return f"CAST(({compiler.process(element.clauses, **kw)}) AT TIME ZONE 'Asia/Shanghai' AS DATE)"


def year_bounds(year: int) -> tuple[datetime, datetime]:
    """[start, end) of the year in Asia/Shanghai, as UTC instants."""
    start = datetime.combine(date(year, 1, 1), time(0), tzinfo=SHANGHAI).astimezone(UTC)
    end = datetime.combine(date(year + 1, 1, 1), time(0), tzinfo=SHANGHAI).astimezone(UTC)
    return start, end


def _after_arrival() -> ColumnElement[bool]:
    return or_(
        col(Person.arrived_on).is_(None),
        shanghai_date(col(CertificateCheck.checked_at)) >= col(Person.arrived_on),
    )


def _in_scope(node_id: str, year: int, through: date, *, as_of: bool = False) -> ColumnElement[bool]:
    # Aged 18–49 at some time in the year up to ``through``: 18th birthday by then, 50th after 1 Jan.
    # ``as_of``: the register as it stood at the end of ``through`` (entered by then).
    entered = col(Person.created_at) < _end_of(through) if as_of else true()
    return and_(
        col(Person.host_node) == node_id,
        col(Person.origin_node) != node_id,
        col(Person.merged_into).is_(None),
        col(Person.sex) == Sex.F,
        col(Person.birth_date) <= _years_before(through, MIN_AGE),
        col(Person.birth_date) > _years_before(date(year, 1, 1), MAX_AGE + 1),
        or_(col(Person.arrived_on).is_(None), col(Person.arrived_on) <= through),
        or_(col(Person.departed_on).is_(None), col(Person.departed_on) >= date(year, 1, 1)),
        entered,
    )


def _end_of(day: date) -> datetime:
    """24:00 of ``day`` in Asia/Shanghai, as a UTC instant."""
    return datetime.combine(day, time(0), tzinfo=SHANGHAI).astimezone(UTC) + timedelta(days=1)


def _years_before(day: date, years: int) -> date:
    try:
        return day.replace(year=day.year - years)
    except ValueError:  # 29 February
        return day.replace(year=day.year - years, day=28)


def node_check_rate(session: Session, year: int, through: date | None = None) -> CheckRate:
    """The node's check rate for ``year``, or for the year up to the end of the day ``through``."""
    if through is not None and through.year != year:
        raise ValueError(f"through={through} is not in {year}")
    node_id = local_node_id(session)
    last = through or date(year, 12, 31)
    start, end = year_bounds(year)[0], _end_of(last)
    scope = _in_scope(node_id, year, last, as_of=through is not None)
    denominator = session.exec(select(func.count()).select_from(Person).where(scope)).one()
    checked = (
        select(col(Person.id))
        .join(CertificateCheck, col(CertificateCheck.id_number_index) == col(Person.id_number_index))
        .where(
            scope,
            _after_arrival(),
            col(CertificateCheck.checked_at) >= start,
            col(CertificateCheck.checked_at) < end,
        )
        .group_by(col(Person.id))
        .having(func.count(col(CertificateCheck.id)) >= MIN_CHECKS)
    )
    numerator = session.exec(select(func.count()).select_from(checked.subquery())).one()
    return CheckRate(
        year=year,
        numerator=numerator,
        denominator=denominator,
        rate=numerator / denominator if denominator else None,
    )


def person_check_status(session: Session, person_id: int, year: int) -> PersonCheckStatus:
    person = session.get(Person, person_id)
    if person is None:
        raise NotFound(f"no person {person_id} in the register")
    start, end = year_bounds(year)
    checks = (
        select(func.min(col(CertificateCheck.checked_at)))
        .join(Person, col(CertificateCheck.id_number_index) == col(Person.id_number_index))
        .where(Person.id == person_id, _after_arrival())
    )
    first = session.exec(checks).one()
    in_year = session.exec(
        select(func.count(col(CertificateCheck.id)))
        .join(Person, col(CertificateCheck.id_number_index) == col(Person.id_number_index))
        .where(
            Person.id == person_id,
            _after_arrival(),
            col(CertificateCheck.checked_at) >= start,
            col(CertificateCheck.checked_at) < end,
        )
    ).one()
    in_scope = session.exec(
        select(func.count())
        .select_from(Person)
        .where(Person.id == person_id, _in_scope(local_node_id(session), year, date(year, 12, 31)))
    ).one()
    return PersonCheckStatus(
        person_id=person_id,
        year=year,
        in_scope=bool(in_scope),
        first_check_at=first,
        checks_in_year=in_year,
        checked=in_year >= MIN_CHECKS,
    )
