"""Incoming peer messages: replay check, envelope validation, idempotent storage, the receipt."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Generic

from pydantic import BaseModel, ValidationError
from sqlalchemy import bindparam, delete, insert
from sqlalchemy import select as sql_select
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from service.db import read_session
from service.errors import (
    PROBLEM_JSON,
    Conflict,
    DomainError,
    InternalError,
    InvalidMessage,
    RecipientMismatch,
    Replayed,
    SenderMismatch,
)
from service.exchange.envelope import Envelope, P, Receipt, canonical_json, receipt_body
from service.models import EvidenceBatchBody, InboxMessage, OutboxMessage, SeenNonce
from service.signing.http import VerifiedSignature, content_digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboundMessage(Generic[P]):
    envelope: Envelope[P]
    received_at: datetime
    keyid: str = ""  # the key that signed the request (``<node_id>/<label>``)


# The receiver's handler returns the item's deadline (None where the protocol gives none).
InboundHandler = Callable[[Session, InboundMessage[Any]], datetime | None]
# The same for several messages of one type at once (a batch's): each one's outcome, in order, as
# the handler would give it taken alone after the ones before it — its deadline, or the DomainError
# that refuses it — with the accepted ones' effects written and nothing of the refused ones. It is
# given messages with distinct message_ids that are not stored yet; anything it raises is for all of
# them (the inbox then undoes its writes and takes the messages one by one with the handler).
BulkHandler = Callable[[Session, Sequence[InboundMessage[Any]]], list[datetime | DomainError | None]]
# A synchronous endpoint's handler returns the answer itself (a certificate lookup), or the
# DomainError that refuses it, returned rather than raised: what it wrote (its record of the
# refusal) is committed, and the refusal is answered as a signed problem.
QueryHandler = Callable[[Session, InboundMessage[Any]], BaseModel | DomainError]
# A synchronous endpoint's admission, given the request and the signing node, before any
# transaction: held while the request runs, or raising a DomainError (429) to refuse it.
Admission = Callable[[Any, str], AbstractContextManager[object]]
# The sender's hook, run once when the peer's signed receipt is stored.
ReceiptHook = Callable[[Session, OutboxMessage, Receipt], None]
# The same for several deliveries at once (a batch's), with the same effects as the hook run for
# each in turn; given the outbox rows as they were loaded for the delivery (before it is recorded).
BulkReceiptHook = Callable[[Session, Sequence[tuple[OutboxMessage, Receipt]]], None]


@dataclass(frozen=True)
class PeerEndpoint:
    """One row of PROTOCOL.md's endpoint table, with the domain code for both sides."""

    path: str  # below /peer/v1; ``{request_id}`` where the message answers a request
    message_type: str
    payload: type[BaseModel]
    handle: InboundHandler | None = None  # asynchronous: stored once, answered with a receipt
    # Optional, beside ``handle``: the same for a batch's run of messages of this type at once.
    handle_many: BulkHandler | None = None
    on_receipt: ReceiptHook | None = None
    on_receipts: BulkReceiptHook | None = None  # optional, beside on_receipt: a batch's deliveries
    summary: str = ""
    answer: QueryHandler | None = None  # synchronous: answered at once with a signed 200
    admit: Admission | None = None  # synchronous only: a per-peer limit (certificate look-ups)
    response_model: type[BaseModel] | None = None

    def __post_init__(self) -> None:
        if (self.handle is None) == (self.answer is None):
            raise ValueError(f"{self.message_type}: give exactly one of handle (asynchronous) or answer")
        if self.handle_many is not None and self.handle is None:
            raise ValueError(f"{self.message_type}: handle_many goes with handle, never alone")
        if self.on_receipts is not None and self.on_receipt is None:
            raise ValueError(f"{self.message_type}: on_receipts goes with on_receipt, never alone")
        if self.admit is not None and self.answer is None:
            raise ValueError(f"{self.message_type}: admit goes with answer (a synchronous endpoint)")

    @property
    def synchronous(self) -> bool:
        return self.answer is not None

    @property
    def correlated(self) -> bool:
        return "{" in self.path

    def envelope_model(self) -> type[Envelope[Any]]:
        model: type[Envelope[Any]] = Envelope[self.payload]  # type: ignore[name-defined]
        return model


@dataclass(frozen=True)
class Accepted:
    status_code: int  # 202 first time, 200 for a retry of the same message
    body: bytes
    media_type: str = "application/json"  # a synchronous endpoint's refusal: problem+json


_NONCES = SeenNonce.__table__  # type: ignore[attr-defined]
_INBOX = InboxMessage.__table__  # type: ignore[attr-defined]
_BATCH_BODIES = EvidenceBatchBody.__table__  # type: ignore[attr-defined]
# The statements of every peer request, built once: Core, with their parameters given apart, so each
# is compiled once and found in the statement cache without building a new cache key per request.
_INSERT_NONCE = insert(_NONCES)
_INSERT_INBOX = insert(_INBOX)
_KNOWN_ONE = sql_select(_INBOX.c.digest, _INBOX.c.received_at, _INBOX.c.due_at).where(
    _INBOX.c.message_id == bindparam("message_id")
)
# On PostgreSQL both in one round trip: the nonce written by a WITH clause, the SELECT after it.
_NONCE_THEN_KNOWN = _KNOWN_ONE.add_cte(
    insert(_NONCES)
    .values(keyid=bindparam("keyid"), nonce=bindparam("nonce"), expires_at=bindparam("expires_at"))
    .returning(_NONCES.c.keyid)
    .cte("recorded")
)


def _record_nonce(session: Session, sig: VerifiedSignature, keep_until: datetime) -> None:
    values = {"keyid": sig.keyid, "nonce": sig.nonce or "", "expires_at": keep_until}
    try:
        session.connection().execute(_INSERT_NONCE, values)
    except IntegrityError as exc:
        raise Replayed("this (keyid, nonce) was already used") from exc


def _record_nonce_and_find(
    session: Session, sig: VerifiedSignature, keep_until: datetime, message_id: str
) -> _Known | None:
    """``_record_nonce``, then the inbox's record of ``message_id`` if it has one."""
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        _record_nonce(session, sig, keep_until)
        found = connection.execute(_KNOWN_ONE, {"message_id": message_id}).first()
    else:
        values = {"keyid": sig.keyid, "nonce": sig.nonce or "", "expires_at": keep_until}
        try:
            found = connection.execute(_NONCE_THEN_KNOWN, {**values, "message_id": message_id}).first()
        except IntegrityError as exc:
            raise Replayed("this (keyid, nonce) was already used") from exc
    return None if found is None else _Known(*found)


def nonce_seen(sig: VerifiedSignature) -> bool:
    """Whether this (keyid, nonce) was used before (a read: for the order of the error answers)."""
    with read_session() as session:
        return session.get(SeenNonce, (sig.keyid, sig.nonce or "")) is not None


def _validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    # Field and reason only: the rejected values may be personal data.
    return [{"field": ".".join(str(p) for p in e["loc"]), "reason": e["msg"]} for e in exc.errors()]


def _refuse_unstorable_text(value: Any) -> None:
    """No database stores a lone surrogate (a ``\\ud800`` escape), PostgreSQL no NUL character."""
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError("NUL character in a string")
        value.encode("utf-8")  # UnicodeEncodeError (a ValueError) on a lone surrogate
    elif isinstance(value, dict):
        for key, item in value.items():
            _refuse_unstorable_text(key)
            _refuse_unstorable_text(item)
    elif isinstance(value, list):
        for item in value:
            _refuse_unstorable_text(item)


def load_json(body: bytes) -> Any:
    """The body as JSON that every database can store (InvalidMessage if it is not)."""
    try:
        data = json.loads(body.decode("utf-8"))
        # A NUL or a lone surrogate in the data can only come from a \u escape: strict UTF-8 gives no
        # surrogates, and json.loads refuses a raw control character (NUL) in a string and outside.
        if b"\\u" in body:
            _refuse_unstorable_text(data)
    # ValueError also covers integers past Python's digit limit; RecursionError, deep nesting.
    except (ValueError, RecursionError) as exc:
        raise InvalidMessage("body is not UTF-8 JSON without NUL characters") from exc
    return data


def validate_envelope(endpoint: PeerEndpoint, data: Any) -> Envelope[Any]:
    try:
        return endpoint.envelope_model().model_validate(data)
    except ValidationError as exc:
        raise InvalidMessage("envelope or payload does not validate", errors=_validation_detail(exc)) from exc


def parse_envelope(endpoint: PeerEndpoint, body: bytes) -> Envelope[Any]:
    return validate_envelope(endpoint, load_json(body))


def check_envelope(
    endpoint: PeerEndpoint,
    body: bytes,
    signature: VerifiedSignature,
    *,
    local_node: str,
    path_request_id: str | None,
) -> Envelope[Any]:
    """Rule 8 of PROTOCOL.md, before any transaction: the body parsed, addressed and typed right."""
    envelope = parse_envelope(endpoint, body)
    check_addressing(endpoint, envelope, signature, local_node=local_node, path_request_id=path_request_id)
    return envelope


def check_addressing(
    endpoint: PeerEndpoint,
    envelope: Envelope[Any],
    signature: VerifiedSignature,
    *,
    local_node: str,
    path_request_id: str | None,
) -> None:
    """The rest of rule 8: sender, recipient, type and (on the ack endpoints) correlation_id."""
    signer_node = signature.keyid.split("/", 1)[0]
    if envelope.sender != signer_node:
        raise SenderMismatch(f"sender {envelope.sender} is not the signing node {signer_node}")
    if envelope.recipient != local_node:
        raise RecipientMismatch(f"this is node {local_node}, not {envelope.recipient}")
    if envelope.type != endpoint.message_type:
        raise InvalidMessage(f"type must be {endpoint.message_type!r} on this endpoint")
    if endpoint.correlated and str(envelope.correlation_id) != path_request_id:
        raise InvalidMessage("correlation_id must be the request_id in the path")


def accept(
    session: Session,
    endpoint: PeerEndpoint,
    envelope: Envelope[Any],
    *,
    body: bytes,
    signature: VerifiedSignature,
    now: datetime,
    nonce_keep_until: datetime,
) -> Accepted:
    """Rule 7 (the nonce), then store the checked message once and hand it to the domain."""
    message_id, digest = str(envelope.message_id), content_digest(body)
    existing = _record_nonce_and_find(session, signature, nonce_keep_until, message_id)
    if existing is not None:
        if existing.digest != digest:
            raise Conflict("this message_id was already received with a different body")
        return Accepted(200, _receipt_of(message_id, existing, "duplicate"))
    received_at = now.replace(microsecond=0)
    inbound = InboundMessage(envelope, received_at, signature.keyid)
    if endpoint.handle_many is not None:  # the bulk path, for one: Core statements, no ORM flush
        (outcome,) = endpoint.handle_many(session, [inbound])
        if isinstance(outcome, DomainError):
            raise outcome
        due_at = outcome
    else:
        assert endpoint.handle is not None
        due_at = endpoint.handle(session, inbound)
        session.flush()  # the domain's rows first (as the ORM would order them), then the inbox row
    session.connection().execute(
        _INSERT_INBOX,
        {
            "message_id": message_id,
            "type": endpoint.message_type,
            "sender": envelope.sender,
            "conversation_id": str(envelope.correlation_id or envelope.message_id),
            "body": body,
            "digest": digest,
            "keyid": signature.keyid,
            "signature_input": signature.signature_input,
            "signature": signature.signature,
            "received_at": received_at,
            "due_at": due_at,
        },
    )
    return Accepted(202, _receipt_of(message_id, _Known(digest, received_at, due_at), "accepted"))


@dataclass(frozen=True)
class CheckedItem:
    """A batch item that passed rule 8 (docs/protocol.md section 18): ready to be stored."""

    endpoint: PeerEndpoint
    envelope: Envelope[Any]
    body: bytes
    digest: str
    message_id: str = field(init=False)  # the envelope's, as text (the key of the inbox)

    def __post_init__(self) -> None:
        object.__setattr__(self, "message_id", str(self.envelope.message_id))


@dataclass(frozen=True)
class BatchBody:
    """A batch's exact request body and its Content-Digest (taken before the transaction), kept as
    evidence with the batch's accepted items (docs/protocol.md section 18)."""

    body: bytes
    digest: str


@dataclass(frozen=True)
class _Known:
    digest: str
    received_at: datetime
    due_at: datetime | None


def accept_batch(
    session: Session,
    items: Sequence[CheckedItem],
    *,
    signature: VerifiedSignature,
    now: datetime,
    nonce_keep_until: datetime,
    kept: BatchBody | None = None,
) -> list[Accepted | DomainError]:
    """Rule 7 (the batch's nonce), then each checked item as ``accept`` would take it alone: its
    outcome, in order. An item whose ``message_id`` is stored, or came earlier in the same batch and
    was accepted, is answered as a retry would be (the same body: duplicate; another body: conflict).
    The others go to their domain code in runs, in the items' order: consecutive items of one type,
    none of them twice. A run whose endpoint has a bulk path (``handle_many``) is handed to it at
    once, in one SAVEPOINT; any other item's domain work runs in a SAVEPOINT of its own. Either way
    a refused item leaves nothing behind and spoils nothing else. The accepted items' inbox rows are
    written in one statement at the end, and with them, if any, the batch's body (``kept``: the
    evidence that the sender signed these items), once.

    Raises IntegrityError when a concurrent request stored one of the messages meanwhile (the
    caller runs the batch again, and then it is a duplicate), and what the database raises."""
    _record_nonce(session, signature, nonce_keep_until)
    ids = {item.message_id for item in items}
    known: dict[str, _Known] = {}
    if ids:
        query = select(
            InboxMessage.message_id, InboxMessage.digest, InboxMessage.received_at, InboxMessage.due_at
        ).where(col(InboxMessage.message_id).in_(ids))
        known = {row[0]: _Known(row[1], row[2], row[3]) for row in session.exec(query).all()}
    received_at = now.replace(microsecond=0)
    rows: list[dict[str, Any]] = []
    outcomes: list[Accepted | DomainError | None] = [None] * len(items)
    run: list[int] = []  # indexes of the items waiting for their domain code
    in_run: set[str] = set()

    def take_run() -> None:
        endpoint = items[run[0]].endpoint
        inbounds = [InboundMessage(items[i].envelope, received_at, signature.keyid) for i in run]
        for index, result in zip(run, _handle_run(session, endpoint, inbounds), strict=True):
            item = items[index]
            message_id = item.message_id
            if isinstance(result, DomainError):  # the conversation refuses it (unknown_request, …)
                outcomes[index] = result
                continue
            known[message_id] = stored = _Known(item.digest, received_at, result)
            rows.append(_inbox_row(item, message_id, signature, received_at, result))
            outcomes[index] = Accepted(202, _receipt_of(message_id, stored, "accepted"))
        run.clear()
        in_run.clear()

    for index, item in enumerate(items):
        message_id = item.message_id
        if run and (
            message_id in in_run or item.endpoint.message_type != items[run[0]].endpoint.message_type
        ):
            take_run()  # its fate decides this item's (a second copy), or another type comes
        prior = known.get(message_id)
        if prior is not None:
            if prior.digest != item.digest:
                outcomes[index] = Conflict("this message_id was already received with a different body")
            else:
                outcomes[index] = Accepted(200, _receipt_of(message_id, prior, "duplicate"))
            continue
        run.append(index)
        in_run.add(message_id)
    if run:
        take_run()
    if rows:
        session.connection().execute(_INSERT_INBOX, rows)
        if kept is not None:  # encrypted at rest by the column's type, as the items' bodies are
            batch_row = {
                "keyid": signature.keyid,
                "nonce": signature.nonce or "",
                "digest": kept.digest,
                "received_at": received_at,
                "body": kept.body,
            }
            session.connection().execute(insert(_BATCH_BODIES).values(batch_row))
    done = [outcome for outcome in outcomes if outcome is not None]
    assert len(done) == len(items)
    return done


def _handle_run(
    session: Session, endpoint: PeerEndpoint, inbounds: Sequence[InboundMessage[Any]]
) -> list[datetime | DomainError | None]:
    """The domain's outcome of each message of a run (distinct, new messages of one type)."""
    if endpoint.handle_many is not None:
        try:
            with session.begin_nested():
                results = endpoint.handle_many(session, inbounds)
                if len(results) != len(inbounds):
                    raise RuntimeError(f"{len(results)} outcomes for {len(inbounds)} messages")
        except (IntegrityError, OperationalError):
            raise  # a concurrent copy (run again), or the database itself: the batch as a whole
        except Exception as exc:  # a bug in the bulk path: undone, and the run taken one by one
            log.error(
                "batch bulk handler failed type=%s count=%d error=%s\n%s",
                endpoint.message_type,
                len(inbounds),
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
        else:
            return results
    return [_handle_one(session, endpoint, inbound) for inbound in inbounds]


def _handle_one(
    session: Session, endpoint: PeerEndpoint, inbound: InboundMessage[Any]
) -> datetime | DomainError | None:
    """One message's domain work in a SAVEPOINT of its own: its deadline, or why it is refused."""
    handle = endpoint.handle
    assert handle is not None
    try:
        with session.begin_nested():
            return handle(session, inbound)
    except DomainError as exc:  # the conversation refuses it (unknown_request, forbidden, conflict)
        return exc
    except (IntegrityError, OperationalError):
        raise  # a concurrent copy (run again), or the database itself: the batch as a whole
    except Exception as exc:  # a bug on one item's data must not hold up the others (it is logged)
        # The frames and the exception's type, not its message: that may quote the item's data.
        log.error(
            "batch item failed type=%s message_id=%s error=%s\n%s",
            endpoint.message_type,
            inbound.envelope.message_id,
            type(exc).__name__,
            "".join(traceback.format_tb(exc.__traceback__)),
        )
        return InternalError("the node failed to store this item; the error is logged")


def _inbox_row(
    item: CheckedItem,
    message_id: str,
    signature: VerifiedSignature,
    received_at: datetime,
    due_at: datetime | None,
) -> dict[str, Any]:
    return {
        "message_id": message_id,
        "type": item.endpoint.message_type,
        "sender": item.envelope.sender,
        "conversation_id": str(item.envelope.correlation_id or item.envelope.message_id),
        "body": item.body,
        "digest": item.digest,
        "keyid": signature.keyid,
        "signature_input": signature.signature_input,
        "signature": signature.signature,
        "received_at": received_at,
        "due_at": due_at,
    }


def answer(
    session: Session,
    endpoint: PeerEndpoint,
    envelope: Envelope[Any],
    *,
    signature: VerifiedSignature,
    now: datetime,
    nonce_keep_until: datetime,
) -> Accepted:
    """Rule 7 (the nonce), then the domain's answer (which keeps its own log of what it disclosed)."""
    _record_nonce(session, signature, nonce_keep_until)
    assert endpoint.answer is not None
    inbound = InboundMessage(envelope, now.replace(microsecond=0), signature.keyid)
    result = endpoint.answer(session, inbound)
    if isinstance(result, DomainError):  # a refusal the domain recorded (committed with the nonce)
        return Accepted(result.status_code, canonical_json(result.problem()), PROBLEM_JSON)
    return Accepted(200, canonical_json(result.model_dump(mode="json")))


def _receipt_of(message_id: str, known: _Known, status: str) -> bytes:
    return receipt_body(
        message_id=message_id,
        status=status,
        received_at=known.received_at,
        digest=known.digest,
        due_at=known.due_at,
    )


def sweep_nonces(session: Session, now: datetime) -> int:
    """Forget nonces whose signatures can no longer be accepted anyway."""
    result = session.exec(delete(SeenNonce).where(col(SeenNonce.expires_at) < now))
    return int(result.rowcount)
