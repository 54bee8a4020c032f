"""Signed calls to a peer: the relay's deliveries and synchronous queries (certificate lookups)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from uuid import UUID

import httpx
import uuid6
from pydantic import BaseModel
from sqlmodel import Session

from service.clock import utcnow
from service.config import Settings
from service.directory.service import get_peer, resolve_key
from service.errors import DomainError, ValidationFailed
from service.exchange.envelope import envelope_body
from service.signing.http import VerifiedSignature, sign_request, verify_response
from service.signing.node import NodeSigner


class PeerUnavailable(DomainError):
    status_code = 502
    code = "peer_unavailable"
    title = "The other county's node did not give a valid answer"


def peer_url(base_url: str, path: str) -> str:
    return f"{base_url}/peer/v1{path}"


def post_signed(
    client: httpx.Client, settings: Settings, signer: NodeSigner, *, url: str, path: str, body: bytes
) -> httpx.Response:
    """POST ``body`` to ``url`` (the peer's /peer/v1 + ``path``), signed now (raises httpx.HTTPError)."""
    headers = sign_request(
        method="POST",
        path=f"/peer/v1{path}",
        body=body,
        key=signer.private_key,
        keyid=signer.keyid,
        created=utcnow(),
        lifetime=timedelta(seconds=settings.max_signature_lifetime_seconds),
    )
    return client.post(url, content=body, headers=headers)


def verify_answer(
    session: Session, settings: Settings, response: httpx.Response, peer_node: str
) -> VerifiedSignature:
    """The peer's signature on its response (raises a DomainError if it is missing or wrong)."""
    now = utcnow()
    return verify_response(
        status=response.status_code,
        headers=response.headers.multi_items(),
        body=response.content,
        resolve_key=lambda keyid: resolve_key(session, keyid, now),
        expected_node=peer_node,
        now=now,
        skew_seconds=settings.clock_skew_seconds,
    )


@dataclass(frozen=True)
class PeerAnswer:
    message_id: str
    status: int
    body: bytes
    signature: VerifiedSignature


def query_peer(
    session: Session,
    settings: Settings,
    signer: NodeSigner,
    *,
    recipient: str,
    path: str,
    message_type: str,
    payload: BaseModel,
    client: httpx.Client | None = None,
) -> PeerAnswer:
    """A synchronous signed call: the answer comes back in the response, signed by the peer.

    Ends the caller's transaction before the call (call it before writing anything): no lock —
    on SQLite, the database's — may be held across an HTTP call to another county.
    """
    if session.new or session.dirty or session.deleted:
        raise RuntimeError("query_peer() must come before the caller's writes")
    peer = get_peer(session, recipient)
    if peer is None:
        raise ValidationFailed(f"node {recipient} is not in the directory", field="recipient")
    base = peer.url
    session.commit()
    message_id: UUID = uuid6.uuid7()
    body = envelope_body(
        message_id=message_id,
        type=message_type,
        sender=signer.node_id,
        recipient=recipient,
        sent_at=utcnow(),
        correlation_id=None,
        payload=payload,
    )
    http = client or httpx.Client(timeout=settings.peer_timeout_seconds)
    try:
        response = post_signed(http, settings, signer, url=peer_url(base, path), path=path, body=body)
    except httpx.HTTPError as exc:
        raise PeerUnavailable(f"node {recipient} could not be reached: {type(exc).__name__}") from exc
    finally:
        if client is None:
            http.close()
    try:
        signature = verify_answer(session, settings, response, recipient)
    except DomainError as exc:
        raise PeerUnavailable(f"node {recipient} answered without a valid signature: {exc.detail}") from exc
    if response.status_code != 200:
        raise PeerUnavailable(f"node {recipient} refused the call: HTTP {response.status_code}")
    return PeerAnswer(str(message_id), response.status_code, response.content, signature)
