"""What the relay keeps for the evidence log when a message is delivered: the signature of the
attempt that delivered it (its Signature-Input and Signature as sent, the path and Content-Digest
they cover: the message's own, or the batch's that carried it)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import httpx
from sqlalchemy import insert
from sqlmodel import Session, col, select

from service.models import EvidenceSentRequest
from service.signing.http import VerifiedSignature

PEER_PREFIX = "/peer/v1"


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
