"""Incoming peer messages: replay check, envelope validation, idempotent storage, the receipt."""

from __future__ import annotations

import json
import logging
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic

from pydantic import BaseModel, ValidationError
from sqlalchemy import delete, insert
from sqlalchemy.exc import IntegrityError, OperationalError
from sqlmodel import Session, col, select

from service.db import read_session
from service.errors import (
    Conflict,
    DomainError,
    InternalError,
    InvalidMessage,
    RecipientMismatch,
    Replayed,
    SenderMismatch,
)
from service.exchange.envelope import Envelope, P, Receipt, canonical_json, receipt_body
from service.models import InboxMessage, OutboxMessage, SeenNonce
from service.signing.http import VerifiedSignature, content_digest

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class InboundMessage(Generic[P]):
    envelope: Envelope[P]
    received_at: datetime
    keyid: str = ""  # the key that signed the request (``<node_id>/<label>``)


# The receiver's handler returns the item's deadline (None where the protocol gives none).
InboundHandler = Callable[[Session, InboundMessage[Any]], datetime | None]
# A synchronous endpoint's handler returns the answer itself (a certificate lookup).
QueryHandler = Callable[[Session, InboundMessage[Any]], BaseModel]
# The sender's hook, run once when the peer's signed receipt is stored.
ReceiptHook = Callable[[Session, OutboxMessage, Receipt], None]


@dataclass(frozen=True)
class PeerEndpoint:
    """One row of PROTOCOL.md's endpoint table, with the domain code for both sides."""

    path: str  # below /peer/v1; ``{request_id}`` where the message answers a request
    message_type: str
    payload: type[BaseModel]
    handle: InboundHandler | None = None  # asynchronous: stored once, answered with a receipt
    on_receipt: ReceiptHook | None = None
    summary: str = ""
    answer: QueryHandler | None = None  # synchronous: answered at once with a signed 200
    response_model: type[BaseModel] | None = None

    def __post_init__(self) -> None:
        if (self.handle is None) == (self.answer is None):
            raise ValueError(f"{self.message_type}: give exactly one of handle (asynchronous) or answer")

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


def _record_nonce(session: Session, sig: VerifiedSignature, keep_until: datetime) -> None:
    session.add(SeenNonce(keyid=sig.keyid, nonce=sig.nonce or "", expires_at=keep_until))
    try:
        session.flush()
    except IntegrityError as exc:
        raise Replayed("this (keyid, nonce) was already used") from exc


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
    _record_nonce(session, signature, nonce_keep_until)
    message_id, digest = str(envelope.message_id), content_digest(body)
    existing = session.get(InboxMessage, message_id)
    if existing is not None:
        if existing.digest != digest:
            raise Conflict("this message_id was already received with a different body")
        return Accepted(200, _receipt(existing, "duplicate"))
    received_at = now.replace(microsecond=0)
    assert endpoint.handle is not None
    due_at = endpoint.handle(session, InboundMessage(envelope, received_at, signature.keyid))
    row = InboxMessage(
        message_id=message_id,
        type=endpoint.message_type,
        sender=envelope.sender,
        conversation_id=str(envelope.correlation_id or envelope.message_id),
        body=body,
        digest=digest,
        keyid=signature.keyid,
        signature_input=signature.signature_input,
        signature=signature.signature,
        received_at=received_at,
        due_at=due_at,
    )
    session.add(row)
    session.flush()
    return Accepted(202, _receipt(row, "accepted"))


@dataclass(frozen=True)
class CheckedItem:
    """A batch item that passed rule 8 (docs/protocol.md section 18): ready to be stored."""

    endpoint: PeerEndpoint
    envelope: Envelope[Any]
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
) -> list[Accepted | DomainError]:
    """Rule 7 (the batch's nonce), then each checked item as ``accept`` would take it alone: its
    outcome, in order. Each item's domain work runs in a SAVEPOINT of its own, so a refused item
    leaves nothing behind and spoils nothing else; the accepted items' inbox rows are written in
    one statement at the end. An item whose ``message_id`` came earlier in the same batch is
    answered as a retry would be (the same body: duplicate; another body: conflict).

    Raises IntegrityError when a concurrent request stored one of the messages meanwhile (the
    caller runs the batch again, and then it is a duplicate), and what the database raises."""
    _record_nonce(session, signature, nonce_keep_until)
    ids = {str(item.envelope.message_id) for item in items}
    known: dict[str, _Known] = {}
    if ids:
        query = select(
            InboxMessage.message_id, InboxMessage.digest, InboxMessage.received_at, InboxMessage.due_at
        ).where(col(InboxMessage.message_id).in_(ids))
        known = {row[0]: _Known(row[1], row[2], row[3]) for row in session.exec(query).all()}
    received_at = now.replace(microsecond=0)
    rows: list[dict[str, Any]] = []
    outcomes: list[Accepted | DomainError] = []
    for item in items:
        message_id = str(item.envelope.message_id)
        prior = known.get(message_id)
        if prior is not None:
            if prior.digest != item.digest:
                outcomes.append(Conflict("this message_id was already received with a different body"))
            else:
                outcomes.append(Accepted(200, _receipt_of(message_id, prior, "duplicate")))
            continue
        handle = item.endpoint.handle
        assert handle is not None
        try:
            with session.begin_nested():
                due_at = handle(session, InboundMessage(item.envelope, received_at, signature.keyid))
        except DomainError as exc:  # the conversation refuses it (unknown_request, forbidden, conflict)
            outcomes.append(exc)
            continue
        except (IntegrityError, OperationalError):
            raise  # a concurrent copy (run again), or the database itself: the batch as a whole
        except Exception as exc:  # a bug on one item's data must not hold up the others (it is logged)
            # The frames and the exception's type, not its message: that may quote the item's data.
            log.error(
                "batch item failed type=%s message_id=%s error=%s\n%s",
                item.endpoint.message_type,
                message_id,
                type(exc).__name__,
                "".join(traceback.format_tb(exc.__traceback__)),
            )
            outcomes.append(InternalError("the node failed to store this item; the error is logged"))
            continue
        known[message_id] = stored = _Known(item.digest, received_at, due_at)
        rows.append(
            {
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
        )
        outcomes.append(Accepted(202, _receipt_of(message_id, stored, "accepted")))
    if rows:
        session.connection().execute(insert(InboxMessage.__table__), rows)  # type: ignore[attr-defined]
    return outcomes


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
    return Accepted(200, canonical_json(result.model_dump(mode="json")))


def _receipt_of(message_id: str, known: _Known, status: str) -> bytes:
    return receipt_body(
        message_id=message_id,
        status=status,
        received_at=known.received_at,
        digest=known.digest,
        due_at=known.due_at,
    )


def _receipt(row: InboxMessage, status: str) -> bytes:
    return receipt_body(
        message_id=row.message_id,
        status=status,
        received_at=row.received_at,
        digest=row.digest,
        due_at=row.due_at,
    )


def sweep_nonces(session: Session, now: datetime) -> int:
    """Forget nonces whose signatures can no longer be accepted anyway."""
    result = session.exec(delete(SeenNonce).where(col(SeenNonce.expires_at) < now))
    return int(result.rowcount)
