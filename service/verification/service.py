"""协查 logic: create, receive, acknowledge (签收) and answer (反馈) verification requests."""

from __future__ import annotations

from collections.abc import Callable, Collection, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from uuid import UUID

from sqlalchemy import bindparam, func, insert, update
from sqlalchemy import select as sql_select
from sqlalchemy.dialects import postgresql, sqlite
from sqlmodel import Session, col, or_, select

from service import idnumbers
from service.clock import utcnow
from service.config import Settings, get_settings
from service.directory.service import get_peer
from service.errors import (
    Conflict,
    DomainError,
    Forbidden,
    InvalidState,
    NotFound,
    UnknownRequest,
    ValidationFailed,
)
from service.exchange.envelope import Receipt
from service.exchange.history import MessageRead, conversation
from service.exchange.inbox import InboundMessage
from service.exchange.outbox import enqueue
from service.models import (
    CaseStatus,
    Direction,
    InboxMessage,
    OutboxMessage,
    Priority,
    Role,
    Staff,
    Topic,
    VerificationCase,
)
from service.signing.node import NodeSigner
from service.sla.deadlines import DeadlineRule, due_at
from service.verification import states
from service.verification.schemas import (
    AckCreate,
    AckPayload,
    CaseRead,
    CaseSummary,
    ReplyCreate,
    ReplyPayload,
    RequestPayload,
    SubjectRead,
    VerificationRequestCreate,
)

REQUEST, ACK, REPLY = "verification.request", "verification.ack", "verification.reply"
PHASE = {REQUEST: 0, ACK: 1, REPLY: 2}  # a case's history in protocol order


def deadline_rule(settings: Settings, topic: Topic, priority: Priority) -> DeadlineRule:
    if topic == Topic.certificate_discrepancy:
        return settings.deadline_discrepancy
    return settings.deadline_urgent if priority == Priority.urgent else settings.deadline_normal


# --- the asking side -------------------------------------------------------------------------


def create_outgoing(
    session: Session, signer: NodeSigner, data: VerificationRequestCreate, staff: str | None
) -> VerificationCase:
    if data.recipient == signer.node_id:
        raise ValidationFailed("a node does not send 协查 requests to itself", field="recipient")
    if get_peer(session, data.recipient) is None:
        raise ValidationFailed(f"node {data.recipient} is not in the directory", field="recipient")
    payload = RequestPayload(**data.model_dump(exclude={"recipient"}))
    message = enqueue(
        session,
        type=REQUEST,
        sender=signer.node_id,
        recipient=data.recipient,
        path="/verification-requests",
        payload=payload,
    )
    case = _new_case(message.message_id, Direction.outgoing, data.recipient, CaseStatus.queued, payload)
    case.sent_at, case.created_by = message.created_at, staff
    session.add(case)
    session.flush()
    return case


def on_request_receipt(session: Session, message: OutboxMessage, receipt: Receipt) -> None:
    """The origin's receipt starts the clock: keep its received_at and due_at on the case."""
    case = _case_by_request(session, message.message_id)
    case.received_at, case.due_at = receipt.received_at, receipt.due_at
    if states.can_move(case, CaseStatus.delivered):
        states.move(case, CaseStatus.delivered)
    _touch(session, case)


@dataclass
class _Counterparty:
    """What decides whether a peer's ack or reply is taken: the case's direction, peer and state."""

    id: int | None
    direction: Direction
    peer: str
    status: CaseStatus
    acknowledged_at: datetime | None


def _counterparty(case: VerificationCase) -> _Counterparty:
    return _Counterparty(case.id, case.direction, case.peer, case.status, case.acknowledged_at)


def _not_counterparty(target: _Counterparty | None, request_id: str, sender: str) -> DomainError | None:
    """Why ``sender`` may not ack or answer the request ``request_id`` (None: it is the counterparty)."""
    if target is None:
        return UnknownRequest(f"no 协查 request {request_id}")
    if target.direction != Direction.outgoing or target.peer != sender:
        return Forbidden("the sender is not this request's counterparty")
    return None


def _ack_refusal(target: _Counterparty | None, request_id: str, sender: str) -> DomainError | None:
    """Why a 签收 from ``sender`` for the request ``request_id`` is refused (None: it is taken)."""
    refusal = _not_counterparty(target, request_id, sender)
    if refusal is not None:
        return refusal
    assert target is not None
    if target.acknowledged_at is not None or CaseStatus.acknowledged not in states.ALLOWED[target.status]:
        return Conflict(f"the request is already {target.status.value}")
    return None


def _reply_refusal(target: _Counterparty | None, request_id: str, sender: str) -> DomainError | None:
    """Why a 反馈 from ``sender`` for the request ``request_id`` is refused (None: it is taken)."""
    refusal = _not_counterparty(target, request_id, sender)
    if refusal is not None:
        return refusal
    assert target is not None
    if CaseStatus.answered not in states.ALLOWED[target.status]:
        return Conflict("the request already has a reply")
    return None


def receive_ack(session: Session, inbound: InboundMessage[AckPayload]) -> datetime | None:
    case = _counterparty_case(session, inbound, _ack_refusal)
    case.acknowledged_at = inbound.envelope.payload.acknowledged_at
    case.promised_by = inbound.envelope.payload.promised_by
    states.move(case, CaseStatus.acknowledged)
    _touch(session, case)
    return None


def receive_acks(
    session: Session, inbounds: Sequence[InboundMessage[AckPayload]]
) -> list[datetime | DomainError | None]:
    """``receive_ack`` for a batch's run of 签收, in order (the bulk path, ``PeerEndpoint.handle_many``):
    the same outcomes and the same changes, from one SELECT and one UPDATE statement."""
    targets = _counterparties(session, inbounds)
    outcomes: list[datetime | DomainError | None] = []
    changes: list[dict[str, Any]] = []
    for inbound in inbounds:
        request_id = str(inbound.envelope.correlation_id)
        target = targets.get(request_id)
        refusal = _ack_refusal(target, request_id, inbound.envelope.sender)
        outcomes.append(refusal)
        if refusal is not None:
            continue
        assert target is not None
        payload = inbound.envelope.payload
        # Kept current as the run goes: a second ack for the same request is a conflict.
        target.acknowledged_at, target.status = payload.acknowledged_at, CaseStatus.acknowledged
        changes.append(
            {
                "b_id": target.id,
                "b_acknowledged_at": payload.acknowledged_at,
                "b_promised_by": payload.promised_by,
                "b_updated_at": utcnow(),  # as _touch gives each
            }
        )
    _write_changes(session, _ACKNOWLEDGED, changes)
    return outcomes


def receive_reply(session: Session, inbound: InboundMessage[ReplyPayload]) -> datetime | None:
    case = _counterparty_case(session, inbound, _reply_refusal)
    payload = inbound.envelope.payload
    case.outcome, case.findings, case.answered_at = payload.outcome, payload.findings, payload.answered_at
    case.reply_received_at = inbound.received_at
    states.move(case, CaseStatus.answered)
    _touch(session, case)
    for listener in _reply_listeners:
        listener(session, case)
    return None


def receive_replies(
    session: Session, inbounds: Sequence[InboundMessage[ReplyPayload]]
) -> list[datetime | DomainError | None]:
    """``receive_reply`` for a batch's run of 反馈, in order (the bulk path, ``PeerEndpoint.handle_many``):
    the same outcomes and the same changes, from one SELECT and one UPDATE statement; then the reply
    listeners (``on_reply``), in the replies' order, each with its case as stored now (read in one
    SELECT, only when there is a listener)."""
    targets = _counterparties(session, inbounds)
    outcomes: list[datetime | DomainError | None] = []
    changes: list[dict[str, Any]] = []
    for inbound in inbounds:
        request_id = str(inbound.envelope.correlation_id)
        target = targets.get(request_id)
        refusal = _reply_refusal(target, request_id, inbound.envelope.sender)
        outcomes.append(refusal)
        if refusal is not None:
            continue
        assert target is not None
        target.status = CaseStatus.answered  # final: a second reply in the run is a conflict
        payload = inbound.envelope.payload
        changes.append(
            {
                "b_id": target.id,
                "b_outcome": payload.outcome,
                "b_findings": payload.findings,
                "b_answered_at": payload.answered_at,
                "b_reply_received_at": inbound.received_at,
                "b_updated_at": utcnow(),  # as _touch gives each
            }
        )
    _write_changes(session, _ANSWERED, changes)
    if changes and _reply_listeners:
        ids = [change["b_id"] for change in changes]
        query = select(VerificationCase).where(col(VerificationCase.id).in_(ids))
        cases = {case.id: case for case in session.exec(query.execution_options(populate_existing=True))}
        for case_id in ids:
            for listener in _reply_listeners:
                listener(session, cases[case_id])
    return outcomes


def _counterparties(session: Session, inbounds: Sequence[InboundMessage[Any]]) -> dict[str, _Counterparty]:
    """The cases the messages answer (by their correlation_id), as stored now: one SELECT.

    The rows are locked (``FOR UPDATE``, in id order) until the transaction ends: on PostgreSQL a
    concurrent ack or reply for one of these cases waits here for this transaction and then decides
    from the case as it commits it, so of two that exclude each other exactly one is taken (the id
    order: two runs locking several cases cannot deadlock). SQLite has no FOR UPDATE (SQLAlchemy
    leaves it out): there write transactions take turns (``BEGIN IMMEDIATE``)."""
    request_ids = {str(inbound.envelope.correlation_id) for inbound in inbounds}
    found = session.execute(
        sql_select(  # six columns: more than sqlmodel's select is typed for
            col(VerificationCase.request_message_id),
            col(VerificationCase.id),
            col(VerificationCase.direction),
            col(VerificationCase.peer),
            col(VerificationCase.status),
            col(VerificationCase.acknowledged_at),
        )
        .where(col(VerificationCase.request_message_id).in_(request_ids))
        .order_by(col(VerificationCase.id))
        .with_for_update()
    ).all()
    return {
        row[0]: _Counterparty(row[1], Direction(row[2]), row[3], CaseStatus(row[4]), row[5]) for row in found
    }


def _write_changes(session: Session, statement: Any, changes: list[dict[str, Any]]) -> None:
    """One executemany of ``statement``; a VerificationCase of these already in the session (read
    earlier in the transaction) is stale after it, and is read again when next used."""
    if not changes:
        return
    session.connection().execute(statement, changes)
    for change in changes:
        stale = session.identity_map.get(session.identity_key(VerificationCase, change["b_id"]))
        if stale is not None:
            session.expire(stale)


ReplyListener = Callable[[Session, VerificationCase], None]
_reply_listeners: list[ReplyListener] = []


def on_reply(listener: ReplyListener) -> None:
    """Let another domain act on the answer to a request it asked for (in the same transaction)."""
    _reply_listeners.append(listener)


# --- the answering side ----------------------------------------------------------------------


def _taken(session: Session, message_ids: Collection[str]) -> set[str]:
    """Those of ``message_ids`` a case here has already (a request this node sent, say): a peer's
    request that reuses one is refused as a conflict, not left to fail on the unique index."""
    ids = list(message_ids)
    if len(ids) == 1:  # every single request: a statement compiled once, no IN list to expand
        return set(session.connection().execute(_TAKEN_ONE, {"id": ids[0]}).scalars())
    return set(session.connection().execute(_TAKEN_MANY, {"ids": ids}).scalars())


def _reused(message_id: str) -> DomainError:
    return Conflict(f"message_id {message_id} is already used by another 协查 request on this node")


def receive_request(session: Session, inbound: InboundMessage[RequestPayload]) -> datetime | None:
    envelope, payload = inbound.envelope, inbound.envelope.payload
    if _taken(session, [str(envelope.message_id)]):
        raise _reused(str(envelope.message_id))
    case = _new_case(
        str(envelope.message_id), Direction.incoming, envelope.sender, CaseStatus.received, payload
    )
    case.sent_at, case.received_at = envelope.sent_at, inbound.received_at
    case.due_at = due_at(inbound.received_at, deadline_rule(get_settings(), payload.topic, payload.priority))
    session.add(case)
    session.flush()
    return case.due_at


def receive_requests(
    session: Session, inbounds: Sequence[InboundMessage[RequestPayload]]
) -> list[datetime | DomainError | None]:
    """``receive_request`` for a batch's run of 协查 requests, in order (the bulk path,
    ``PeerEndpoint.handle_many``; a single request comes this way too): the same cases, written in
    one statement, no ORM object and no flush per message. Each one's outcome is its deadline, or a
    conflict when its message_id is one a case here has already (the payload was validated before
    the transaction).

    The statement is ``INSERT … ON CONFLICT (request_message_id) DO NOTHING RETURNING``: the rows it
    does not return were taken, found by the same round trip that writes the others. One skipped
    because a concurrent copy of the same message committed it meanwhile (its inbox row is there now)
    is written again without ``ON CONFLICT``, so that the unique index raises the IntegrityError the
    caller answers by running the request again (then it is a duplicate), as before."""
    settings = get_settings()
    deadlines: dict[tuple[datetime, Topic, Priority], datetime] = {}  # a batch has one received_at
    rows: list[dict[str, Any]] = []
    for inbound in inbounds:
        envelope, payload = inbound.envelope, inbound.envelope.payload
        at = inbound.received_at
        deadline = deadlines.get((at, payload.topic, payload.priority))
        if deadline is None:
            rule = deadline_rule(settings, payload.topic, payload.priority)
            deadline = deadlines[at, payload.topic, payload.priority] = due_at(at, rule)
        row = _case_fields(
            str(envelope.message_id), Direction.incoming, envelope.sender, CaseStatus.received, payload
        )
        # The columns not given here take their defaults (None; the blind index from the ID number,
        # as the ORM's before_insert gives it), as in VerificationCase(...).
        row.update(sent_at=envelope.sent_at, received_at=at, due_at=deadline, updated_at=utcnow())
        rows.append(row)
    connection = session.connection()
    statement = _INSERT_NEW_CASES[connection.dialect.name]
    stored = set(connection.execute(statement, rows[0] if len(rows) == 1 else rows).scalars())
    skipped = [row for row in rows if row["request_message_id"] not in stored]
    if skipped:
        copies = set(
            connection.execute(_INBOX_HAS, {"ids": [row["request_message_id"] for row in skipped]}).scalars()
        )
        if copies:  # IntegrityError, from the database itself
            connection.execute(_INSERT_CASE, [row for row in skipped if row["request_message_id"] in copies])
    return [
        row["due_at"] if row["request_message_id"] in stored else _reused(row["request_message_id"])
        for row in rows
    ]


def acknowledge(session: Session, signer: NodeSigner, case_id: int, data: AckCreate) -> VerificationCase:
    case = _incoming_case(session, case_id)
    _claim(session, case, CaseStatus.acknowledged)
    case.acknowledged_at, case.promised_by = utcnow(), data.promised_by
    _answer(
        session,
        signer,
        case,
        ACK,
        "ack",
        AckPayload(acknowledged_at=case.acknowledged_at, **data.model_dump()),
    )
    return case


def reply(session: Session, signer: NodeSigner, case_id: int, data: ReplyCreate) -> VerificationCase:
    case = _incoming_case(session, case_id)
    _claim(session, case, CaseStatus.answered)
    case.outcome, case.findings, case.answered_at = data.outcome, data.findings, utcnow()
    payload = ReplyPayload(outcome=data.outcome, findings=data.findings, answered_at=case.answered_at)
    _answer(session, signer, case, REPLY, "reply", payload)
    return case


def assign_case(session: Session, case_id: int, assignee: str) -> VerificationCase:
    """领取 / 指派: who in this bureau handles an incoming case (until it is answered)."""
    case = _incoming_case(session, case_id)
    check_assignee(session, assignee)
    changed = session.exec(
        update(_CASE)
        .where(_CASE.c.id == case_id, _CASE.c.status != CaseStatus.answered)
        .values(assigned_to=assignee, updated_at=utcnow())
    )
    if changed.rowcount != 1:
        raise Conflict("the case is answered: it is closed")
    session.refresh(case)
    return case


def assignees(session: Session) -> list[str]:
    """Who an item may be assigned to: active operators and supervisors, by user name."""
    rows = session.exec(
        select(Staff.username)
        .where(col(Staff.active), col(Staff.role).in_([Role.operator, Role.supervisor]))
        .order_by(Staff.username)
    )
    return list(rows)


def check_assignee(session: Session, username: str) -> Staff:
    """An item is assigned to an active account that may act on it (not an auditor)."""
    staff = session.exec(select(Staff).where(Staff.username == username)).first()
    if staff is None or not staff.active or staff.role == Role.auditor:
        raise ValidationFailed("the assignee is not an active operator or supervisor", field="assignee")
    return staff


def on_reply_receipt(session: Session, message: OutboxMessage, receipt: Receipt) -> None:
    case = _case_by_request(session, message.conversation_id)
    case.reply_received_at = receipt.received_at
    _touch(session, case)


# --- reading ---------------------------------------------------------------------------------


def list_cases(
    session: Session,
    *,
    direction: Direction | None,
    status: CaseStatus | None,
    overdue: bool | None,
    peer: str | None,
    page: int,
    page_size: int,
) -> tuple[list[CaseSummary], int]:
    now = utcnow()
    query = select(VerificationCase)
    if direction is not None:
        query = query.where(VerificationCase.direction == direction)
    if status is not None:
        query = query.where(VerificationCase.status == status)
    if peer is not None:
        query = query.where(VerificationCase.peer == peer)
    is_overdue = (col(VerificationCase.status) != CaseStatus.answered) & (col(VerificationCase.due_at) < now)
    if overdue is True:
        query = query.where(is_overdue)
    elif overdue is False:
        query = query.where(or_(col(VerificationCase.due_at).is_(None), ~is_overdue))
    total = session.exec(select(func.count()).select_from(query.subquery())).one()
    rows = session.exec(
        query.order_by(
            col(VerificationCase.due_at).is_(None), col(VerificationCase.due_at), col(VerificationCase.id)
        )
        .offset((page - 1) * page_size)
        .limit(page_size)
    ).all()
    return [summary(c, now) for c in rows], total


def get_case(session: Session, case_id: int) -> CaseRead:
    case = session.get(VerificationCase, case_id)
    if case is None:
        raise NotFound(f"no case {case_id}")
    messages = masked_messages(conversation(session, case.request_message_id, PHASE))
    return CaseRead(
        **summary(case, utcnow()).model_dump(),
        subject=SubjectRead(
            name=case.subject_name,
            sex=case.subject_sex.value,
            birth_date=case.subject_birth_date,
        ),
        question=case.question,
        promised_by=case.promised_by,
        outcome=case.outcome,
        findings=case.findings,
        created_by=case.created_by,
        messages=messages,
    )


def subject_id_number(session: Session, case_id: int) -> str:
    """The subject's full ID number, for a reveal (service.staff.reveal); reads mask it."""
    case = session.get(VerificationCase, case_id)
    if case is None:
        raise NotFound(f"no case {case_id}")
    return case.subject_id_number


def masked_messages(messages: list[MessageRead]) -> list[MessageRead]:
    """Messages as reads show them: a payload's ``subject.id_number`` becomes ``id_number_masked``."""
    return [m.model_copy(update={"payload": _masked_payload(m.payload)}) for m in messages]


def _masked_payload(payload: dict[str, Any]) -> dict[str, Any]:
    subject = payload.get("subject")
    if not isinstance(subject, dict) or not isinstance(subject.get("id_number"), str):
        return payload
    rest = {k: v for k, v in subject.items() if k != "id_number"}
    return {**payload, "subject": {"id_number_masked": idnumbers.mask(subject["id_number"]), **rest}}


def summary(case: VerificationCase, now: datetime) -> CaseSummary:
    assert case.id is not None
    return CaseSummary(
        id=case.id,
        request_id=case.request_message_id,
        direction=case.direction,
        peer=case.peer,
        status=case.status,
        overdue=case.status != CaseStatus.answered and case.due_at is not None and case.due_at < now,
        overdue_at=case.overdue_at,
        subject_id_number_masked=idnumbers.mask(case.subject_id_number),
        topic=case.topic,
        priority=case.priority,
        key_target=case.key_target,
        reference=case.reference,
        sent_at=case.sent_at,
        received_at=case.received_at,
        due_at=case.due_at,
        acknowledged_at=case.acknowledged_at,
        answered_at=case.answered_at,
    )


# --- helpers ---------------------------------------------------------------------------------


def _new_case(
    request_id: str, direction: Direction, peer: str, status: CaseStatus, payload: RequestPayload
) -> VerificationCase:
    return VerificationCase(**_case_fields(request_id, direction, peer, status, payload), sent_at=utcnow())


def _case_fields(
    request_id: str, direction: Direction, peer: str, status: CaseStatus, payload: RequestPayload
) -> dict[str, Any]:
    """A new case's columns that come from its request (``_new_case``'s, and the bulk path's)."""
    return {
        "request_message_id": request_id,
        "direction": direction,
        "peer": peer,
        "status": status,
        "subject_id_number": payload.subject.id_number,
        "subject_name": payload.subject.name,
        "subject_sex": payload.subject.sex,
        "subject_birth_date": payload.subject.birth_date,
        "topic": payload.topic,
        "priority": payload.priority,
        "key_target": payload.key_target,
        "question": payload.question,
        "reference": payload.reference,
    }


def _answer(
    session: Session, signer: NodeSigner, case: VerificationCase, type: str, suffix: str, payload: Any
) -> None:
    enqueue(
        session,
        type=type,
        sender=signer.node_id,
        recipient=case.peer,
        path=f"/verification-requests/{case.request_message_id}/{suffix}",
        payload=payload,
        correlation_id=UUID(case.request_message_id),
    )
    _touch(session, case)


def _touch(session: Session, case: VerificationCase) -> None:
    case.updated_at = utcnow()
    session.add(case)
    session.flush()


def _case_by_request(session: Session, request_id: str) -> VerificationCase:
    """The case, locked for the transaction (PostgreSQL; SQLite's writers take turns): a receipt the
    relay records and a peer's ack arriving at the same moment cannot both start from one state."""
    case = session.exec(
        select(VerificationCase)
        .where(VerificationCase.request_message_id == request_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    if case is None:
        raise UnknownRequest(f"no 协查 request {request_id}")
    return case


Refusal = Callable[[_Counterparty | None, str, str], DomainError | None]


def _counterparty_case(session: Session, inbound: InboundMessage[Any], refusal: Refusal) -> VerificationCase:
    """The outgoing case a peer's ack or reply answers, if ``refusal`` finds no reason to refuse it.

    Read ``FOR UPDATE`` (as ``_counterparties`` reads the bulk path's), and as stored now even if the
    session has it already: a concurrent ack or reply for the case waits for this transaction."""
    request_id = str(inbound.envelope.correlation_id)
    case = session.exec(
        select(VerificationCase)
        .where(VerificationCase.request_message_id == request_id)
        .with_for_update()
        .execution_options(populate_existing=True)
    ).first()
    reason = refusal(None if case is None else _counterparty(case), request_id, inbound.envelope.sender)
    if reason is not None:
        raise reason
    assert case is not None
    return case


def _claim(session: Session, case: VerificationCase, to: CaseStatus) -> None:
    """Move an incoming case on, race-safe: the UPDATE changes the row only if its status is still
    the one read, so of two staff (or two tabs) answering at once exactly one sends a message; the
    other gets InvalidState (409). On PostgreSQL the second UPDATE waits for the first to commit and
    then matches no row; on SQLite write transactions take turns (``BEGIN IMMEDIATE``)."""
    read = case.status
    if not states.can_move(case, to):
        raise InvalidState(f"a case that is {read.value} cannot become {to.value}")
    changed = session.exec(
        update(_CASE).where(_CASE.c.id == case.id, _CASE.c.status == read).values(status=to)
    )
    if changed.rowcount != 1:
        raise InvalidState(f"the case is no longer {read.value}")
    case.status = to  # as stored (the object was read before the UPDATE)


_CASE = VerificationCase.__table__  # type: ignore[attr-defined]
_TAKEN_ONE = sql_select(_CASE.c.request_message_id).where(_CASE.c.request_message_id == bindparam("id"))
_TAKEN_MANY = sql_select(_CASE.c.request_message_id).where(
    _CASE.c.request_message_id.in_(bindparam("ids", expanding=True))
)
_INSERT_CASE = insert(_CASE)
# receive_requests': new cases, those whose request_message_id a case has already left out and told.
_INSERT_NEW_CASES = {
    name: dialect_insert(_CASE)
    .on_conflict_do_nothing(index_elements=[_CASE.c.request_message_id])
    .returning(_CASE.c.request_message_id)
    for name, dialect_insert in (("sqlite", sqlite.insert), ("postgresql", postgresql.insert))
}
_INBOX = InboxMessage.__table__  # type: ignore[attr-defined]
_INBOX_HAS = sql_select(_INBOX.c.message_id).where(_INBOX.c.message_id.in_(bindparam("ids", expanding=True)))
# receive_acks' change to each case acknowledged: the columns receive_ack sets.
_ACKNOWLEDGED = (
    update(_CASE)
    .where(_CASE.c.id == bindparam("b_id"))
    .values(
        acknowledged_at=bindparam("b_acknowledged_at"),
        promised_by=bindparam("b_promised_by"),
        status=CaseStatus.acknowledged,
        updated_at=bindparam("b_updated_at"),
    )
)
# receive_replies' change to each case answered: the columns receive_reply sets.
_ANSWERED = (
    update(_CASE)
    .where(_CASE.c.id == bindparam("b_id"))
    .values(
        outcome=bindparam("b_outcome"),
        findings=bindparam("b_findings"),
        answered_at=bindparam("b_answered_at"),
        reply_received_at=bindparam("b_reply_received_at"),
        status=CaseStatus.answered,
        updated_at=bindparam("b_updated_at"),
    )
)


def _incoming_case(session: Session, case_id: int) -> VerificationCase:
    case = session.get(VerificationCase, case_id)
    if case is None or case.direction != Direction.incoming:
        raise NotFound(f"no incoming case {case_id}")
    return case


# --- 催办: chasing the peer about an overdue outgoing request ------------------------------------


def chase(session: Session, case_id: int, staff: str, now: datetime) -> VerificationCase:
    """Record a 催办 (chase) of an overdue, unanswered outgoing request: who and when.

    The protocol has no reminder message: the chase itself goes by telephone or letter, and the
    node keeps the latest one on the case. Only a request past its deadline and not answered."""
    case = session.get(VerificationCase, case_id)
    if case is None or case.direction != Direction.outgoing:
        raise NotFound(f"no outgoing case {case_id}")
    table = VerificationCase.__table__  # type: ignore[attr-defined]
    changed = session.exec(
        update(table)
        .where(table.c.id == case_id, table.c.status != CaseStatus.answered, table.c.due_at < now)
        .values(chased_at=now, chased_by=staff, updated_at=now)
    )
    if changed.rowcount != 1:
        raise InvalidState("only an overdue request that is not answered can be chased")
    session.refresh(case)
    return case
