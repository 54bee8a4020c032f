"""The outbox relay: claim due rows, deliver them signed, keep the signed receipt, retry or give up.

Never holds a row lock across an HTTP call: claim (a lease) and commit, send, then record.

- Deliveries are tasks on one asyncio loop (``RelayWorker``'s thread): up to ``relay_concurrency``
  at once, ``relay_peer_concurrency`` per peer. A slot that frees up takes the next due message at
  once; nothing waits for the slowest delivery of a batch.
- Each delivery has a total deadline (``asyncio.timeout`` around connecting, sending and reading
  the whole answer), so a peer that dribbles its answer is cut off; httpx's timeouts
  (``peer_timeout_seconds``) bound each step.
- Leases are short and renewed every quarter of a lease while their delivery runs. A delivery
  whose lease was not renewed in time is abandoned a quarter of a lease before the lease runs
  out, and other replicas claim only expired leases: two replicas never send one message at once
  (as long as their clocks agree to within that quarter), and a crashed replica's messages are
  free again within one lease. The resend is harmless: the receiver deduplicates by ``message_id``.
- A peer that keeps failing has its circuit opened (``client.Circuits``): its messages wait, their
  retry budget untouched, while one probe at a time finds out when it is back. A ``429`` or ``503``
  with ``Retry-After`` holds the peer, and the message, that long (at most the backoff cap).
- A peer that advertises batches (``GET /peer/v1/node``, read in the background when a peer has
  more than one message due, kept ``relay_capability_ttl_seconds``) gets its due messages in
  ``POST /peer/v1/batch`` requests, each carrying up to ``relay_batch_max_items`` of them and
  taking one of the peer's delivery slots (docs/protocol.md section 18). Each item's signed
  receipt is judged, kept and hooked exactly as a single delivery's; the request as a whole
  counts once for the circuit and ``Retry-After``. A peer that refuses a batch as a whole gets
  single requests again (its messages due at once, the attempt given back); a probe of an open
  circuit is always one single message.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import math
import os
import random
import socket
import threading
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, Protocol

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from pydantic import ValidationError
from sqlalchemy import bindparam, update
from sqlalchemy import select as sql_select
from sqlmodel import Session, col, select

from service.clock import utcnow
from service.config import Settings
from service.directory.service import PeerKeys, get_peer, resolve_key
from service.errors import DomainError
from service.evidence.record import SentRequest, record_sent, record_sent_many, sent_request
from service.exchange import batch
from service.exchange.client import (
    BatchLimits,
    Circuits,
    PeerCapabilities,
    PeerClient,
    apost_signed,
    peer_url,
    retry_after,
    verify_answer,
)
from service.exchange.envelope import Receipt
from service.exchange.inbox import BulkReceiptHook, ReceiptHook
from service.exchange.outbox import claim_due, on_outbox_commit, release_leases, renew_leases
from service.models import OutboxMessage, OutboxStatus
from service.signing.http import VerifiedSignature
from service.signing.node import NodeSigner

log = logging.getLogger(__name__)

# Problems a later attempt can cure: keys not yet in the peer's directory, clocks, rate limits.
RETRYABLE_STATUS = {401, 408, 425, 429}
RETRYABLE_CODES = {"replayed"}
# Leases are renewed this many times per lease; a delivery stops when one such period is left.
RENEWALS_PER_LEASE = 4
# On stop, deliveries in flight get this long to finish before they are abandoned.
STOP_GRACE_SECONDS = 2.0


@dataclass
class Attempt:
    result: Literal["delivered", "retry", "dead"]
    error: str | None = None
    status: int | None = None
    body: bytes | None = None
    signature_input: str | None = None
    signature: str | None = None
    receipt: Receipt | None = None
    retry_after: timedelta | None = None  # the peer asked us to wait (429/503 Retry-After), capped
    abandoned: bool = False  # stopped by this relay (its lease), not the peer's fault
    again: bool = False  # not this message's attempt (a batch refused as a whole): due again at once
    sent: SentRequest | None = None  # the signed request (for the evidence log, service/evidence/)


def backoff_delay(attempts: int, base: float, cap: float) -> timedelta:
    """Exponential backoff with "equal jitter": between half and all of min(cap, base·2^(n-1))."""
    ceiling = min(cap, base * 2 ** max(attempts - 1, 0))
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


class RelayMetrics(Protocol):
    """What the relay reports (service/health/metrics.py's NodeMetrics)."""

    def outgoing(self, message_type: str, outcome: str) -> None: ...

    def delivered(self, message_type: str, created_at: datetime, delivered_at: datetime) -> None: ...


@dataclass(eq=False)
class Flight:
    """A delivery in progress (one message, or a batch of them to one peer); it ends by
    ``deadline`` and by ``lease_stop`` (the loop's clock)."""

    message_id: str  # the first (or only) message: the flight's key in Relay._flights
    recipient: str
    deadline: float
    lease_stop: float = math.inf
    task: asyncio.Task[None] | None = None
    _scope: asyncio.Timeout | None = None
    batch: tuple[str, ...] = ()  # every message of a batch, message_id first; () for one message
    limits: BatchLimits | None = None

    @property
    def message_ids(self) -> tuple[str, ...]:
        return self.batch or (self.message_id,)

    @property
    def stop_at(self) -> float:
        return min(self.deadline, self.lease_stop)

    @property
    def lease_bound(self) -> bool:
        """Its lease, not the deadline, ends it: the lease was not renewed in time."""
        return self.lease_stop < self.deadline

    def move_lease_stop(self, when: float) -> None:
        self.lease_stop = when
        if self._scope is not None and not self._scope.expired():
            self._scope.reschedule(self.stop_at)

    @contextlib.asynccontextmanager
    async def bounded(self) -> AsyncIterator[None]:
        """Raises TimeoutError at ``stop_at``, however often the lease moves it meanwhile."""
        async with asyncio.timeout_at(self.stop_at) as scope:
            self._scope = scope
            try:
                yield
            finally:
                self._scope = None


class Relay:
    def __init__(
        self,
        settings: Settings,
        session_factory: Callable[[], Session],
        signer: NodeSigner,
        hooks: Mapping[str, ReceiptHook],
        client: PeerClient | None = None,
        bulk_hooks: Mapping[str, BulkReceiptHook] | None = None,
        metrics: RelayMetrics | None = None,
        peer_keys: PeerKeys | None = None,
    ) -> None:
        self.metrics = metrics
        self.peer_keys = peer_keys
        self.settings = settings
        self.session_factory = session_factory
        self.signer = signer
        self.hooks = hooks
        self.bulk_hooks = bulk_hooks or {}
        self.client = client or PeerClient(timeout=settings.peer_timeout_seconds)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Last sign of life: the loop went round or a delivery finished (for /readyz).
        self.heartbeat: datetime | None = None
        self.circuits = Circuits(settings.relay_circuit_failures, self._circuit_cooldown)
        self.capabilities = PeerCapabilities(
            timedelta(seconds=settings.relay_capability_ttl_seconds), settings.relay_batch_max_items
        )
        self._flights: dict[str, Flight] = {}  # by the flight's first message id
        self._learning: set[asyncio.Task[None]] = set()  # reading peers' capabilities
        self._wake: asyncio.Event | None = None

    def _circuit_cooldown(self, opened: int) -> timedelta:
        cap = min(self.settings.relay_backoff_cap_seconds, self.settings.relay_circuit_max_open_seconds)
        return backoff_delay(opened, self.settings.relay_backoff_base_seconds, cap)

    # --- claims and leases: plain database work, run in threads by the loop ---------------------

    def claim(self, limit: int | None = None) -> list[str]:
        """Lease due messages to this relay (each claim is an attempt), as the per-peer limits and
        the peers' circuits allow; their ids."""
        claimed, _until = self._claim(limit or self.settings.relay_batch_size, self._room())
        return list(claimed)

    def _room(self) -> dict[str, int]:
        """How many more deliveries each peer in flight or without a closed circuit may have now."""
        now, per_peer = utcnow(), self.settings.relay_peer_concurrency
        busy = Counter(flight.recipient for flight in self._flights.values())
        peers = set(busy) | self.circuits.not_closed()
        return {peer: self.circuits.room(peer, now, per_peer) - busy[peer] for peer in peers}

    def _batching(self) -> dict[str, BatchLimits]:
        """The peers whose messages go in batches now: they take them, and their circuit is closed
        (a probe is one message)."""
        if not self.settings.relay_batch_enabled:
            return {}
        return {
            peer: limits
            for peer, limits in self.capabilities.batching().items()
            if self.circuits.closed(peer)
        }

    def _claim(
        self, limit: int, room: Mapping[str, int], batching: Mapping[str, BatchLimits] | None = None
    ) -> tuple[dict[str, str], datetime]:
        batching = self._batching() if batching is None else batching
        with self.session_factory() as session:
            # The lease runs from when the transaction has begun (on SQLite, once the write lock is
            # ours), not from before a wait for it: else it could be over before anyone holds it.
            session.connection()
            now = utcnow()
            until = now + timedelta(seconds=self.settings.relay_lease_seconds)
            claimed = claim_due(
                session,
                owner=self.owner,
                now=now,
                until=until,
                limit=limit,
                room=room,
                per_peer=self.settings.relay_peer_concurrency,
                batch={peer: limits.max_items for peer, limits in batching.items()},
            )
            session.commit()
        return claimed, until

    def renew(self, message_ids: Collection[str]) -> tuple[set[str], datetime]:
        """Extend this relay's leases; the ids it still holds, and until when."""
        with self.session_factory() as session:
            session.connection()  # as in _claim: the new lease runs from when the lock is ours
            until = utcnow() + timedelta(seconds=self.settings.relay_lease_seconds)
            held = renew_leases(session, owner=self.owner, message_ids=message_ids, until=until)
            session.commit()
        return held, until

    def release(self, message_ids: Collection[str]) -> int:
        with self.session_factory() as session:
            released = release_leases(session, owner=self.owner, message_ids=message_ids)
            session.commit()
        return released

    def _load(self, message_id: str) -> tuple[OutboxMessage | None, str | None]:
        with self.session_factory() as session:
            row = session.get(OutboxMessage, message_id)
            peer = get_peer(session, row.recipient) if row else None
        return row, peer_url(peer.url, row.path) if row and peer else None

    def _load_batch(
        self, message_ids: Collection[str], recipient: str
    ) -> tuple[list[OutboxMessage], str | None]:
        """The rows (in the order given) and the peer's base URL (None: not in the directory)."""
        with self.session_factory() as session:
            found = session.exec(select(OutboxMessage).where(col(OutboxMessage.message_id).in_(message_ids)))
            rows = {row.message_id: row for row in found}
            peer = get_peer(session, recipient)
        return [rows[m] for m in message_ids if m in rows], peer.url if peer else None

    def _base_url(self, recipient: str) -> str | None:
        with self.session_factory() as session:
            peer = get_peer(session, recipient)
        return peer.url if peer else None

    # --- the loop -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event, wake: asyncio.Event) -> None:
        """Deliver until ``stop`` is set: whenever a slot is free, the next due message takes it.

        ``wake`` is set when there may be more to do (a message queued, a delivery ended);
        otherwise the relay looks again every ``relay_interval_seconds``.
        """
        self._wake = wake
        try:
            async with asyncio.TaskGroup() as tasks:
                keeper = tasks.create_task(self._keep_leases())
                try:
                    while not stop.is_set():
                        self.heartbeat = utcnow()
                        wake.clear()  # a wake-up from here on is kept for the wait below
                        try:
                            started = await self._fill(tasks)
                        except Exception:  # a database hiccup must not end delivery for good
                            log.exception("relay claim failed")
                            started = 0
                        if not started or len(self._flights) >= self.settings.relay_concurrency:
                            await _first_of(stop, wake, timeout=self.settings.relay_interval_seconds)
                finally:
                    await self._land()
                    keeper.cancel()
                    for learning in self._learning:  # nothing to wait for: read again next time
                        learning.cancel()
        finally:
            self._wake = None

    async def sweep(self) -> int:
        """One round: claim what is due now (as many as there are free slots), deliver and record
        it all; how many were attempted. For tests on a frozen clock (the worker runs ``run``)."""
        self.heartbeat = utcnow()
        async with asyncio.TaskGroup() as tasks:
            return await self._fill(tasks)

    async def _fill(self, tasks: asyncio.TaskGroup) -> int:
        """Claim as many due messages as there are free slots and start their deliveries; how many."""
        free = min(self.settings.relay_concurrency - len(self._flights), self.settings.relay_batch_size)
        if free <= 0:
            return 0
        batching = self._batching()
        claimed, until = await asyncio.to_thread(self._claim, free, self._room(), batching)
        deadline = asyncio.get_running_loop().time() + self.settings.relay_delivery_deadline_seconds
        lease_stop = self._lease_stop(until)
        by_peer: dict[str, list[str]] = {}
        for message_id, recipient in claimed.items():
            by_peer.setdefault(recipient, []).append(message_id)
        now = utcnow()
        for recipient, message_ids in by_peer.items():
            limits = batching.get(recipient)
            size = limits.max_items if limits is not None else 1
            for start in range(0, len(message_ids), size):
                group = tuple(message_ids[start : start + size])
                flight = Flight(group[0], recipient, deadline, lease_stop)
                if len(group) > 1:
                    flight.batch, flight.limits = group, limits
                self._flights[flight.message_id] = flight
                flight.task = tasks.create_task(self._fly(flight))
            more_than_one = len(message_ids) > 1 or limits is not None
            if self.settings.relay_batch_enabled and more_than_one and self.capabilities.due(recipient, now):
                self.capabilities.reading(recipient)
                learning = tasks.create_task(self._learn(recipient))
                self._learning.add(learning)
                learning.add_done_callback(self._learning.discard)
        return len(claimed)

    async def _learn(self, recipient: str) -> None:
        """Read what ``recipient`` advertises (in the background: this round's messages go as they are)."""
        try:
            base_url = await asyncio.to_thread(self._base_url, recipient)
            if base_url is None:
                return
            timeout = min(self.settings.peer_timeout_seconds, 5.0)
            async with asyncio.timeout(timeout):  # all of it: a peer that dribbles its answer too
                limits = await self.capabilities.read(self.client, recipient, base_url, timeout)
            log.info("peer capabilities read recipient=%s batch=%s", recipient, limits)
        except TimeoutError:
            log.info("peer capabilities unknown recipient=%s error=no complete answer in time", recipient)
            self.capabilities.single_only(recipient, utcnow(), self.capabilities.retry)
        except Exception:  # never ends delivery: the peer gets single requests for a while
            log.exception("reading peer capabilities failed recipient=%s", recipient)
            self.capabilities.single_only(recipient, utcnow(), self.capabilities.retry)
        finally:
            self.capabilities.reading(recipient, busy=False)

    def _lease_stop(self, until: datetime) -> float:
        """The loop's time one renewal period before the lease ``until`` runs out."""
        margin = self.settings.relay_lease_seconds / RENEWALS_PER_LEASE
        return asyncio.get_running_loop().time() + (until - utcnow()).total_seconds() - margin

    async def _fly(self, flight: Flight) -> None:
        try:
            if flight.batch:
                await self._fly_batch(flight)
                return
            row, url = await asyncio.to_thread(self._load, flight.message_id)
            if row is None:
                return
            attempt = await self.deliver(row, url, flight)
            self._tell_circuit(row.recipient, attempt)
            await asyncio.to_thread(self.record, row, attempt)
        except Exception:  # its lease runs out, and it is tried again
            log.exception("delivery failed message_id=%s", flight.message_id)
        finally:
            if self._flights.get(flight.message_id) is flight:
                del self._flights[flight.message_id]
            self.heartbeat = utcnow()
            if self._wake is not None:
                self._wake.set()

    def _tell_circuit(self, recipient: str, attempt: Attempt) -> None:
        if attempt.abandoned:
            return
        if attempt.result == "retry" and not attempt.again:
            self.circuits.failed(recipient, utcnow(), attempt.retry_after)
        else:  # a receipt, or a signed refusal of this message: the peer itself is fine
            self.circuits.succeeded(recipient)

    async def _keep_leases(self) -> None:
        """Every renewal period, renew the leases of the deliveries in flight; a delivery whose
        lease is not renewed stops before the lease runs out (``Flight.lease_stop``)."""
        while True:
            await asyncio.sleep(self.settings.relay_lease_seconds / RENEWALS_PER_LEASE)
            flights = list(self._flights.values())
            if not flights:
                continue
            message_ids = [m for flight in flights for m in flight.message_ids]
            try:
                held, until = await asyncio.to_thread(self.renew, message_ids)
            except Exception:
                log.exception("relay could not renew its leases count=%d", len(message_ids))
                continue
            stop, now = self._lease_stop(until), asyncio.get_running_loop().time()
            for flight in flights:  # a batch goes on only while this relay holds all of it
                flight.move_lease_stop(stop if held.issuperset(flight.message_ids) else now)

    async def _land(self) -> None:
        """Stopping: deliveries in flight get a moment to finish; the rest are abandoned and their
        messages freed for another replica at once (the receiver deduplicates any that arrived)."""
        flights = {flight.task: flight for flight in self._flights.values() if flight.task is not None}
        if not flights:
            return
        _done, pending = await asyncio.wait(flights, timeout=STOP_GRACE_SECONDS)
        for task in pending:
            task.cancel()
        await asyncio.gather(*pending, return_exceptions=True)
        abandoned = [m for task in pending for m in flights[task].message_ids]
        if abandoned:
            try:
                await asyncio.to_thread(self.release, abandoned)
            except Exception:  # their leases run out instead
                log.exception("relay could not release its leases count=%d", len(abandoned))

    # --- one delivery ---------------------------------------------------------------------------

    async def deliver(self, row: OutboxMessage, url: str | None, flight: Flight | None = None) -> Attempt:
        """One signed POST of ``row`` to ``url``, all of it within the delivery deadline (and, in
        flight, within the lease); its outcome."""
        if url is None:
            return Attempt("retry", f"peer {row.recipient} is not in the directory")
        seconds = self.settings.relay_delivery_deadline_seconds
        if flight is None:
            flight = Flight(row.message_id, row.recipient, asyncio.get_running_loop().time() + seconds)
        try:
            async with flight.bounded():
                response = await apost_signed(
                    self.client, self.settings, self.signer, url=url, path=row.path, body=row.body
                )
        except TimeoutError:
            if flight.lease_bound:
                return Attempt("retry", "abandoned: its lease could not be renewed in time", abandoned=True)
            return Attempt("retry", f"no complete answer within {seconds:g} s")
        except httpx.HTTPError as exc:
            return Attempt("retry", f"{type(exc).__name__}: {exc}")
        attempt = await asyncio.to_thread(self._judge, row, response)
        attempt.sent = sent_request(response, row.path)
        hold = retry_after(response, utcnow()) if attempt.result == "retry" else None
        if hold:  # "Retry-After: 0" asks for nothing the backoff does not already do
            attempt.retry_after = min(hold, timedelta(seconds=self.settings.relay_backoff_cap_seconds))
        return attempt

    def _key(self, keyid: str, now: datetime) -> Ed25519PublicKey | None:
        """A peer's public key: from memory (PeerKeys) in a node; else read in a session of its own,
        closed before the signature is checked (no database lock is held while verifying)."""
        if self.peer_keys is not None:
            return self.peer_keys.resolve(keyid, now)
        with self.session_factory() as session:
            return resolve_key(session, keyid, now)

    def _judge(self, row: OutboxMessage, response: httpx.Response) -> Attempt:
        try:
            sig = verify_answer(self._key, self.settings, response, row.recipient)
        except DomainError as exc:
            return Attempt("retry", f"HTTP {response.status_code}, response not accepted: {exc.detail}")
        return self._judge_answer(row, response.status_code, response.content, sig)

    @staticmethod
    def _judge_answer(row: OutboxMessage, status: int, body: bytes, sig: VerifiedSignature) -> Attempt:
        """What a validly signed answer to ``row`` (a whole response, or one item of a batch) means."""
        if status in (200, 202):
            try:
                receipt = Receipt.model_validate_json(body)
            except ValidationError:
                return Attempt("retry", "receipt does not validate", status, body)
            if str(receipt.message_id) != row.message_id or receipt.digest != row.digest:
                return Attempt("retry", "receipt is for another message or body", status, body)
            return Attempt(
                "delivered",
                status=status,
                body=body,
                signature_input=sig.signature_input,
                signature=sig.signature,
                receipt=receipt,
            )
        code = _problem_code(body)
        error = f"HTTP {status} [{code}]"
        if _retryable(status, code):
            return Attempt("retry", error, status, body)
        return Attempt("dead", error + ": rejected by the peer", status, body)

    # --- a batch --------------------------------------------------------------------------------

    async def _fly_batch(self, flight: Flight) -> None:
        rows, base_url = await asyncio.to_thread(self._load_batch, flight.message_ids, flight.recipient)
        if not rows:
            return
        log.info("delivering a batch recipient=%s count=%d", flight.recipient, len(rows))
        attempts = await self.deliver_batch(rows, base_url, flight)
        await asyncio.to_thread(self.record_many, list(zip(rows, attempts, strict=True)))

    async def deliver_batch(
        self, rows: list[OutboxMessage], base_url: str | None, flight: Flight | None = None
    ) -> list[Attempt]:
        """Deliver ``rows`` (due for one peer that takes batches) in as few requests as its limits
        allow, one after the other, within the flight's deadline; each row's outcome, in order."""
        recipient = rows[0].recipient
        if base_url is None:
            return [Attempt("retry", f"peer {recipient} is not in the directory") for _ in rows]
        if flight is None:
            seconds = self.settings.relay_delivery_deadline_seconds
            flight = Flight(rows[0].message_id, recipient, asyncio.get_running_loop().time() + seconds)
        limits = flight.limits or self.capabilities.batch(recipient) or BatchLimits(batch.MAX_ITEMS, 0)
        sizes = [batch.item_size(row.body) for row in rows]
        attempts: list[Attempt] = []
        for chunk in batch.chunks(sizes, max_items=limits.max_items, max_bytes=limits.max_body_bytes):
            part = [rows[i] for i in chunk]
            if len(part) == 1:  # too big to share a batch: alone, on its own endpoint
                attempt = await self.deliver(part[0], peer_url(base_url, part[0].path), flight)
                self._tell_circuit(recipient, attempt)
                attempts.append(attempt)
            else:
                attempts.extend(await self._deliver_chunk(part, base_url, flight))
        return attempts

    async def _deliver_chunk(self, rows: list[OutboxMessage], base_url: str, flight: Flight) -> list[Attempt]:
        """One signed ``POST /peer/v1/batch`` of ``rows``; each row's outcome, in order."""
        recipient, seconds = rows[0].recipient, self.settings.relay_delivery_deadline_seconds
        body = batch.request_body([row.body for row in rows])
        try:
            async with flight.bounded():
                response = await apost_signed(
                    self.client,
                    self.settings,
                    self.signer,
                    url=peer_url(base_url, batch.PATH),
                    path=batch.PATH,
                    body=body,
                )
        except TimeoutError:
            if flight.lease_bound:
                error = "abandoned: its lease could not be renewed in time"
                return [Attempt("retry", error, abandoned=True) for _ in rows]
            return self._whole(rows, Attempt("retry", f"no complete answer within {seconds:g} s"))
        except httpx.HTTPError as exc:
            return self._whole(rows, Attempt("retry", f"{type(exc).__name__}: {exc}"))
        attempts, as_a_whole = await asyncio.to_thread(self._judge_batch, rows, response)
        sent = sent_request(response, batch.PATH)
        for attempt in attempts:
            attempt.sent = sent
        if as_a_whole is not None:
            hold = retry_after(response, utcnow()) if as_a_whole.result == "retry" else None
            if hold:
                as_a_whole.retry_after = min(hold, timedelta(seconds=self.settings.relay_backoff_cap_seconds))
            return self._whole(rows, as_a_whole)
        if all(a.result == "retry" for a in attempts):  # a valid answer, but nothing got through
            self.circuits.failed(recipient, utcnow())
        else:
            self.circuits.succeeded(recipient)
        return attempts

    def _whole(self, rows: list[OutboxMessage], attempt: Attempt) -> list[Attempt]:
        """The same outcome for every row of a batch answered (or not) as a whole; one circuit event."""
        self._tell_circuit(rows[0].recipient, attempt)
        return [dataclasses.replace(attempt) for _ in rows]

    def _judge_batch(
        self, rows: list[OutboxMessage], response: httpx.Response
    ) -> tuple[list[Attempt], Attempt | None]:
        """Each row's outcome from a batch answer; or the outcome of the batch as a whole (then the
        list is empty): no valid answer, a refusal to retry, or a refusal of the batch itself."""
        recipient, status, now = rows[0].recipient, response.status_code, utcnow()
        try:
            bound = verify_answer(self._key, self.settings, response, recipient).bound_to
        except DomainError as exc:
            return [], Attempt("retry", f"HTTP {status}, response not accepted: {exc.detail}")
        if status != 200:
            code = _problem_code(response.content)
            error = f"HTTP {status} [{code}] to the batch"
            if _retryable(status, code):
                return [], Attempt("retry", error, status)
            # The batch itself is refused (the peer no longer takes batches, or not this one):
            # single requests from now on, and this attempt does not count against the messages.
            self.capabilities.single_only(recipient, now)
            log.warning("peer refused a batch recipient=%s error=%s; sending singly", recipient, error)
            return [], Attempt("retry", error + ": sending singly", status, again=True)
        results = batch.parse_response(response.content, len(rows))
        if results is None:
            return [], Attempt("retry", "HTTP 200, the batch answer does not validate")
        keys: dict[str, Ed25519PublicKey | None] = {}

        def key_of(keyid: str) -> Ed25519PublicKey | None:
            if keyid not in keys:
                keys[keyid] = self._key(keyid, now)
            return keys[keyid]

        attempts = []
        for row, result in zip(rows, results, strict=True):
            item_body = result.body.encode("utf-8")
            if result.message_id is not None and str(result.message_id) != row.message_id:
                attempts.append(Attempt("retry", "batch answer is for another message", result.status))
                continue
            try:
                sig = batch.verify_item(
                    result.status,
                    item_body,
                    result.signature_input,
                    result.signature,
                    resolve_key=key_of,
                    expected_node=recipient,
                    now=now,
                    skew_seconds=self.settings.clock_skew_seconds,
                    request=bound,  # each item bound, as the whole answer, to the batch request
                )
            except DomainError as exc:
                error = f"HTTP {result.status} in a batch, answer not accepted: {exc.detail}"
                attempts.append(Attempt("retry", error))
                continue
            attempts.append(self._judge_answer(row, result.status, item_body, sig))
        return attempts, None

    # --- recording ------------------------------------------------------------------------------

    def record(self, row: OutboxMessage, attempt: Attempt) -> None:
        self.record_many([(row, attempt)])

    def record_many(self, outcomes: list[tuple[OutboxMessage, Attempt]]) -> None:
        """Record each delivery's outcome, all in one transaction (a batch's). Each delivery, with
        its receipt hook, is recorded in a SAVEPOINT of its own: a hook that fails leaves its row
        leased (tried again when the lease runs out, and then a duplicate) and the others recorded.
        The failures are written in one statement."""
        now = utcnow()
        results: list[tuple[OutboxMessage, str]] = []
        failures: list[dict[str, Any]] = []
        given_back: list[dict[str, Any]] = []
        deliveries = [(r, a) for r, a in outcomes if a.result == "delivered" and a.receipt is not None]
        with self.session_factory() as session:
            in_bulk = len(deliveries) > 1 and self._record_deliveries(session, deliveries, now)
            for row, attempt in outcomes:
                if attempt.result == "delivered" and attempt.receipt is not None:
                    if len(outcomes) == 1 or in_bulk:
                        if not in_bulk:
                            self._record_delivery(session, row, attempt, now)
                        results.append((row, "delivered"))
                        continue
                    try:
                        with session.begin_nested():
                            self._record_delivery(session, row, attempt, now)
                        results.append((row, "delivered"))
                    except Exception:
                        log.exception("recording a delivery failed message_id=%s", row.message_id)
                elif attempt.again:  # a batch refused as a whole: not this message's attempt
                    given_back.append({"b_id": row.message_id, "b_error": attempt.error})
                    results.append((row, "retry"))
                else:
                    failure = self._failure(row, attempt, now)
                    failures.append(failure)
                    results.append((row, "dead" if failure["b_status"] == OutboxStatus.dead else "retry"))
            connection = session.connection()
            mine = {"b_owner": self.owner, "b_now": now}
            if failures:
                connection.execute(_FAILED, [f | mine for f in failures])
            if given_back:
                connection.execute(_GIVEN_BACK, [g | mine for g in given_back])
            session.commit()
        self._log_failures(outcomes)
        if self.metrics is not None:
            for row, outcome in results:
                self.metrics.outgoing(row.type, outcome)

    def _failure(self, row: OutboxMessage, attempt: Attempt, now: datetime) -> dict[str, Any]:
        """The parameters of ``_FAILED`` for a failed attempt: retried after the backoff, or dead."""
        # row.attempts already counts this attempt (claim() increments it).
        dead = attempt.result == "dead" or row.attempts >= self.settings.relay_max_attempts
        delay = backoff_delay(
            row.attempts,
            self.settings.relay_backoff_base_seconds,
            self.settings.relay_backoff_cap_seconds,
        )
        if attempt.retry_after is not None:  # not before the peer asked, never sooner than backoff
            delay = max(delay, attempt.retry_after)
        return {
            "b_id": row.message_id,
            "b_status": OutboxStatus.dead if dead else OutboxStatus.pending,
            "b_next": now + delay,
            "b_error": attempt.error,
            "b_receipt_status": attempt.status,
        }

    def _log_failures(self, outcomes: list[tuple[OutboxMessage, Attempt]]) -> None:
        failed = [(row, a) for row, a in outcomes if a.result != "delivered" or a.receipt is None]
        dead = {row.message_id for row, a in failed if a.result == "dead"} | {
            row.message_id
            for row, a in failed
            if row.attempts >= self.settings.relay_max_attempts and not a.again
        }
        if len(outcomes) == 1 or len(failed) <= 10:
            for row, attempt in failed:
                log.warning(
                    "delivery failed message_id=%s type=%s recipient=%s attempt=%d dead=%s error=%s",
                    row.message_id,
                    row.type,
                    row.recipient,
                    row.attempts,
                    row.message_id in dead,
                    attempt.error,
                )
            return
        by_error = Counter(attempt.error for _row, attempt in failed)
        for error, count in by_error.most_common():
            first = next(row for row, attempt in failed if attempt.error == error)
            log.warning(
                "delivery failed count=%d of a batch recipient=%s dead=%d first message_id=%s error=%s",
                count,
                first.recipient,
                sum(1 for row, attempt in failed if attempt.error == error and row.message_id in dead),
                first.message_id,
                error,
            )

    def _record_deliveries(
        self, session: Session, deliveries: list[tuple[OutboxMessage, Attempt]], now: datetime
    ) -> bool:
        """``_record_delivery`` for each of a batch's deliveries, in a few statements for all of them
        (the receipt hooks' bulk forms where they have one), in one SAVEPOINT. False if it failed
        (logged): nothing of it is left, and the caller records each delivery on its own."""
        try:
            with session.begin_nested():
                connection = session.connection()
                ids = [row.message_id for row, _attempt in deliveries]
                query = sql_select(_OUTBOX.c.message_id).where(
                    _OUTBOX.c.message_id.in_(ids), _OUTBOX.c.status != OutboxStatus.delivered
                )
                if connection.dialect.name == "postgresql":  # another replica's recording waits for ours
                    query = query.with_for_update()
                open_ids = set(connection.execute(query).scalars())
                todo = [(row, a) for row, a in deliveries if row.message_id in open_ids]  # else recorded
                if not todo:
                    return True
                connection.execute(_DELIVERED, [_delivered(row, a, now) for row, a in todo])
                record_sent_many(session, {row.message_id: a.sent for row, a in todo if a.sent is not None})
                by_type: dict[str, list[tuple[OutboxMessage, Receipt]]] = {}
                for row, attempt in todo:
                    assert attempt.receipt is not None
                    by_type.setdefault(row.type, []).append((row, attempt.receipt))
                for message_type, receipts in by_type.items():
                    if (bulk := self.bulk_hooks.get(message_type)) is not None:
                        bulk(session, receipts)
                    elif (hook := self.hooks.get(message_type)) is not None:
                        for row, receipt in receipts:
                            fresh = session.get(OutboxMessage, row.message_id)
                            assert fresh is not None
                            hook(session, fresh, receipt)
        except Exception:
            log.exception("recording a batch's deliveries failed count=%d; one by one", len(deliveries))
            return False
        for row, _attempt in todo:
            if self.metrics is not None:
                self.metrics.delivered(row.type, row.created_at, now)
            log.info("delivered message_id=%s type=%s recipient=%s", row.message_id, row.type, row.recipient)
        return True

    def _record_delivery(self, session: Session, row: OutboxMessage, attempt: Attempt, now: datetime) -> None:
        receipt = attempt.receipt
        assert receipt is not None
        result = session.connection().execute(_DELIVERED, _delivered(row, attempt, now))
        if result.rowcount != 1:  # recorded already (another replica's delivery of it)
            return
        record_sent(session, row.message_id, attempt.sent)
        if self.metrics is not None:
            self.metrics.delivered(row.type, row.created_at, now)
        if (hook := self.hooks.get(row.type)) is not None:
            fresh = session.get(OutboxMessage, row.message_id)
            assert fresh is not None
            hook(session, fresh, receipt)
        log.info("delivered message_id=%s type=%s recipient=%s", row.message_id, row.type, row.recipient)


def _delivered(row: OutboxMessage, attempt: Attempt, now: datetime) -> dict[str, Any]:
    """The parameters of ``_DELIVERED`` for a delivery with its receipt."""
    assert attempt.receipt is not None
    return {
        "b_id": row.message_id,
        "b_now": now,
        "b_receipt_status": attempt.status,
        "b_body": attempt.body,
        "b_input": attempt.signature_input,
        "b_signature": attempt.signature,
        "b_received_at": attempt.receipt.received_at,
        "b_due_at": attempt.receipt.due_at,
    }


# What record_many writes, prepared once (each row's values bound as parameters).
_OUTBOX = OutboxMessage.__table__  # type: ignore[attr-defined]
_DELIVERED = (
    update(_OUTBOX)
    .where(_OUTBOX.c.message_id == bindparam("b_id"), _OUTBOX.c.status != OutboxStatus.delivered)
    .values(
        status=OutboxStatus.delivered,
        delivered_at=bindparam("b_now"),
        lease_owner=None,
        lease_until=None,
        last_error=None,
        receipt_status=bindparam("b_receipt_status"),
        receipt_body=bindparam("b_body"),
        receipt_signature_input=bindparam("b_input"),
        receipt_signature=bindparam("b_signature"),
        receipt_received_at=bindparam("b_received_at"),
        receipt_due_at=bindparam("b_due_at"),
    )
)
# Only a row still pending and leased to this relay (not taken over, not recorded meanwhile).
_MINE = (
    (_OUTBOX.c.message_id == bindparam("b_id"))
    & (_OUTBOX.c.status == OutboxStatus.pending)
    & (_OUTBOX.c.lease_owner == bindparam("b_owner"))
)
_FAILED = (
    update(_OUTBOX)
    .where(_MINE)
    .values(
        status=bindparam("b_status"),
        next_attempt_at=bindparam("b_next"),
        lease_owner=None,
        lease_until=None,
        last_error=bindparam("b_error"),
        receipt_status=bindparam("b_receipt_status"),
    )
)
_GIVEN_BACK = (
    update(_OUTBOX)
    .where(_MINE)
    .values(
        attempts=_OUTBOX.c.attempts - 1,
        next_attempt_at=bindparam("b_now"),
        lease_owner=None,
        lease_until=None,
        last_error=bindparam("b_error"),
    )
)


async def _first_of(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of ``events`` is set, or ``timeout`` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


def _retryable(status: int, code: str) -> bool:
    return status in RETRYABLE_STATUS or status >= 500 or code in RETRYABLE_CODES


def _problem_code(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return "unknown"
    return str(data.get("code", "unknown")) if isinstance(data, dict) else "unknown"


class RelayWorker:
    """Runs the relay on an asyncio loop in a thread of its own; a commit that queues a message
    wakes it, ``stop()`` ends it (and closes the relay's HTTP client)."""

    def __init__(self, relay: Relay, interval: float) -> None:
        self.relay = relay
        self.interval = interval
        self._stopping = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._wake: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="outbox-relay", daemon=True)

    def start(self) -> None:
        on_outbox_commit(self.wake)
        self._thread.start()

    def wake(self) -> None:
        """From any thread. Before the loop runs there is nothing to wake: it starts with a claim."""
        self._signal(self._wake)

    def stop(self, timeout: float = 30.0) -> None:
        self._stopping.set()
        self._signal(self._stop)
        if self._thread.is_alive():  # never started when the relay is disabled
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _signal(self, event: asyncio.Event | None) -> None:
        loop = self._loop
        if loop is None or event is None:
            return
        with contextlib.suppress(RuntimeError):  # the loop has closed: nothing left to tell
            loop.call_soon_threadsafe(event.set)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        # Assigned before _stopping is read, so stop() either reaches the loop or is seen here.
        self._stop, self._wake = asyncio.Event(), asyncio.Event()
        self._loop = asyncio.get_running_loop()
        try:
            while not (self._stopping.is_set() or self._stop.is_set()):
                try:
                    await self.relay.run(self._stop, self._wake)
                except Exception:  # run() catches what it expects; never end delivery for good
                    log.exception("relay failed; starting it again")
                    await _first_of(self._stop, timeout=self.interval)
        finally:
            await self.relay.client.aclose()
