"""待办: the incoming 协查 and 通报 waiting for this node, soonest deadline first, in one list.

A 协查 waits until it is answered (待签收, then 待反馈), a 通报 until it is acknowledged (待确认).
The list is paged by keyset (``?after=`` an opaque cursor of the last row's deadline, kind and id),
so a page is as fast at the end of a long queue as at its start and rows arriving meanwhile are
neither skipped nor shown twice. Times are judged by the node's clock (``service.clock``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Literal
from urllib.parse import urlencode

from fastapi import APIRouter, Request
from fastapi.responses import HTMLResponse
from sqlalchemy import ColumnElement, and_, func, or_
from sqlmodel import Session, col, select

from service import idnumbers
from service.clock import utcnow
from service.console.auth import PREFIX, READERS, Reader
from service.console.cases import (
    CASE_STATUS_NAMES,
    DUE_SOON,
    KIND_NAMES,
    NOTIFICATION_STATUS_NAMES,
    PRIORITY_NAMES,
    TOPIC_NAMES,
    due_day,
)
from service.console.templating import add_nav, render
from service.db import read_session
from service.directory.service import peer_names
from service.models import (
    CaseStatus,
    Direction,
    Notification,
    NotificationKind,
    NotificationStatus,
    Role,
    Topic,
    VerificationCase,
)
from service.verification.service import assignees

router = APIRouter(prefix=PREFIX, include_in_schema=False)
PAGE_SIZE = 50
PATH = f"{PREFIX}/pending"
add_nav(10, "待办", PATH, "待签收、待反馈的协查和待确认的通报，按期限排序", READERS)

Kind = Literal["case", "notice"]
_RANK: dict[str, int] = {"case": 0, "notice": 1}  # the order of a case and a 通报 due at the same time
_CODE = {"case": "c", "notice": "n"}
_KIND = {"c": "case", "n": "notice"}
STATUSES = {  # the status filter: which item, in which state
    "to_ack": ("case", CaseStatus.received, "待签收"),
    "to_reply": ("case", CaseStatus.acknowledged, "待反馈"),
    "to_confirm": ("notice", NotificationStatus.received, "待确认"),
}
CASE_OPEN = (CaseStatus.received, CaseStatus.acknowledged)


@dataclass(frozen=True)
class Cursor:
    due_at: datetime
    kind: Kind
    id: int

    def text(self) -> str:
        stamp = int((self.due_at - _EPOCH) / timedelta(microseconds=1))
        return f"{stamp}.{_CODE[self.kind]}.{self.id}"

    @classmethod
    def parse(cls, text: str) -> Cursor | None:
        """The cursor of a "下一页" link; None for anything else (the list starts from the top)."""
        try:
            stamp, code, item = text.split(".")
            kind = _KIND[code]
            due = _EPOCH + timedelta(microseconds=int(stamp))
            number = int(item)
        except (ValueError, KeyError, OverflowError):
            return None
        if number < 1:
            return None
        return cls(due, kind, number)  # type: ignore[arg-type]


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class Filters:
    """The GET form's choices (every value checked; an unknown one is ignored)."""

    peer: str = ""
    type: str = ""  # "case", "notice" or "" (both)
    topic: Topic | None = None  # 协查事项 (cases only)
    kind: NotificationKind | None = None  # 通报类型 (notifications only)
    status: str = ""  # a STATUSES key
    due: str = ""  # "overdue", "soon" or ""
    key_target: bool = False  # 重点服务对象 only (a 协查 flag)
    assignee: str = ""  # "me", "none", a user name, or "" (anyone)

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> Filters:
        def pick(name: str, allowed: object) -> str:
            value = params.get(name, "")
            return value if value in allowed else ""  # type: ignore[operator]

        peer = params.get("peer", "")
        assignee = params.get("assignee", "")[:64]
        return cls(
            peer=peer if len(peer) == 6 and peer.isdigit() else "",
            type=pick("type", ("case", "notice")),
            topic=Topic(params["topic"]) if params.get("topic") in set(Topic) else None,
            kind=NotificationKind(params["kind"]) if params.get("kind") in set(NotificationKind) else None,
            status=pick("status", STATUSES),
            due=pick("due", ("overdue", "soon")),
            key_target=params.get("key") == "1",
            assignee=assignee,
        )

    def query(self) -> dict[str, str]:
        """The filters as query parameters (for the "下一页" link and the forms' way back)."""
        values = {
            "peer": self.peer,
            "type": self.type,
            "topic": self.topic.value if self.topic else "",
            "kind": self.kind.value if self.kind else "",
            "status": self.status,
            "due": self.due,
            "key": "1" if self.key_target else "",
            "assignee": self.assignee,
        }
        return {k: v for k, v in values.items() if v}

    def wants(self, kind: Kind) -> bool:
        if self.type and self.type != kind:
            return False
        if self.status and STATUSES[self.status][0] != kind:
            return False
        if kind == "notice" and (self.topic is not None or self.key_target):
            return False
        return not (kind == "case" and self.kind is not None)


@dataclass(frozen=True)
class Row:
    """One line of the list: no full ID number, only the masked one."""

    kind: Kind
    id: int
    due_at: datetime
    peer: str
    status: str
    status_name: str
    what: str  # 协查事项 or 通报类型
    priority: str | None
    key_target: bool
    subject_name: str
    id_masked: str
    received_at: datetime | None
    assigned_to: str | None
    state: str  # "overdue", "due-soon" or ""

    @property
    def href(self) -> str:
        return f"{PREFIX}/cases/{self.id}" if self.kind == "case" else f"{PREFIX}/notifications/{self.id}"

    @property
    def assign_action(self) -> str:
        return f"{self.href}/assign"

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.due_at, self.kind, self.id)


def _state(due: datetime, now: datetime) -> str:
    if due < now:
        return "overdue"
    return "due-soon" if due - now <= DUE_SOON else ""


def _after(cursor: Cursor | None, kind: Kind, due: Any, item_id: Any) -> ColumnElement[bool] | None:
    """Rows of ``kind`` that come after ``cursor`` in the order (due_at, kind, id)."""
    if cursor is None:
        return None
    mine, theirs = _RANK[kind], _RANK[cursor.kind]
    if mine < theirs:
        return due > cursor.due_at  # type: ignore[no-any-return]
    if mine > theirs:
        return due >= cursor.due_at  # type: ignore[no-any-return]
    return or_(due > cursor.due_at, and_(due == cursor.due_at, item_id > cursor.id))


def _assignee(column: Any, filters: Filters, me: str) -> ColumnElement[bool] | None:
    if filters.assignee == "me":
        return column == me  # type: ignore[no-any-return]
    if filters.assignee == "none":
        return column.is_(None)  # type: ignore[no-any-return]
    if filters.assignee:
        return column == filters.assignee  # type: ignore[no-any-return]
    return None


def _due(column: Any, filters: Filters, now: datetime) -> ColumnElement[bool] | None:
    if filters.due == "overdue":
        return column < now  # type: ignore[no-any-return]
    if filters.due == "soon":
        return and_(column >= now, column <= now + DUE_SOON)
    return None


def queue(
    session: Session, filters: Filters, cursor: Cursor | None, me: str, now: datetime, limit: int
) -> list[Row]:
    """Up to ``limit`` rows after ``cursor``: each table's next rows by keyset, merged in order."""
    rows: list[Row] = []
    if filters.wants("case"):
        c = VerificationCase
        statuses = [STATUSES[filters.status][1]] if filters.status else list(CASE_OPEN)
        conditions = [
            col(c.direction) == Direction.incoming,
            col(c.status).in_(statuses),
            col(c.due_at).is_not(None),
            _after(cursor, "case", col(c.due_at), col(c.id)),
            _assignee(col(c.assigned_to), filters, me),
            _due(col(c.due_at), filters, now),
            col(c.peer) == filters.peer if filters.peer else None,
            col(c.topic) == filters.topic if filters.topic else None,
            col(c.key_target).is_(True) if filters.key_target else None,
        ]
        query = select(c).where(*[x for x in conditions if x is not None])
        for case in session.exec(query.order_by(col(c.due_at), col(c.id)).limit(limit)):
            assert case.id is not None
            assert case.due_at is not None
            rows.append(
                Row(
                    "case",
                    case.id,
                    case.due_at,
                    case.peer,
                    case.status.value,
                    CASE_STATUS_NAMES[case.status],
                    TOPIC_NAMES[case.topic],
                    PRIORITY_NAMES[case.priority],
                    case.key_target,
                    case.subject_name,
                    idnumbers.mask(case.subject_id_number),
                    case.received_at,
                    case.assigned_to,
                    _state(case.due_at, now),
                )
            )
    if filters.wants("notice"):
        n = Notification
        notice_conditions = [
            col(n.direction) == Direction.incoming,
            col(n.status) == NotificationStatus.received,
            col(n.due_at).is_not(None),
            _after(cursor, "notice", col(n.due_at), col(n.id)),
            _assignee(col(n.assigned_to), filters, me),
            _due(col(n.due_at), filters, now),
            col(n.peer) == filters.peer if filters.peer else None,
            col(n.kind) == filters.kind if filters.kind else None,
        ]
        notice_query = select(n).where(*[x for x in notice_conditions if x is not None])
        for item in session.exec(notice_query.order_by(col(n.due_at), col(n.id)).limit(limit)):
            assert item.id is not None
            assert item.due_at is not None
            rows.append(
                Row(
                    "notice",
                    item.id,
                    item.due_at,
                    item.peer,
                    item.status.value,
                    NOTIFICATION_STATUS_NAMES[item.status],
                    KIND_NAMES[item.kind],
                    None,
                    False,
                    item.subject_name,
                    idnumbers.mask(item.subject_id_number),
                    item.received_at,
                    item.assigned_to,
                    _state(item.due_at, now),
                )
            )
    rows.sort(key=lambda r: (r.due_at, _RANK[r.kind], r.id))
    return rows[:limit]


def counts(session: Session, me: str, now: datetime) -> dict[str, int]:
    """The whole queue's numbers (no filter): by state, by deadline, and whose."""
    c, n = VerificationCase, Notification
    open_case = (col(c.direction) == Direction.incoming) & col(c.status).in_(CASE_OPEN)
    open_notice = (col(n.direction) == Direction.incoming) & (col(n.status) == NotificationStatus.received)

    def number(model: Any, *where: Any) -> int:
        return int(session.exec(select(func.count()).select_from(model).where(*where)).one())

    soon = now + DUE_SOON
    result = {
        "to_ack": number(c, open_case, col(c.status) == CaseStatus.received),
        "to_reply": number(c, open_case, col(c.status) == CaseStatus.acknowledged),
        "to_confirm": number(n, open_notice),
        "overdue": number(c, open_case, col(c.due_at) < now) + number(n, open_notice, col(n.due_at) < now),
        "soon": number(c, open_case, col(c.due_at) >= now, col(c.due_at) <= soon)
        + number(n, open_notice, col(n.due_at) >= now, col(n.due_at) <= soon),
        "mine": number(c, open_case, col(c.assigned_to) == me)
        + number(n, open_notice, col(n.assigned_to) == me),
        "unassigned": number(c, open_case, col(c.assigned_to).is_(None))
        + number(n, open_notice, col(n.assigned_to).is_(None)),
    }
    result["total"] = result["to_ack"] + result["to_reply"] + result["to_confirm"]
    return result


@router.get("/pending")
def pending(request: Request, user: Reader, after: str = "") -> HTMLResponse:
    params = dict(request.query_params)
    filters = Filters.parse(params)
    cursor = Cursor.parse(after) if after else None
    now, me = utcnow(), user.staff.username
    with read_session() as session:
        rows = queue(session, filters, cursor, me, now, PAGE_SIZE + 1)
        numbers = counts(session, me, now)
        peers = peer_names(session)
        staff = assignees(session)
    more = len(rows) > PAGE_SIZE
    rows = rows[:PAGE_SIZE]
    query = filters.query()
    next_url = f"{PATH}?{urlencode({**query, 'after': rows[-1].cursor.text()})}" if more else None
    here = f"{PATH}?{urlencode({**query, 'after': after})}" if after else f"{PATH}?{urlencode(query)}"
    context = {
        "rows": rows,
        "counts": numbers,
        "filters": filters,
        "peers": peers,
        "assignees": staff,
        "topics": TOPIC_NAMES,
        "kinds": KIND_NAMES,
        "statuses": {key: label for key, (_kind, _status, label) in STATUSES.items()},
        "next_url": next_url,
        "first_url": f"{PATH}?{urlencode(query)}" if cursor else None,
        "here": here,
        "count_url": lambda **extra: f"{PATH}?{urlencode(extra)}",
        "can_act": user.role in (Role.operator, Role.supervisor, Role.admin),
        "can_assign": user.role in (Role.supervisor, Role.admin),
        "due_day": due_day,
        "PRIORITY_NAMES": PRIORITY_NAMES,
    }
    return render(request, "pending/list.html", context, user=user)
