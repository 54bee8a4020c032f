"""The outbox relay: claim due rows, deliver them signed, keep the signed receipt, retry or give up.

Never holds a row lock across an HTTP call: claim (a lease) and commit, send, then record.
A crash mid-delivery leaves the lease to expire; the retry is harmless because the receiver
deduplicates by ``message_id``.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import uuid
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal, Protocol

import httpx
from pydantic import ValidationError
from sqlalchemy import or_, update
from sqlmodel import Session, col, select

from service.clock import utcnow
from service.config import Settings
from service.directory.service import get_peer
from service.errors import DomainError
from service.exchange.client import peer_url, post_signed, verify_answer
from service.exchange.envelope import Receipt
from service.exchange.inbox import ReceiptHook
from service.exchange.outbox import on_outbox_commit
from service.models import OutboxMessage, OutboxStatus
from service.signing.node import NodeSigner

log = logging.getLogger(__name__)

# Problems a later attempt can cure: keys not yet in the peer's directory, clocks, rate limits.
RETRYABLE_STATUS = {401, 408, 425, 429}
RETRYABLE_CODES = {"replayed"}


@dataclass
class Attempt:
    result: Literal["delivered", "retry", "dead"]
    error: str | None = None
    status: int | None = None
    body: bytes | None = None
    signature_input: str | None = None
    signature: str | None = None
    receipt: Receipt | None = None


def backoff_delay(attempts: int, base: float, cap: float) -> timedelta:
    """Exponential backoff with "equal jitter": between half and all of min(cap, base·2^(n-1))."""
    ceiling = min(cap, base * 2 ** max(attempts - 1, 0))
    return timedelta(seconds=random.uniform(ceiling / 2, ceiling))


class RelayMetrics(Protocol):
    """What the relay reports (service/health/metrics.py's NodeMetrics)."""

    def outgoing(self, message_type: str, outcome: str) -> None: ...

    def delivered(self, message_type: str, created_at: datetime, delivered_at: datetime) -> None: ...


class Relay:
    def __init__(
        self,
        settings: Settings,
        session_factory: Callable[[], Session],
        signer: NodeSigner,
        hooks: Mapping[str, ReceiptHook],
        client: httpx.Client | None = None,
        metrics: RelayMetrics | None = None,
    ) -> None:
        self.metrics = metrics
        self.settings = settings
        self.session_factory = session_factory
        self.signer = signer
        self.hooks = hooks
        self.client = client or httpx.Client(timeout=settings.peer_timeout_seconds)
        self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        # Last sign of life: a sweep started or a delivery finished (for /readyz).
        self.heartbeat: datetime | None = None

    def run_once(self) -> int:
        """One sweep: deliver what is due now; returns how many messages were attempted."""
        self.heartbeat = utcnow()
        ids = self.claim()
        if len(ids) > 1 and self.settings.relay_concurrency > 1:
            # One slow or unreachable peer must not hold up the others for a whole timeout each.
            with ThreadPoolExecutor(max_workers=self.settings.relay_concurrency) as pool:
                list(pool.map(self._deliver_one, ids))
        else:
            for message_id in ids:
                self._deliver_one(message_id)
        return len(ids)

    def _deliver_one(self, message_id: str) -> None:
        with self.session_factory() as session:
            row = session.get(OutboxMessage, message_id)
            peer = get_peer(session, row.recipient) if row else None
        if row is not None:
            self.record(row, self.deliver(row, peer_url(peer.url, row.path) if peer else None))
        self.heartbeat = utcnow()

    def claim(self) -> list[str]:
        now = utcnow()
        due = (
            (col(OutboxMessage.status) == OutboxStatus.pending)
            & (col(OutboxMessage.next_attempt_at) <= now)
            & or_(col(OutboxMessage.lease_until).is_(None), col(OutboxMessage.lease_until) < now)
        )
        with self.session_factory() as session:
            query = (
                select(OutboxMessage.message_id)
                .where(due)
                .order_by(col(OutboxMessage.next_attempt_at))
                .limit(self.settings.relay_batch_size)
            )
            if session.get_bind().dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            ids = list(session.exec(query).all())
            if not ids:
                return []
            session.exec(
                update(OutboxMessage)
                .where(col(OutboxMessage.message_id).in_(ids), due)
                .values(
                    lease_owner=self.owner,
                    lease_until=now + timedelta(seconds=self.settings.relay_lease_seconds),
                    attempts=OutboxMessage.attempts + 1,
                )
            )
            session.commit()
            mine = session.exec(
                select(OutboxMessage.message_id).where(
                    col(OutboxMessage.message_id).in_(ids), OutboxMessage.lease_owner == self.owner
                )
            ).all()
            return list(mine)

    def deliver(self, row: OutboxMessage, url: str | None) -> Attempt:
        if url is None:
            return Attempt("retry", f"peer {row.recipient} is not in the directory")
        try:
            response = post_signed(
                self.client, self.settings, self.signer, url=url, path=row.path, body=row.body
            )
        except httpx.HTTPError as exc:
            return Attempt("retry", f"{type(exc).__name__}: {exc}")
        return self._judge(row, response)

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


def _problem_code(body: bytes) -> str:
    try:
        data = json.loads(body)
    except ValueError:
        return "unknown"
    return str(data.get("code", "unknown")) if isinstance(data, dict) else "unknown"


class RelayWorker:
    """Runs the relay in its own thread: back to back while there is work, otherwise waiting for
    the interval or for a commit that put something in the outbox (whichever comes first)."""

    def __init__(self, relay: Relay, interval: float) -> None:
        self.relay = relay
        self.interval = interval
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="outbox-relay", daemon=True)

    def start(self) -> None:
        on_outbox_commit(self.wake)
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.is_alive():  # never started when the relay is disabled
            self._thread.join(timeout)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # a wake-up during the sweep below is kept for the next round
            try:
                busy = self.relay.run_once() > 0
            except Exception:  # a database hiccup must not end delivery for good
                log.exception("relay sweep failed")
                busy = False
            if not busy:
                self._wake.wait(self.interval)
