"""Per-peer limits on certificate look-ups at the origin: a rate and a number at once.

Checked after the request's signature (so a peer's budget is spent only by that peer) and before
any transaction or parsing of the payload: a look-up past either limit costs no database work and
is answered with a signed ``429 rate_limited`` and ``Retry-After``.

- The rate: ``lookup_rate_limit`` in the notation of the ``limits`` library (``"60/minute;1000/hour"``),
  a moving window per peer node, shared by every replica (service/rate_windows.py: in the database
  on PostgreSQL, in memory on SQLite's one process).
- At once: at most ``lookup_peer_concurrency`` look-ups of one peer in flight; one more is refused
  at once (``Retry-After: 1``), never queued (queueing would hold a worker thread for the peer).

The number at once is per replica: behind a load balancer with ``n`` replicas a peer may have ``n``
times as many look-ups in flight.
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from limits import RateLimitItem, parse_many
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage
from limits.strategies import MovingWindowRateLimiter
from starlette.requests import Request

from service.config import Settings
from service.errors import DatabaseUnavailable, TooManyRequests
from service.rate_windows import window_storage


class PeerLimits:
    """The rate and concurrency limits of each peer's look-ups, in this process."""

    def __init__(self, rate: str, concurrency: int, windows: Storage | None = None) -> None:
        self._items: list[RateLimitItem] = parse_many(rate)
        self._windows = MovingWindowRateLimiter(windows or MemoryStorage())
        self._concurrency = concurrency
        self._in_flight: dict[str, int] = {}
        self._lock = threading.Lock()

    @contextmanager
    def admit(self, peer: str) -> Iterator[None]:
        """Hold one of ``peer``'s places while the look-up runs; TooManyRequests if none is free."""
        with self._lock:  # the check and the count together: a burst cannot slip past either
            if self._in_flight.get(peer, 0) >= self._concurrency:
                raise TooManyRequests(
                    f"more than {self._concurrency} look-ups from this node at once", retry_after=1
                )
            try:
                self._count(peer)
            except StorageError as exc:
                raise DatabaseUnavailable(
                    "the database did not answer; try again later", retry_after=5
                ) from exc
            self._in_flight[peer] = self._in_flight.get(peer, 0) + 1
        try:
            yield
        finally:
            with self._lock:
                left = self._in_flight[peer] - 1
                if left:
                    self._in_flight[peer] = left
                else:
                    del self._in_flight[peer]

    def _count(self, peer: str) -> None:
        """Count the look-up in each of the peer's windows, or refuse it: counting nothing if a
        window is full, and only in the windows before if another replica filled one meanwhile."""
        for item in self._items:
            if not self._windows.test(item, peer):
                raise TooManyRequests(
                    f"more look-ups from this node than {item}", retry_after=self._wait(item, peer)
                )
        for item in self._items:
            if not self._windows.hit(item, peer):  # another replica took the last place meanwhile
                raise TooManyRequests(
                    f"more look-ups from this node than {item}", retry_after=self._wait(item, peer)
                )

    def in_flight(self, peer: str) -> int:
        with self._lock:
            return self._in_flight.get(peer, 0)

    def _wait(self, item: RateLimitItem, peer: str) -> int:
        reset = self._windows.get_window_stats(item, peer).reset_time
        # The library's windows are in epoch seconds, on the real clock (as the staff sign-in limit's).
        return max(1, math.ceil(reset - time.time()))  # real clock


_made = threading.Lock()


def peer_limits(request: Request) -> PeerLimits:
    """The app's limits (made at its first look-up, from its settings)."""
    state = request.app.state
    limits: PeerLimits | None = getattr(state, "lookup_limits", None)
    if limits is None:
        with _made:
            limits = getattr(state, "lookup_limits", None)
            if limits is None:
                settings: Settings = state.settings
                limits = PeerLimits(
                    settings.lookup_rate_limit, settings.lookup_peer_concurrency, window_storage(settings)
                )
                state.lookup_limits = limits
    return limits
