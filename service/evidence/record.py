"""What the node keeps for the evidence log beside its messages: the signature of the attempt that
delivered an outbox message (its Signature-Input and Signature as sent, the path and Content-Digest
they cover: the message's own, or the batch's that carried it); the request a look-up answer this
node received is bound to; and, as the origin of a look-up, the request it answered (as received)
and the signature of its answer (as sent)."""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import httpx
from sqlalchemy import insert
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service.db import transaction
from service.models import EvidenceSentAnswer, EvidenceSentRequest
from service.signing.http import RequestBinding, VerifiedSignature

PEER_PREFIX = "/peer/v1"
# Where a look-up answered as origin leaves its message_id once committed (``request.state.<this>``,
# set by service.certificates.peer.admit), for the code that signs the answer to ``keep_answer``.
ANSWER_STATE = "evidence_answer"
log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SentRequest:
    path: str  # the whole path signed, /peer/v1/…
    digest: str
    signature_input: str
    signature: str


def sent_request(response: httpx.Response, path: str) -> SentRequest | None:
    """The signed request ``response`` answers (sent to ``path`` below /peer/v1), from its headers."""
    try:
        headers = response.request.headers
    except RuntimeError:  # a response built without a request (a test's)
        return None
    signature_input, signature = headers.get("Signature-Input"), headers.get("Signature")
    digest = headers.get("Content-Digest")
    if not (signature_input and signature and digest):
        return None
    return SentRequest(PEER_PREFIX + path, digest, signature_input, signature)


def bound_request(signature: VerifiedSignature) -> SentRequest | None:
    """The request a synchronous answer is bound to (RFC 9421 ``req``): its path, Content-Digest
    and signature, without the Signature-Input (what the answer's signature covers of it)."""
    binding = getattr(signature, "bound_to", None)
    if binding is None:
        return None
    return SentRequest(binding.path, binding.content_digest, "", f"yp={binding.signature}")


def record_sent(session: Session, message_id: str, sent: SentRequest | None) -> None:
    """Keep the delivered attempt's signature (in the transaction that records the delivery)."""
    if sent is None or session.get(EvidenceSentRequest, message_id) is not None:
        return
    session.add(
        EvidenceSentRequest(
            message_id=message_id,
            path=sent.path,
            digest=sent.digest,
            signature_input=sent.signature_input,
            signature=sent.signature,
        )
    )
    session.flush()


def record_sent_many(session: Session, sent: Mapping[str, SentRequest]) -> None:
    """``record_sent`` for several delivered messages (a batch's: message id → its attempt), one
    SELECT and one INSERT statement."""
    if not sent:
        return
    query = select(EvidenceSentRequest.message_id).where(col(EvidenceSentRequest.message_id).in_(sent))
    kept = set(session.exec(query).all())
    rows = [
        {
            "message_id": message_id,
            "path": s.path,
            "digest": s.digest,
            "signature_input": s.signature_input,
            "signature": s.signature,
        }
        for message_id, s in sent.items()
        if message_id not in kept
    ]
    if rows:
        session.connection().execute(insert(EvidenceSentRequest.__table__), rows)  # type: ignore[attr-defined]


def received_request(path: str, headers: Iterable[tuple[str, str]]) -> SentRequest | None:
    """A signed request as this node received it (its raw ``path``, its headers): the signed
    ``@path`` and Content-Digest, the Signature-Input and Signature field values (canonical form is
    the sealer's business). None if it cannot be bound (then it was not accepted either)."""
    pairs = list(headers)
    binding = RequestBinding.of_request(path, pairs)
    signature_input = ", ".join(v for n, v in pairs if n.lower() == "signature-input")
    signature = ", ".join(v for n, v in pairs if n.lower() == "signature")
    if binding is None or not signature_input or not signature:
        return None
    return SentRequest(binding.path, binding.content_digest, signature_input, signature)


def record_answer(session: Session, message_id: str, headers: Iterable[tuple[str, str]]) -> bool:
    """Keep the signature of a look-up answer this node gave as origin (its ``Signature-Input`` and
    ``Signature`` as sent), in a short transaction of its own after the answer was signed (never in
    the look-up's: no signing inside a transaction). Once per look-up: a second call keeps the
    first. Whether it was kept now."""
    pairs = list(headers)
    signature_input = ", ".join(v for n, v in pairs if n.lower() == "signature-input")
    signature = ", ".join(v for n, v in pairs if n.lower() == "signature")
    if not (signature_input and signature) or session.get(EvidenceSentAnswer, message_id) is not None:
        return False
    session.add(
        EvidenceSentAnswer(message_id=message_id, signature_input=signature_input, signature=signature)
    )
    session.flush()
    return True


def keep_answer(engine: Engine | None, message_id: str, headers: Iterable[tuple[str, str]]) -> bool:
    """``record_answer`` in a short transaction of its own, for the code that signed the answer
    (after the look-up's transaction committed; never raises: the answer has gone out already, and
    a look-up whose answer signature is missing is sealed without it, which verify notes)."""
    try:
        with transaction(engine) as tx:
            return record_answer(tx, message_id, headers)
    except Exception as exc:  # the database is gone, a concurrent copy: the answer stands
        log.warning(
            "look-up answer signature not kept message_id=%s error=%s", message_id, type(exc).__name__
        )
        return False
