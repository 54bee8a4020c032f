"""Origin side: who looked a person up (``lookup_log``), for her page — answered, refused, flagged."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func
from sqlmodel import Session, col, select

from service.models import LookupLog, LookupPurpose, LookupStanding


@dataclass(frozen=True)
class Disclosure:
    looked_up_at: datetime
    requester: str  # the asking node
    purpose: LookupPurpose
    standing: LookupStanding | None  # None: recorded before standing was checked (migration 0015)
    found: bool
    refused: bool
    flagged: bool


def lookups_of(session: Session, person_id: int, limit: int = 50) -> tuple[list[Disclosure], int]:
    """The latest ``limit`` look-ups of her record, newest first, and how many there are in all."""
    where = LookupLog.person_id == person_id
    total = session.exec(select(func.count()).select_from(LookupLog).where(where)).one()
    rows = session.exec(
        select(LookupLog)
        .where(where)
        .order_by(col(LookupLog.looked_up_at).desc(), col(LookupLog.id).desc())
        .limit(limit)
    ).all()
    items = [
        Disclosure(g.looked_up_at, g.requester, g.purpose, g.standing, g.found, g.refused, g.flagged)
        for g in rows
    ]
    return items, total
