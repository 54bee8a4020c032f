"""已发: the 协查 and 通报 this node sent, with their delivery, the peer's 签收 and 反馈, and 催办.

Newest first, 50 a page with an opaque ``after`` cursor (keyset: sent time, kind, id), filtered by
peer, type, delivery state and overdue. An admin re-runs a dead message (``outbox.requeue_dead``,
as the staff API's ``POST /api/v1/outbox/{id}/requeue``); an operator records a 催办 of an overdue
协查 (``verification.service.chase``: the protocol has no reminder message).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl, urlencode
from uuid import UUID

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from sqlalchemy import ColumnElement, and_, or_
from sqlmodel import Session, col, select

from service import idnumbers, names
from service.clock import utcnow
from service.console.auth import ACTORS, PREFIX, READERS, Actor, Admin, Reader, audit, source
from service.console.templating import add_nav, render
from service.db import read_session, transaction
from service.directory.service import peer_names
from service.exchange import outbox
from service.models import (
    CaseStatus,
    Direction,
    Notification,
    NotificationStatus,
    OutboxMessage,
    OutboxStatus,
    Priority,
    Role,
    VerificationCase,
)
from service.schemas import DbId
from service.signing.keys import is_node_id
from service.verification import service as verification

router = APIRouter(prefix=PREFIX, include_in_schema=False)
PATH = f"{PREFIX}/outgoing"
PAGE_SIZE = 50

add_nav(20, "已发", PATH, "本县发出的协查和通报：投递、签收、反馈、催办", READERS)

TOPIC_NAMES = names.TOPICS
KIND_NAMES = names.KINDS
OUTCOME_NAMES = names.OUTCOMES
DELIVERY_NAMES = names.DELIVERY
TYPE_NAMES = {"case": "协查", "notification": "通报"}
NOTICES = {
    "requeued": "已重新投递该消息，稍后刷新即可看到投递结果。",
    "chased": "已记录催办（时间和经办人见该行）。请同时通过电话或公文联系对方县。",
}

Kind = Literal["case", "notification"]
_RANK: dict[str, int] = {"notification": 0, "case": 1}  # ties on sent_at: cases first


@dataclass(frozen=True)
class Filters:
    peer: str | None = None
    type: Kind | None = None
    delivery: OutboxStatus | None = None
    overdue: bool = False

    @classmethod
    def parse(cls, params: dict[str, str]) -> Filters:
        """From the query string; a value that is not one of the choices is ignored."""
        peer = params.get("peer", "")
        kind = params.get("type", "")
        delivery = params.get("delivery", "")
        return cls(
            peer=peer if is_node_id(peer) else None,
            type=kind if kind in ("case", "notification") else None,  # type: ignore[arg-type]
            delivery=OutboxStatus(delivery) if delivery in OutboxStatus.__members__ else None,
            overdue=params.get("overdue") in ("1", "on", "true"),
        )

    def query(self, **more: str) -> str:
        """These filters (and ``more``) as a query string, empty values left out."""
        values = {
            "peer": self.peer or "",
            "type": self.type or "",
            "delivery": self.delivery.value if self.delivery else "",
            "overdue": "1" if self.overdue else "",
            **more,
        }
        return urlencode({k: v for k, v in values.items() if v})


@dataclass(frozen=True)
class Cursor:
    """Where a page ends: the last row's sent time, kind and id (rows strictly after it come next)."""

    sent_at: datetime
    kind: Kind
    id: int

    def encode(self) -> str:
        raw = f"{self.sent_at.isoformat()}|{self.kind}|{self.id}".encode()
        return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Cursor | None:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode("ascii")
            sent, kind, ident = raw.split("|")
            when = datetime.fromisoformat(sent)
            if when.tzinfo is None or kind not in _RANK or not ident.isdigit():
                return None
            return cls(when, kind, int(ident))  # type: ignore[arg-type]
        except (ValueError, binascii.Error, UnicodeDecodeError):
            return None

    def key(self) -> tuple[datetime, int, int]:
        return (self.sent_at, _RANK[self.kind], self.id)


@dataclass(frozen=True)
class Item:
    """One row of the page: a 协查 or a 通报 with its outbox message."""

    kind: Kind
    id: int
    href: str
    what: str
    urgent: bool
    subject_name: str
    subject_masked: str
    peer: str
    sent_at: datetime
    delivery: OutboxStatus | None
    message_id: str
    attempts: int
    last_error: str | None
    acknowledged_at: datetime | None  # the peer's 签收 / 接收确认
    answered_at: datetime | None  # the peer's 反馈 (协查 only)
    outcome: str | None
    due_at: datetime | None
    overdue: bool
    chased_at: datetime | None
    chased_by: str | None

    @property
    def cursor(self) -> Cursor:
        return Cursor(self.sent_at, self.kind, self.id)


def _after(sent_at: Any, ident: Any, kind: Kind, cursor: Cursor | None) -> ColumnElement[bool] | None:
    """Rows of table ``kind`` that come after ``cursor`` in (sent_at, rank, id) descending order."""
    if cursor is None:
        return None
    if _RANK[kind] < _RANK[cursor.kind]:
        return col(sent_at) <= cursor.sent_at
    if _RANK[kind] > _RANK[cursor.kind]:
        return col(sent_at) < cursor.sent_at
    # The same rows as "sent_at < c OR (sent_at = c AND id < c.id)", written so that the index
    # (direction, sent_at, id) is entered at the cursor rather than walked from the newest row.
    return and_(col(sent_at) <= cursor.sent_at, or_(col(sent_at) < cursor.sent_at, col(ident) < cursor.id))


def _cases(session: Session, f: Filters, cursor: Cursor | None, now: datetime, limit: int) -> list[Item]:
    query = (
        select(VerificationCase, OutboxMessage)
        .join(
            OutboxMessage,
            col(OutboxMessage.message_id) == col(VerificationCase.request_message_id),
            isouter=True,
        )
        .where(col(VerificationCase.direction) == Direction.outgoing)
    )
    if f.peer:
        query = query.where(col(VerificationCase.peer) == f.peer)
    if f.delivery:
        query = query.where(col(OutboxMessage.status) == f.delivery)
    if f.overdue:
        query = query.where(
            col(VerificationCase.status) != CaseStatus.answered, col(VerificationCase.due_at) < now
        )
    after = _after(VerificationCase.sent_at, VerificationCase.id, "case", cursor)
    if after is not None:
        query = query.where(after)
    query = query.order_by(col(VerificationCase.sent_at).desc(), col(VerificationCase.id).desc()).limit(limit)
    items = []
    for case, message in session.exec(query).all():
        assert case.id is not None
        late = case.status != CaseStatus.answered and case.due_at is not None and case.due_at < now
        items.append(
            Item(
                kind="case",
                id=case.id,
                href=f"{PREFIX}/cases/{case.id}",
                what=TOPIC_NAMES.get(case.topic, case.topic.value),
                urgent=case.priority == Priority.urgent,
                subject_name=case.subject_name,
                subject_masked=idnumbers.mask(case.subject_id_number),
                peer=case.peer,
                sent_at=case.sent_at,
                delivery=message.status if message else None,
                message_id=case.request_message_id,
                attempts=message.attempts if message else 0,
                last_error=message.last_error if message else None,
                acknowledged_at=case.acknowledged_at,
                answered_at=case.answered_at,
                outcome=OUTCOME_NAMES.get(case.outcome) if case.outcome else None,
                due_at=case.due_at,
                overdue=late,
                chased_at=case.chased_at,
                chased_by=case.chased_by,
            )
        )
    return items


def _notifications(
    session: Session, f: Filters, cursor: Cursor | None, now: datetime, limit: int
) -> list[Item]:
    query = (
        select(Notification, OutboxMessage)
        .join(OutboxMessage, col(OutboxMessage.message_id) == col(Notification.message_id), isouter=True)
        .where(col(Notification.direction) == Direction.outgoing)
    )
    if f.peer:
        query = query.where(col(Notification.peer) == f.peer)
    if f.delivery:
        query = query.where(col(OutboxMessage.status) == f.delivery)
    if f.overdue:
        query = query.where(
            col(Notification.status) != NotificationStatus.acknowledged, col(Notification.due_at) < now
        )
    after = _after(Notification.sent_at, Notification.id, "notification", cursor)
    if after is not None:
        query = query.where(after)
    query = query.order_by(col(Notification.sent_at).desc(), col(Notification.id).desc()).limit(limit)
    items = []
    for n, message in session.exec(query).all():
        assert n.id is not None
        late = n.status != NotificationStatus.acknowledged and n.due_at is not None and n.due_at < now
        items.append(
            Item(
                kind="notification",
                id=n.id,
                href=f"{PREFIX}/notifications/{n.id}",
                what=KIND_NAMES.get(n.kind, n.kind.value),
                urgent=False,
                subject_name=n.subject_name,
                subject_masked=idnumbers.mask(n.subject_id_number),
                peer=n.peer,
                sent_at=n.sent_at,
                delivery=message.status if message else None,
                message_id=n.message_id,
                attempts=message.attempts if message else 0,
                last_error=message.last_error if message else None,
                acknowledged_at=n.acknowledged_at,
                answered_at=None,
                outcome=None,
                due_at=n.due_at,
                overdue=late,
                chased_at=None,
                chased_by=None,
            )
        )
    return items


def outgoing_page(
    session: Session, f: Filters, cursor: Cursor | None, now: datetime, size: int = PAGE_SIZE
) -> tuple[list[Item], Cursor | None]:
    """One page, newest first, and the cursor of the next page (None: this is the last)."""
    rows: list[Item] = []
    if f.type in (None, "case"):
        rows += _cases(session, f, cursor, now, size + 1)
    if f.type in (None, "notification"):
        rows += _notifications(session, f, cursor, now, size + 1)
    rows.sort(key=lambda item: item.cursor.key(), reverse=True)
    page = rows[:size]
    return page, (page[-1].cursor if len(rows) > size else None)


def _back(query: str) -> str:
    """The list to go back to after a form, from the form's own copy of the query string (re-parsed,
    so only known filters and a well-formed cursor survive)."""
    params = dict(parse_qsl(query))
    after = params.get("after", "")
    more = {"after": after} if after and Cursor.decode(after) is not None else {}
    return Filters.parse(params).query(**more)


def _redirect(back: str, done: str) -> RedirectResponse:
    query = _back(back)
    return RedirectResponse(f"{PATH}?{query + '&' if query else ''}done={done}", status_code=303)


@router.get("/outgoing")
def outgoing_list(request: Request, user: Reader) -> HTMLResponse:
    params = dict(request.query_params)
    filters = Filters.parse(params)
    after_text = params.get("after", "")
    cursor = Cursor.decode(after_text) if after_text else None
    error = "翻页位置无效，已回到第一页。" if after_text and cursor is None else None
    now = utcnow()
    with read_session() as session:
        items, next_cursor = outgoing_page(session, filters, cursor, now)
        peers = peer_names(session)
    return render(
        request,
        "outgoing/list.html",
        {
            "items": items,
            "filters": filters,
            "peers": peers,
            "next_query": filters.query(after=next_cursor.encode()) if next_cursor else None,
            "first_query": filters.query() if cursor else None,
            "here": filters.query(**({"after": after_text} if cursor else {})),
            "notice": NOTICES.get(params.get("done", "")),
            "error": error,
            "DELIVERY_NAMES": DELIVERY_NAMES,
            "TYPE_NAMES": TYPE_NAMES,
            "can_requeue": Role.admin in user.roles,
            "can_chase": user.role in ACTORS,
        },
        user=user,
    )


Back = Annotated[str, Form(max_length=600)]


@router.post("/outgoing/messages/{message_id}/requeue")
def requeue(request: Request, message_id: UUID, user: Admin, back: Back = "") -> RedirectResponse:
    """Re-run one dead message (404 if unknown, 409 if it is not dead): the staff API's function."""
    with transaction() as tx:
        outbox.requeue_dead(tx, str(message_id))
    audit("outbox_requeued", user.staff.username, source(request), message=message_id)
    return _redirect(back, "requeued")


@router.post("/outgoing/cases/{case_id:int}/chase")
def chase(request: Request, case_id: DbId, user: Actor, back: Back = "") -> RedirectResponse:
    """催办 an overdue 协查 that is not answered (409 otherwise): recorded with who and when."""
    with transaction() as tx:
        verification.chase(tx, case_id, user.staff.username, utcnow())
    audit("case_chased", user.staff.username, source(request), case=case_id)
    return _redirect(back, "chased")
