"""Appending to the evidence log (sealing), signing checkpoints of its head, purging old bodies.

Sealing is a job, not part of the request path: a message is stored as it always was, and every
``evidence_seal_interval_seconds`` the sealer reads the messages no entry holds yet (by time, from
the last one sealed less ``evidence_seal_margin_seconds``), prepares their entries outside any
transaction (digests, the signatures in canonical form, which request signature covers what), then
appends at most ``evidence_seal_chunk`` of them in one short transaction that holds the chain head
row ``FOR UPDATE``: on PostgreSQL several replicas' sealers take turns on that row lock (the one
that waited sees the other's entries and skips them); on SQLite the process's writer lock and
``BEGIN IMMEDIATE`` already serialise writers. Hashing under the lock is a few SHA-256 of short
strings per entry; the Ed25519 work (which signature base an inbound message's signature verifies
over) is done before the transaction.
"""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Protocol

from sqlalchemy import String, cast, exists, func, insert, update
from sqlalchemy.engine import Engine
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, select

from service.clock import utcnow
from service.db import read_session, transaction
from service.errors import PROBLEM_JSON
from service.evidence import chain
from service.models import (
    CertificateCheck,
    EvidenceBatchBody,
    EvidenceCheckpoint,
    EvidenceEntry,
    EvidenceHead,
    EvidenceSentAnswer,
    EvidenceSentRequest,
    InboxMessage,
    LookupLog,
    NodeKey,
    OutboxMessage,
    OutboxStatus,
    PeerKey,
)
from service.signing import http as _http
from service.signing.http import _REQUEST, _RESPONSE, _read, _signature_field  # the protocol's profiles
from service.signing.node import NodeSigner

log = logging.getLogger(__name__)

INBOX, OUTBOX, LOOKUP = "inbox", "outbox", "lookup"
ANSWERED = "lookup_answered"  # a look-up this node answered (or refused) as origin
LOOKUP_MESSAGE = "certificate.lookup"  # its message type (service.certificates.peer.LOOKUP)
KINDS = (INBOX, OUTBOX, LOOKUP, ANSWERED)
# A look-up answered is sealed once its answer's signature is kept (written just after the answer
# was signed), or this long after it without one (then the entry has the request, status and digest).
ANSWER_SETTLE = timedelta(seconds=60)
PEER_PREFIX = "/peer/v1"
BATCH_PATH = PEER_PREFIX + "/batch"
_ENTRIES = EvidenceEntry.__table__  # type: ignore[attr-defined]
_PLACEHOLDER = re.compile(r"\{[a-z_]+\}")
_BOUND = [p for p in (getattr(_http, "_BOUND_RESPONSE", None),) if p is not None]  # answers bound to requests


@functools.lru_cache(maxsize=4096)
def _canonical_signature(signature_input: str, signature: str, *, response: bool) -> tuple[str, str]:
    """The Signature-Input and Signature as yipanqi writes them (one ``yp`` member), whatever form
    they came in; as they are if they cannot be read (then they will not verify). Remembered: the
    items of a batch share one signature, and a sealing run or a verification meets it once an item."""
    headers = [("Signature-Input", signature_input), ("Signature", signature)]
    profiles = [_RESPONSE, *_BOUND] if response else [_REQUEST]
    for profile in profiles:
        try:
            read, _type, _digest = _read(headers, profile)
        except Exception:
            continue
        if (
            read.signature_params is not None
            and len(read.value) == 64
            and read.components == profile.components
        ):
            return f"yp={read.signature_params}", _signature_field(read.value)
    return signature_input, signature


def _keyid(signature_input: str | None) -> str | None:
    if not signature_input:
        return None
    try:
        return chain.keyid_of(signature_input)
    except ValueError:
        return None


def load_keys(session: Session) -> dict[str, str]:
    """Every key this node knows, peers' and its own: keyid → public key text."""
    keys = {k.keyid: k.public_key for k in session.exec(select(PeerKey))}
    keys.update({k.keyid: k.public_key for k in session.exec(select(NodeKey))})
    return keys


def _endpoint_paths() -> dict[str, str]:
    """message type → the path its single endpoint has (below /peer/v1)."""
    from service.certificates.peer import ENDPOINTS as CERTIFICATES
    from service.notifications.peer import ENDPOINTS as NOTIFICATIONS
    from service.verification.peer import ENDPOINTS as VERIFICATION

    return {e.message_type: e.path for e in (*VERIFICATION, *NOTIFICATIONS, *CERTIFICATES)}


class Received(Protocol):
    """What an inbox entry is made of: an InboxMessage's columns, all but the body (its digest,
    ``content_digest`` of the body taken when it was stored, is what the entry keeps)."""

    message_id: str
    type: str
    sender: str
    conversation_id: str
    digest: str
    keyid: str
    signature_input: str
    signature: str
    received_at: datetime


# The inbox columns the sealer reads: the body is not read (nor decrypted), its digest is.
_RECEIVED = tuple(
    getattr(InboxMessage, name)
    for name in (
        "message_id",
        "type",
        "sender",
        "conversation_id",
        "digest",
        "keyid",
        "signature_input",
        "signature",
        "received_at",
    )
)


def _inbound_path(template: str | None, row: Received) -> str | None:
    if template is None:
        return None
    return PEER_PREFIX + _PLACEHOLDER.sub(row.conversation_id, template)


@dataclass
class Prepared:
    kind: str
    source_id: str
    fields: dict[str, Any]  # every entry field but seq, sealed_at, prev_hash, entry_hash
    occurred_at: datetime


def _base(kind: str, source_id: str, occurred_at: datetime, **fields: Any) -> Prepared:
    values: dict[str, Any] = dict.fromkeys(chain.ENTRY_FIELDS)
    values.update(kind=kind, source_id=source_id, occurred_at=chain.timestamp(occurred_at), **fields)
    for name in ("seq", "sealed_at", "prev_hash"):
        values.pop(name)
    return Prepared(kind, source_id, values, occurred_at)


def _nonce(signature_input: str | None) -> str | None:
    if not signature_input:
        return None
    try:
        return chain.nonce_of(signature_input)
    except ValueError:
        return None


# (keyid, nonce) of a batch request → the Content-Digests of the batch bodies kept for it.
Batches = Mapping[tuple[str, str], Sequence[str]]


def prepare_inbox(
    row: Received,
    keys: Mapping[str, str],
    paths: Mapping[str, str],
    batches: Batches | None = None,
    verified: dict[tuple[str, str], str] | None = None,
) -> Prepared:
    """``verified``: a memo of the batch signatures already found to verify, (keyid, signature) →
    the batch's digest, kept across the rows of one sealing run: the items of one batch share its
    signature, so a batch of 1,000 costs one Ed25519 verification, not 2,000."""
    digest = row.digest
    signature_input, signature = _canonical_signature(row.signature_input, row.signature, response=False)
    keyid = _keyid(signature_input) or row.keyid
    key = keys.get(keyid)
    path = _inbound_path(paths.get(row.type), row)
    request_digest: str | None = digest
    # A message that came in a batch was signed as part of it: its signature covers the batch's
    # digest, that of the batch body kept for its request (keyid, nonce), over which it verifies
    # (then not over the message's own body: the digests differ). None kept (a batch received before
    # migration 0017, or a single request): whether it verifies over its own body tells which it is,
    # and a batch's then has no digest.
    if path is not None and key is not None:
        memo = (keyid, signature)
        in_batch = verified.get(memo) if verified is not None else None
        if in_batch is None:
            nonce = _nonce(signature_input)
            kept = (batches or {}).get((keyid, nonce), ()) if nonce else ()
            in_batch = _batch_signed(key, signature, signature_input, kept)
            if in_batch is not None and verified is not None:
                verified[memo] = in_batch
        if in_batch is not None:
            path, request_digest = BATCH_PATH, in_batch
        elif not _signed_alone(key, signature, signature_input, path, digest):
            path, request_digest = BATCH_PATH, None
    return _base(
        INBOX,
        row.message_id,
        row.received_at,
        message_id=row.message_id,
        message_type=row.type,
        peer=row.sender,
        body_digest=digest,
        request_keyid=keyid,
        request_public_key=key,
        request_path=path,
        request_digest=request_digest,
        request_signature_input=signature_input,
        request_signature=signature,
    )


def _batch_signed(key: str, signature: str, signature_input: str, kept: Sequence[str]) -> str | None:
    """Which of the batch digests ``kept`` the request signature verifies over, if any."""
    for digest in kept:
        try:
            if chain.verifies(
                key, chain.signature_bytes(signature), chain.request_base(BATCH_PATH, digest, signature_input)
            ):
                return digest
        except ValueError:
            return None
    return None


def _signed_alone(key: str, signature: str, signature_input: str, path: str, digest: str) -> bool:
    """Whether the request signature verifies over the message's own body (a single request)."""
    try:
        return chain.verifies(
            key, chain.signature_bytes(signature), chain.request_base(path, digest, signature_input)
        )
    except ValueError:
        return False


def prepare_outbox(row: OutboxMessage, sent: EvidenceSentRequest | None, keys: Mapping[str, str]) -> Prepared:
    assert row.delivered_at is not None
    request: dict[str, Any] = {}
    if sent is not None:
        keyid = _keyid(sent.signature_input)
        request = {
            "request_keyid": keyid,
            "request_public_key": keys.get(keyid) if keyid else None,
            "request_path": sent.path,
            "request_digest": sent.digest,
            "request_signature_input": sent.signature_input,
            "request_signature": sent.signature,
        }
    answer: dict[str, Any] = {}
    if row.receipt_signature_input and row.receipt_signature and row.receipt_body is not None:
        signature_input, signature = _canonical_signature(
            row.receipt_signature_input, row.receipt_signature, response=True
        )
        keyid = _keyid(signature_input)
        answer = {
            "answer_status": row.receipt_status,
            "answer_content_type": chain.JSON,
            "answer_digest": chain.content_digest(row.receipt_body),
            "answer_keyid": keyid,
            "answer_public_key": keys.get(keyid) if keyid else None,
            "answer_signature_input": signature_input,
            "answer_signature": signature,
        }
    return _base(
        OUTBOX,
        row.message_id,
        row.delivered_at,
        message_id=row.message_id,
        message_type=row.type,
        peer=row.recipient,
        body_digest=chain.content_digest(row.body),
        **request,
        **answer,
    )


def prepare_lookup(
    row: CertificateCheck, sent: EvidenceSentRequest | None, keys: Mapping[str, str]
) -> Prepared:
    assert row.id is not None
    # The request the answer is bound to (its path, digest and signature), when it was kept.
    request: dict[str, Any] = {}
    if sent is not None:
        request = {
            "request_path": sent.path,
            "request_digest": sent.digest,
            "request_signature": sent.signature,
            "request_signature_input": sent.signature_input or None,
        }
    signature_input, signature = _canonical_signature(
        row.response_signature_input, row.response_signature, response=True
    )
    keyid = _keyid(signature_input)
    digest = chain.content_digest(row.response_body)
    return _base(
        LOOKUP,
        str(row.id),
        row.checked_at,
        message_id=row.message_id,
        message_type="certificate_lookup",
        peer=row.origin_node,
        body_digest=digest,
        answer_status=200,
        answer_content_type=chain.JSON,
        answer_digest=digest,
        answer_keyid=keyid,
        answer_public_key=keys.get(keyid) if keyid else None,
        answer_signature_input=signature_input,
        answer_signature=signature,
        **request,
    )


def prepare_answered(row: LookupLog, sent: EvidenceSentAnswer | None, keys: Mapping[str, str]) -> Prepared:
    """A look-up this node answered as origin: the asker's request as signed (its body is not
    kept, so the body digest is the signed Content-Digest) and this node's answer bound to it."""
    assert row.id is not None
    assert row.request_signature_input
    assert row.request_signature

    request_input, request_signature = _canonical_signature(
        row.request_signature_input, row.request_signature, response=False
    )
    request_keyid = _keyid(request_input) or row.keyid
    answer: dict[str, Any] = {}
    if sent is not None:
        signature_input, signature = _canonical_signature(sent.signature_input, sent.signature, response=True)
        keyid = _keyid(signature_input)
        answer = {
            "answer_keyid": keyid,
            "answer_public_key": keys.get(keyid) if keyid else None,
            "answer_signature_input": signature_input,
            "answer_signature": signature,
        }
    status = row.answer_status
    return _base(
        ANSWERED,
        str(row.id),
        row.looked_up_at,
        message_id=row.message_id,
        message_type=LOOKUP_MESSAGE,
        peer=row.requester,
        body_digest=row.request_digest or "",
        request_keyid=request_keyid,
        request_public_key=keys.get(request_keyid),
        request_path=row.request_path,
        request_digest=row.request_digest,
        request_signature_input=request_input,
        request_signature=request_signature,
        answer_status=status,
        answer_content_type=None if status is None else chain.JSON if status == 200 else PROBLEM_JSON,
        answer_digest=row.answer_digest,
        **answer,
    )


def _sealed(kind: str, source: Any) -> Any:
    return exists().where(col(EvidenceEntry.kind) == kind, col(EvidenceEntry.source_id) == source)


def _since(session: Session, kind: str, margin: timedelta) -> datetime | None:
    latest = session.exec(
        select(func.max(EvidenceEntry.occurred_at)).where(col(EvidenceEntry.kind) == kind)
    ).one()
    return latest - margin if latest is not None else None


def unsealed(
    session: Session,
    *,
    limit: int,
    margin: timedelta,
    full: bool = False,
    now: datetime | None = None,
) -> list[Prepared]:
    """Up to ``limit`` messages no entry holds yet, oldest first, their entries prepared.

    ``full``: look through every message, not only those since the last sealed one less ``margin``.
    ``now``: when a look-up answered without a kept answer signature is old enough (ANSWER_SETTLE)."""
    keys, paths = load_keys(session), _endpoint_paths()
    found: list[Prepared] = []

    since = None if full else _since(session, INBOX, margin)
    inbox = select(*_RECEIVED).where(~_sealed(INBOX, InboxMessage.message_id))
    if since is not None:
        inbox = inbox.where(col(InboxMessage.received_at) >= since)
    received = list(
        session.exec(inbox.order_by(col(InboxMessage.received_at), col(InboxMessage.message_id)).limit(limit))
    )
    batches = _batch_digests(session, received)
    verified: dict[tuple[str, str], str] = {}
    for row in received:
        found.append(prepare_inbox(row, keys, paths, batches, verified))

    since = None if full else _since(session, OUTBOX, margin)
    outbox = (
        select(OutboxMessage, EvidenceSentRequest)
        .outerjoin(EvidenceSentRequest, col(EvidenceSentRequest.message_id) == col(OutboxMessage.message_id))
        .where(
            col(OutboxMessage.status) == OutboxStatus.delivered,
            col(OutboxMessage.delivered_at).is_not(None),
            ~_sealed(OUTBOX, OutboxMessage.message_id),
        )
    )
    if since is not None:
        outbox = outbox.where(col(OutboxMessage.delivered_at) >= since)
    ordered = outbox.order_by(col(OutboxMessage.delivered_at), col(OutboxMessage.message_id)).limit(limit)
    for message, sent in session.exec(ordered):
        found.append(prepare_outbox(message, sent, keys))

    since = None if full else _since(session, LOOKUP, margin)
    as_text = cast(col(CertificateCheck.id), String(36))
    lookups = (
        select(CertificateCheck, EvidenceSentRequest)
        .outerjoin(
            EvidenceSentRequest, col(EvidenceSentRequest.message_id) == col(CertificateCheck.message_id)
        )
        .where(~_sealed(LOOKUP, as_text))
    )
    if since is not None:
        lookups = lookups.where(col(CertificateCheck.checked_at) >= since)
    for check, bound in session.exec(
        lookups.order_by(col(CertificateCheck.checked_at), col(CertificateCheck.id)).limit(limit)
    ):
        found.append(prepare_lookup(check, bound, keys))

    # Look-ups answered as origin (since migration 0016: rows before it keep no signature).
    since = None if full else _since(session, ANSWERED, margin + ANSWER_SETTLE)
    settled = (now or utcnow()) - ANSWER_SETTLE
    answered = (
        select(LookupLog, EvidenceSentAnswer)
        .outerjoin(EvidenceSentAnswer, col(EvidenceSentAnswer.message_id) == col(LookupLog.message_id))
        .where(
            col(LookupLog.request_signature).is_not(None),
            ~_sealed(ANSWERED, cast(col(LookupLog.id), String(36))),
            col(EvidenceSentAnswer.message_id).is_not(None) | (col(LookupLog.looked_up_at) <= settled),
        )
    )
    if since is not None:
        answered = answered.where(col(LookupLog.looked_up_at) >= since)
    for asked, signed in session.exec(
        answered.order_by(col(LookupLog.looked_up_at), col(LookupLog.id)).limit(limit)
    ):
        found.append(prepare_answered(asked, signed, keys))

    found.sort(key=lambda p: (p.occurred_at, p.kind, p.source_id))
    return found[:limit]


def _batch_digests(session: Session, rows: Sequence[Received]) -> dict[tuple[str, str], list[str]]:
    """The digests of the batch bodies kept for these messages' requests (by keyid and nonce; the
    bodies themselves are not read)."""
    nonces = {n for n in (_nonce(r.signature_input) for r in rows) if n}
    found: dict[tuple[str, str], list[str]] = {}
    if not nonces:
        return found
    query = select(EvidenceBatchBody.keyid, EvidenceBatchBody.nonce, EvidenceBatchBody.digest).where(
        col(EvidenceBatchBody.nonce).in_(nonces)
    )
    for keyid, nonce, digest in session.exec(query.order_by(col(EvidenceBatchBody.id))):
        found.setdefault((keyid, nonce), []).append(digest)
    return found


def _lock_head(tx: Session, now: datetime) -> EvidenceHead:
    head = tx.exec(select(EvidenceHead).where(col(EvidenceHead.id) == 1).with_for_update()).first()
    if head is None:
        head = EvidenceHead(id=1, seq=0, head_hash=chain.GENESIS, updated_at=now)
        tx.add(head)
        tx.flush()  # a concurrent first sealer: IntegrityError, and append() tries once more
    return head


def append(engine: Engine | None, prepared: Iterable[Prepared], now: datetime) -> int:
    """Append the entries of ``prepared`` that no one appended meanwhile, in one transaction."""
    prepared = list(prepared)
    if not prepared:
        return 0
    for attempt in range(2):
        try:
            return _append(engine, prepared, now)
        except IntegrityError:  # another sealer created the head row (or sealed) first
            if attempt:
                raise
    return 0


def _append(engine: Engine | None, prepared: list[Prepared], now: datetime) -> int:
    sealed_at = chain.timestamp(now)
    with transaction(engine) as tx:
        head = _lock_head(tx, now)
        done: set[tuple[str, str]] = set()
        for kind in KINDS:
            ids = [p.source_id for p in prepared if p.kind == kind]
            if ids:
                rows = tx.exec(
                    select(EvidenceEntry.source_id).where(
                        col(EvidenceEntry.kind) == kind, col(EvidenceEntry.source_id).in_(ids)
                    )
                )
                done.update((kind, source_id) for source_id in rows)
        seq, prev, rows_out = head.seq, head.head_hash, []
        for item in prepared:
            if (item.kind, item.source_id) in done:
                continue
            seq += 1
            entry = {**item.fields, "seq": seq, "sealed_at": sealed_at, "prev_hash": prev}
            prev = chain.entry_hash(entry)
            rows_out.append(
                {
                    **entry,
                    "entry_hash": prev,
                    "occurred_at": item.occurred_at,
                    "sealed_at": now,
                }
            )
        if rows_out:
            tx.connection().execute(insert(_ENTRIES), rows_out)
            head.seq, head.head_hash, head.updated_at = seq, prev, now
            tx.add(head)
    return len(rows_out)


def seal(
    engine: Engine | None = None,
    *,
    chunk: int = 500,
    margin: timedelta = timedelta(minutes=10),
    full: bool = False,
    now: datetime | None = None,
) -> int:
    """Seal every message not sealed yet, ``chunk`` at a time; how many entries were appended."""
    total = 0
    while True:
        at = now or utcnow()
        with read_session(engine) as session:
            prepared = unsealed(session, limit=chunk, margin=margin, full=full, now=at)
        if not prepared:
            return total
        added = append(engine, prepared, at)
        total += added
        if len(prepared) < chunk or not added:
            return total


# --- checkpoints ------------------------------------------------------------------------------------


def checkpoint(
    engine: Engine | None, signer: NodeSigner, *, now: datetime | None = None, force: bool = False
) -> EvidenceCheckpoint | None:
    """Sign the chain head (if it moved since the last checkpoint, or ``force``); the checkpoint."""
    with read_session(engine) as session:
        head = session.get(EvidenceHead, 1)
        last = session.exec(select(EvidenceCheckpoint).order_by(col(EvidenceCheckpoint.id).desc())).first()
    if head is None or head.seq == 0:
        return None
    if not force and last is not None and (last.seq, last.head_hash) == (head.seq, head.head_hash):
        return None
    at = now or utcnow()
    payload = chain.checkpoint_payload(
        node_id=signer.node_id,
        seq=head.seq,
        head_hash=head.head_hash,
        signed_at=chain.timestamp(at),
        keyid=signer.keyid,
    )
    row = EvidenceCheckpoint(
        node_id=signer.node_id,
        seq=head.seq,
        head_hash=head.head_hash,
        signed_at=at,
        keyid=signer.keyid,
        signature=chain.sign_checkpoint(signer.private_key, payload),
    )
    with transaction(engine) as tx:
        tx.add(row)
    return row


# --- retention --------------------------------------------------------------------------------------


def purge_bodies(
    engine: Engine | None, *, retention_days: int, now: datetime | None = None, chunk: int = 500
) -> int:
    """Empty the bodies of sealed messages older than ``retention_days`` (delivered outbox rows,
    inbox rows, certificate answers), ``chunk`` rows per transaction; how many were emptied. A kept
    batch body goes by the same age, once none of the messages it brought keeps a body any more
    (they and it have the same ``received_at`` and keyid): the batch's items are those bodies.

    The entries keep every digest and signature, so the chain still verifies; verify reports the
    emptied bodies as purged."""
    cutoff = (now or utcnow()) - timedelta(days=retention_days)
    total = 0
    inbox, outbox = InboxMessage.__table__, OutboxMessage.__table__  # type: ignore[attr-defined]
    checks = CertificateCheck.__table__  # type: ignore[attr-defined]
    batches = EvidenceBatchBody.__table__  # type: ignore[attr-defined]
    as_text = cast(checks.c.id, String(36))
    item_kept = exists().where(
        inbox.c.received_at == batches.c.received_at,
        inbox.c.keyid == batches.c.keyid,
        func.length(inbox.c.body) > 0,
    )
    targets: list[tuple[Any, Any, Any, Any]] = [
        (
            inbox,
            inbox.c.message_id,
            inbox.c.body,
            (inbox.c.received_at < cutoff) & _sealed(INBOX, inbox.c.message_id),
        ),
        (
            outbox,
            outbox.c.message_id,
            outbox.c.body,
            (outbox.c.status == OutboxStatus.delivered)
            & (outbox.c.delivered_at < cutoff)
            & _sealed(OUTBOX, outbox.c.message_id),
        ),
        (
            checks,
            checks.c.id,
            checks.c.response_body,
            (checks.c.checked_at < cutoff) & _sealed(LOOKUP, as_text),
        ),
        # After the inbox rows: a batch's body goes with the last of its items' bodies.
        (batches, batches.c.id, batches.c.body, (batches.c.received_at < cutoff) & ~item_kept),
    ]
    for table, key, body, due in targets:
        while True:
            with read_session(engine) as session:
                ids = list(
                    session.execute(select(key).where(due, func.length(body) > 0).limit(chunk)).scalars()
                )
            if not ids:
                break
            with transaction(engine) as tx:
                tx.connection().execute(update(table).where(key.in_(ids)).values({body.name: b""}))
            total += len(ids)
            if len(ids) < chunk:
                break
    return total
