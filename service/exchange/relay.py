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
"""

from __future__ import annotations

import asyncio
import contextlib
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
from typing import Literal, Protocol

import httpx
from pydantic import ValidationError
from sqlalchemy import update
from sqlmodel import Session, col

from service.clock import utcnow
from service.config import Settings
from service.directory.service import get_peer
from service.errors import DomainError
from service.exchange.client import Circuits, PeerClient, apost_signed, peer_url, retry_after, verify_answer
from service.exchange.envelope import Receipt
from service.exchange.inbox import ReceiptHook
from service.exchange.outbox import claim_due, on_outbox_commit, release_leases, renew_leases
from service.models import OutboxMessage, OutboxStatus
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
    """A delivery in progress; it ends by ``deadline`` and by ``lease_stop`` (the loop's clock)."""

    message_id: str
    recipient: str
    deadline: float
    lease_stop: float = math.inf
    task: asyncio.Task[None] | None = None
    _scope: asyncio.Timeout | None = None

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
        metrics: RelayMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.settings = settings
        self.session_factory = session_factory
        self.signer = signer
        self.hooks = hooks
        self.client = client or PeerClient(timeout=settings.peer_timeout_seconds)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Last sign of life: the loop went round or a delivery finished (for /readyz).
        self.heartbeat: datetime | None = None
        self.circuits = Circuits(settings.relay_circuit_failures, self._circuit_cooldown)
        self._flights: dict[str, Flight] = {}
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

    def _claim(self, limit: int, room: Mapping[str, int]) -> tuple[dict[str, str], datetime]:
        now = utcnow()
        until = now + timedelta(seconds=self.settings.relay_lease_seconds)
        with self.session_factory() as session:
            claimed = claim_due(
                session,
                owner=self.owner,
                now=now,
                until=until,
                limit=limit,
                room=room,
                per_peer=self.settings.relay_peer_concurrency,
            )
            session.commit()
        return claimed, until

    def renew(self, message_ids: Collection[str]) -> tuple[set[str], datetime]:
        """Extend this relay's leases; the ids it still holds, and until when."""
        until = utcnow() + timedelta(seconds=self.settings.relay_lease_seconds)
        with self.session_factory() as session:
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
        claimed, until = await asyncio.to_thread(self._claim, free, self._room())
        deadline = asyncio.get_running_loop().time() + self.settings.relay_delivery_deadline_seconds
        lease_stop = self._lease_stop(until)
        for message_id, recipient in claimed.items():
            flight = Flight(message_id, recipient, deadline, lease_stop)
            self._flights[message_id] = flight
            flight.task = tasks.create_task(self._fly(flight))
        return len(claimed)

    def _lease_stop(self, until: datetime) -> float:
        """The loop's time one renewal period before the lease ``until`` runs out."""
        margin = self.settings.relay_lease_seconds / RENEWALS_PER_LEASE
        return asyncio.get_running_loop().time() + (until - utcnow()).total_seconds() - margin

    async def _fly(self, flight: Flight) -> None:
        try:
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
        if attempt.result == "retry":
            self.circuits.failed(recipient, utcnow(), attempt.retry_after)
        else:  # a receipt, or a signed refusal of this message: the peer itself is fine
            self.circuits.succeeded(recipient)

    async def _keep_leases(self) -> None:
        """Every renewal period, renew the leases of the deliveries in flight; a delivery whose
        lease is not renewed stops before the lease runs out (``Flight.lease_stop``)."""
        while True:
            await asyncio.sleep(self.settings.relay_lease_seconds / RENEWALS_PER_LEASE)
            flights = dict(self._flights)
            if not flights:
                continue
            try:
                held, until = await asyncio.to_thread(self.renew, list(flights))
            except Exception:
                log.exception("relay could not renew its leases count=%d", len(flights))
                continue
            stop, now = self._lease_stop(until), asyncio.get_running_loop().time()
            for message_id, flight in flights.items():
                flight.move_lease_stop(stop if message_id in held else now)

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
        abandoned = [flights[task].message_id for task in pending]
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
        hold = retry_after(response, utcnow()) if attempt.result == "retry" else None
        if hold:  # "Retry-After: 0" asks for nothing the backoff does not already do
            attempt.retry_after = min(hold, timedelta(seconds=self.settings.relay_backoff_cap_seconds))
        return attempt

    def _judge(self, row: OutboxMessage, response: httpx.Response) -> Attempt:
        body = response.content
        with self.session_factory() as session:
            try:
                sig = verify_answer(session, self.settings, response, row.recipient)
            except DomainError as exc:
                return Attempt("retry", f"HTTP {response.status_code}, response not accepted: {exc.detail}")
        status = response.status_code
        if response.status_code in (200, 202):
            try:
                receipt = Receipt.model_validate_json(body)
            except ValidationError:
                return Attempt("retry", "receipt does not validate", status, body)
            if str(receipt.message_id) != row.message_id or receipt.digest != row.digest:
                return Attempt("retry", "receipt is for another message or body", status, body)
            return Attempt(
                "delivered",
                status=response.status_code,
                body=body,
                signature_input=sig.signature_input,
                signature=sig.signature,
                receipt=receipt,
            )
        code = _problem_code(body)
        error = f"HTTP {response.status_code} [{code}]"
        if response.status_code in RETRYABLE_STATUS or response.status_code >= 500 or code in RETRYABLE_CODES:
            return Attempt("retry", error, status, body)
        return Attempt("dead", error + ": rejected by the peer", status, body)

    def record(self, row: OutboxMessage, attempt: Attempt) -> None:
        now = utcnow()
        outcome: str = attempt.result
        with self.session_factory() as session:
            if attempt.result == "delivered" and attempt.receipt is not None:
                self._record_delivery(session, row, attempt, now)
            else:
                # row.attempts already counts this attempt (claim() increments it).
                dead = attempt.result == "dead" or row.attempts >= self.settings.relay_max_attempts
                outcome = "dead" if dead else "retry"
                delay = backoff_delay(
                    row.attempts,
                    self.settings.relay_backoff_base_seconds,
                    self.settings.relay_backoff_cap_seconds,
                )
                if attempt.retry_after is not None:  # not before the peer asked, never sooner than backoff
                    delay = max(delay, attempt.retry_after)
                session.exec(
                    update(OutboxMessage)
                    .where(
                        col(OutboxMessage.message_id) == row.message_id,
                        col(OutboxMessage.status) == OutboxStatus.pending,
                        col(OutboxMessage.lease_owner) == self.owner,
                    )
                    .values(
                        status=OutboxStatus.dead if dead else OutboxStatus.pending,
                        next_attempt_at=now + delay,
                        lease_owner=None,
                        lease_until=None,
                        last_error=attempt.error,
                        receipt_status=attempt.status,
                    )
                )
                log.warning(
                    "delivery failed message_id=%s type=%s recipient=%s attempt=%d dead=%s error=%s",
                    row.message_id,
                    row.type,
                    row.recipient,
                    row.attempts,
                    dead,
                    attempt.error,
                )
            session.commit()
        if self.metrics is not None:
            self.metrics.outgoing(row.type, outcome)

    def _record_delivery(self, session: Session, row: OutboxMessage, attempt: Attempt, now: datetime) -> None:
        receipt = attempt.receipt
        assert receipt is not None
        result = session.exec(
            update(OutboxMessage)
            .where(
                col(OutboxMessage.message_id) == row.message_id,
                col(OutboxMessage.status) != OutboxStatus.delivered,
            )
            .values(
                status=OutboxStatus.delivered,
                delivered_at=now,
                lease_owner=None,
                lease_until=None,
                last_error=None,
                receipt_status=attempt.status,
                receipt_body=attempt.body,
                receipt_signature_input=attempt.signature_input,
                receipt_signature=attempt.signature,
                receipt_received_at=receipt.received_at,
                receipt_due_at=receipt.due_at,
            )
        )
        if result.rowcount == 1 and self.metrics is not None:
            self.metrics.delivered(row.type, row.created_at, now)
        if result.rowcount == 1 and (hook := self.hooks.get(row.type)) is not None:
            session.flush()
            fresh = session.get(OutboxMessage, row.message_id)
            assert fresh is not None
            hook(session, fresh, receipt)
        log.info("delivered message_id=%s type=%s recipient=%s", row.message_id, row.type, row.recipient)


async def _first_of(*events: asyncio.Event, timeout: float) -> None:
    """Wait until one of ``events`` is set, or ``timeout`` seconds."""
    waits = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waits, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for wait in waits:
            wait.cancel()


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
