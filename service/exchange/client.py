"""Signed calls to a peer: the relay's deliveries and synchronous queries (certificate lookups);
what a peer's answer asks of us (``Retry-After``) and which peers to leave alone for a while."""

from __future__ import annotations

import asyncio
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from email.utils import parsedate_to_datetime
from uuid import UUID

import httpx
import uuid6
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import BaseModel
from sqlmodel import Session

from service.clock import utcnow
from service.config import Settings
from service.directory.service import get_peer, resolve_key
from service.errors import DomainError, RetryLater, SignatureMissing, ValidationFailed
from service.exchange.envelope import envelope_body
from service.signing.http import RequestBinding, VerifiedSignature, sign_request, verify_response
from service.signing.node import NodeSigner

log = logging.getLogger(__name__)


class PeerUnavailable(DomainError):
    status_code = 502
    code = "peer_unavailable"
    title = "The other county's node did not give a valid answer"


class PeerRefused(DomainError):
    """The peer answered, signed, and refused (``no_standing``, ``unknown_key``...): its decision, not
    an outage, so a 4xx for the staff client, with the peer's own code in ``peer_code``."""

    status_code = 409
    code = "peer_refused"
    title = "The other county's node refused the call"

    def __init__(self, detail: str, *, peer_code: str | None) -> None:
        super().__init__(detail, peer_code=peer_code)
        self.peer_code = peer_code


class PeerRateLimited(RetryLater):
    """The peer answered a signed 429: come back when its ``Retry-After`` says."""

    status_code = 429
    code = "peer_rate_limited"
    title = "The other county's node asks to slow down"


def peer_url(base_url: str, path: str) -> str:
    return f"{base_url}/peer/v1{path}"


def _signed_headers(settings: Settings, signer: NodeSigner, path: str, body: bytes) -> dict[str, str]:
    return sign_request(
        method="POST",
        path=f"/peer/v1{path}",
        body=body,
        key=signer.private_key,
        keyid=signer.keyid,
        created=utcnow(),
        lifetime=timedelta(seconds=settings.max_signature_lifetime_seconds),
    )


def post_signed(
    client: httpx.Client, settings: Settings, signer: NodeSigner, *, url: str, path: str, body: bytes
) -> httpx.Response:
    """POST ``body`` to ``url`` (the peer's /peer/v1 + ``path``), signed now (raises httpx.HTTPError)."""
    return client.post(url, content=body, headers=_signed_headers(settings, signer, path, body))


async def apost_signed(
    client: httpx.AsyncClient, settings: Settings, signer: NodeSigner, *, url: str, path: str, body: bytes
) -> httpx.Response:
    """``post_signed`` for the relay's loop: cancelling it (a deadline) closes the connection.
    The answer is read up to ``peer_max_response_bytes`` (``read_bounded``)."""
    request = client.build_request(
        "POST", url, content=body, headers=_signed_headers(settings, signer, path, body)
    )
    return await read_bounded(client, request, settings.peer_max_response_bytes)


class AnswerTooLarge(httpx.HTTPError):
    """A peer's answer longer than ``peer_max_response_bytes``: cut off unread, never verified."""


async def read_bounded(client: httpx.AsyncClient, request: httpx.Request, max_bytes: int) -> httpx.Response:
    """Send ``request`` and read its answer, at most ``max_bytes`` of it (decoded: a compressed
    answer counts as it unpacks), before anyone checks its signature; longer raises
    ``AnswerTooLarge`` as soon as the limit is passed. The caller bounds the time (a deadline
    around the call): httpx's timeouts are per read, and a peer may drip its answer."""
    response = await client.send(request, stream=True)
    chunks: list[bytes] = []
    try:
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > max_bytes:
            raise AnswerTooLarge(f"the answer is larger than {max_bytes} bytes (Content-Length)")
        size = 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > max_bytes:
                raise AnswerTooLarge(f"the answer is larger than {max_bytes} bytes")
            chunks.append(chunk)
    finally:
        await response.aclose()
    response._content = b"".join(chunks)  # what response.read() would have set
    return response


class PeerClient(httpx.AsyncClient):
    """The relay's HTTP client. The relay's own loop closes it (``aclose``) when the relay stops;
    ``close()`` is for owners in synchronous code (the app's lifespan), and closes a client that
    is still open on a loop of its own (the caller may be running one)."""

    def close(self) -> None:
        if self.is_closed:
            return
        closer = threading.Thread(target=asyncio.run, args=(self.aclose(),), name="peer-client-close")
        closer.start()
        closer.join()


def retry_after(response: httpx.Response, now: datetime) -> timedelta | None:
    """How long a ``429`` or ``503`` answer asks us to wait (``Retry-After``: seconds or an HTTP date).

    Signed or not: the signature does not cover the header anyway, and waiting longer is all a
    forged one could make us do (the relay caps it at the backoff cap).
    """
    if response.status_code not in (429, 503):
        return None
    value = response.headers.get("Retry-After", "").strip()
    if value.isascii() and value.isdigit():
        return timedelta(seconds=min(int(value), 366 * 86400))
    try:
        at = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if at.tzinfo is None:  # "-0000": UTC, by RFC 5322
        at = at.replace(tzinfo=UTC)
    return max(at - now, timedelta(0))


@dataclass
class _Circuit:
    failures: int = 0  # failed deliveries in a row
    opened: int = 0  # times opened in a row, without a success in between
    open_until: datetime | None = None  # None: closed


class Circuits:
    """A circuit breaker for each peer, as this replica sees it.

    Closed: deliveries flow. ``failures`` failed deliveries in a row (or a ``Retry-After``) open
    it: none are started until ``open_until``, so the peer's messages wait without spending their
    retry budget. Then it is half open: one delivery at a time probes the peer; a success closes
    it, a failure opens it again for longer (``cooldown(n)`` for the n-th time in a row).
    """

    def __init__(self, failures: int, cooldown: Callable[[int], timedelta]) -> None:
        self.failures = failures
        self.cooldown = cooldown
        self._circuits: dict[str, _Circuit] = {}

    def room(self, peer: str, now: datetime, closed: int) -> int:
        """How many deliveries to ``peer`` may be in flight now: ``closed``, 1 (a probe) or 0."""
        circuit = self._circuits.get(peer)
        if circuit is None or circuit.open_until is None:
            return closed
        return 0 if now < circuit.open_until else 1

    def closed(self, peer: str) -> bool:
        circuit = self._circuits.get(peer)
        return circuit is None or circuit.open_until is None

    def not_closed(self) -> set[str]:
        return {peer for peer, circuit in self._circuits.items() if circuit.open_until is not None}

    def succeeded(self, peer: str) -> None:
        circuit = self._circuits.pop(peer, None)
        if circuit is not None and circuit.open_until is not None:
            log.info("peer circuit closed recipient=%s", peer)

    def failed(self, peer: str, now: datetime, hold: timedelta | None = None) -> None:
        """A failed delivery to ``peer``; ``hold``: it asked us to wait that long (``Retry-After``)."""
        circuit = self._circuits.setdefault(peer, _Circuit())
        circuit.failures += 1
        if circuit.open_until is not None and now < circuit.open_until:
            # Open already: a delivery started before it opened. Only the peer's own word extends it.
            if hold is not None:
                circuit.open_until = max(circuit.open_until, now + hold)
            return
        probe_failed = circuit.open_until is not None
        if not probe_failed and hold is None and circuit.failures < self.failures:
            return
        circuit.opened += 1
        circuit.open_until = now + max(self.cooldown(circuit.opened), hold or timedelta(0))
        log.warning(
            "peer circuit open recipient=%s failures=%d open_for=%.1fs",
            peer,
            circuit.failures,
            (circuit.open_until - now).total_seconds(),
        )


@dataclass(frozen=True)
class BatchLimits:
    """How much one batch to a peer may carry (what it advertises, within our own limit)."""

    max_items: int
    max_body_bytes: int


@dataclass
class _Advertised:
    batch: BatchLimits | None  # None: single requests only (not advertised, or not known)
    until: datetime  # read it again after this


CAPABILITIES_MAX_BYTES = 64 * 1024  # GET /peer/v1/node: a few keys and limits


class PeerCapabilities:
    """What each peer's ``GET /peer/v1/node`` advertises (docs/protocol.md section 18), as this
    replica last read it: kept ``ttl``, and an answer that could not be read (the peer down, no
    valid JSON, another node) counts as "single requests only" for ``retry`` (at most ``ttl``).
    Unsigned, so it decides only how to send, never what is accepted: a batch to a peer that does
    not take it is refused as a whole, and then the peer gets single requests again."""

    def __init__(self, ttl: timedelta, max_items: int, retry: timedelta = timedelta(seconds=30)) -> None:
        self.ttl = ttl
        self.retry = min(retry, ttl)
        self.max_items = max_items
        self._known: dict[str, _Advertised] = {}
        self._reading: set[str] = set()

    def batch(self, peer: str) -> BatchLimits | None:
        """The batch limits for ``peer`` if it was last seen to take batches (even if that is stale:
        ``due`` says when to read again)."""
        known = self._known.get(peer)
        return known.batch if known is not None else None

    def batching(self) -> dict[str, BatchLimits]:
        """The peers last seen to take batches, and their limits."""
        return {peer: known.batch for peer, known in self._known.items() if known.batch is not None}

    def due(self, peer: str, now: datetime) -> bool:
        """Whether to read ``peer``'s capabilities (never read, or stale, and not being read now)."""
        known = self._known.get(peer)
        return peer not in self._reading and (known is None or known.until <= now)

    def single_only(self, peer: str, now: datetime, ttl: timedelta | None = None) -> None:
        """``peer`` refused a batch as a whole (or could not be read): single requests for a while."""
        self._known[peer] = _Advertised(None, now + (ttl or self.ttl))

    def reading(self, peer: str, busy: bool = True) -> None:
        """``peer`` is being read now (``due`` is False meanwhile), or no longer."""
        if busy:
            self._reading.add(peer)
        else:
            self._reading.discard(peer)

    async def read(
        self, client: httpx.AsyncClient, peer: str, base_url: str, timeout: float
    ) -> BatchLimits | None:
        """Read ``GET <base_url>/peer/v1/node`` and keep what it says; the batch limits or None."""
        try:
            request = client.build_request("GET", peer_url(base_url, "/node"), timeout=timeout)
            response = await read_bounded(client, request, CAPABILITIES_MAX_BYTES)
            limits = self._limits(peer, response.json()) if response.status_code == 200 else None
            ttl = self.ttl if response.status_code == 200 else self.retry
        except (httpx.HTTPError, ValueError) as exc:
            log.info("peer capabilities unknown recipient=%s error=%s", peer, type(exc).__name__)
            limits, ttl = None, self.retry
        self._known[peer] = _Advertised(limits, utcnow() + ttl)
        return limits

    def _limits(self, peer: str, info: object) -> BatchLimits | None:
        if not isinstance(info, dict) or info.get("node_id") != peer:
            return None
        capabilities, batch = info.get("capabilities"), info.get("batch")
        if not isinstance(capabilities, list) or "batch" not in capabilities or not isinstance(batch, dict):
            return None
        items, size = batch.get("max_items"), batch.get("max_body_bytes")
        if type(items) is not int or type(size) is not int or items < 2 or size < 1:
            return None
        return BatchLimits(min(items, self.max_items), size)


KeyResolver = Callable[[str, datetime], Ed25519PublicKey | None]


def verify_answer(
    keys: KeyResolver, settings: Settings, response: httpx.Response, peer_node: str
) -> VerifiedSignature:
    """The peer's signature on its response (raises a DomainError if it is missing or wrong), and
    bound to the request this call sent (docs/protocol.md section 6.1): a signed answer to any other
    request, a replay, is refused.

    ``keys`` finds a peer's public key valid at a time: ``PeerKeys.resolve``, or a read."""
    now = utcnow()
    return verify_response(
        status=response.status_code,
        headers=response.headers.multi_items(),
        body=response.content,
        resolve_key=lambda keyid: keys(keyid, now),
        expected_node=peer_node,
        now=now,
        skew_seconds=settings.clock_skew_seconds,
        request=sent_binding(response),
    )


def sent_binding(response: httpx.Response) -> RequestBinding:
    """What an answer to the request that ``response`` answers must be bound to: that request's
    path, Content-Digest and signature, as this node sent them."""
    try:
        sent = response.request
    except RuntimeError:  # a response made without a request: nothing it could be bound to
        raise SignatureMissing("no request to bind the answer to") from None
    binding = RequestBinding.of_request(sent.url.raw_path.decode("ascii"), sent.headers.multi_items())
    if binding is None:  # every request this node sends is signed (post_signed)
        raise SignatureMissing("the request this answers was not signed: nothing to bind it to")
    return binding


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
    client: Callable[[], httpx.AsyncClient] | None = None,
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
    seconds = settings.peer_call_deadline_seconds
    try:
        response = asyncio.run(_call(settings, signer, peer_url(base, path), path, body, client))
    except TimeoutError as exc:
        raise PeerUnavailable(f"node {recipient} gave no complete answer within {seconds:g} s") from exc
    except httpx.HTTPError as exc:
        raise PeerUnavailable(f"node {recipient} could not be reached: {type(exc).__name__}") from exc
    try:
        signature = verify_answer(lambda k, at: resolve_key(session, k, at), settings, response, recipient)
    except DomainError as exc:
        raise PeerUnavailable(f"node {recipient} answered without a valid signature: {exc.detail}") from exc
    if response.status_code != 200:
        code = _problem_code(response)  # signed: its code is the peer's word (no_standing, rate_limited)
        said = f"node {recipient} refused the call: HTTP {response.status_code}"
        said += f" ({code})" if code else ""
        if response.status_code == 429:
            raise PeerRateLimited(said, retry_after=_retry_after(response))
        if response.status_code < 500:
            raise PeerRefused(said, peer_code=code)
        raise PeerUnavailable(said)
    return PeerAnswer(str(message_id), response.status_code, response.content, signature)


async def _call(
    settings: Settings,
    signer: NodeSigner,
    url: str,
    path: str,
    body: bytes,
    client: Callable[[], httpx.AsyncClient] | None,
) -> httpx.Response:
    """One signed POST, all of it (connect, send, read the whole answer) within
    ``peer_call_deadline_seconds``, the answer within ``peer_max_response_bytes``. On a loop of its
    own (``query_peer`` runs in a worker thread): cancelling at the deadline closes the connection,
    however slowly the peer drips its answer."""
    async with asyncio.timeout(settings.peer_call_deadline_seconds):
        async with (client or (lambda: httpx.AsyncClient(timeout=settings.peer_timeout_seconds)))() as http:
            return await apost_signed(http, settings, signer, url=url, path=path, body=body)


def _retry_after(response: httpx.Response) -> int:
    """The peer's ``Retry-After`` in seconds (1 to 3600; 60 when absent or not a number)."""
    value = response.headers.get("Retry-After", "")
    return min(3600, max(1, int(value))) if value.isdigit() else 60


def _problem_code(response: httpx.Response) -> str | None:
    """A problem+json answer's ``code`` when it is a plain identifier (anything else: None)."""
    try:
        code = response.json().get("code")
    except (ValueError, AttributeError):
        return None
    return code if isinstance(code, str) and code.isidentifier() and len(code) <= 40 else None
