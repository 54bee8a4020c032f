"""The moving windows of the node's rate limits, shared by every replica.

Two limits count events in moving windows with the ``limits`` library: certificate look-ups per
peer (service/certificates/throttle.py) and failed staff sign-ins per source and per account
(service/staff/service.py). On SQLite the node is one process, and the windows stay in its memory
(``limits``' ``MemoryStorage``). On PostgreSQL several replicas serve one node behind a load
balancer, so the windows are kept in the database instead (``DatabaseStorage``, table
``rate_limit_hit``), and a peer or a guesser gets the rate once, not once per replica.

``DatabaseStorage`` is a ``limits`` storage (a subclass of ``Storage`` with ``MovingWindowSupport``,
as the library's page on custom storages describes). Each event is a row: its key, when it came
and when it leaves its window (epoch seconds). Taking one is a short write transaction: a
transaction-scoped advisory lock on the key (two replicas' counts of one key take turns, so no
window ever holds more than the limit), the key's rows that have left their window deleted, the
rest counted, the new ones added if they fit. Reading a window is a read session. No signature,
hash or network work happens in either (docs/storage.md). When the database does not answer, the
library raises ``limits.errors.StorageError``; the callers answer ``503 database_unavailable``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from limits.storage import MemoryStorage, MovingWindowSupport, Storage
from sqlalchemy import delete, func, insert, select, text
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import DBAPIError
from sqlmodel import Session

from service.config import Settings
from service.db import get_engine, read_session, transaction
from service.models import RateLimitHit

_HITS = RateLimitHit.__table__  # type: ignore[attr-defined]


class DatabaseStorage(Storage, MovingWindowSupport):
    """Moving windows in the node's database (PostgreSQL), for every replica at once."""

    def __init__(
        self, engine: Callable[[], Engine], clock: Callable[[], float] = time.time
    ) -> None:  # real clock
        super().__init__(uri=None, wrap_exceptions=True)
        self._engine = engine
        self._clock = clock  # epoch seconds, the library's time (real clock)

    @property
    def base_exceptions(self) -> type[Exception] | tuple[type[Exception], ...]:
        return DBAPIError

    # --- the moving window (what MovingWindowRateLimiter uses) -------------------------------

    def acquire_entry(self, key: str, limit: int, expiry: int, amount: int = 1) -> bool:
        if amount > limit:
            return False
        now = self._clock()
        with transaction(self._engine()) as session:
            connection = _locked(session.connection(), key, now)
            count = connection.execute(select(func.count()).where(_HITS.c.key == key)).scalar_one()
            if count + amount > limit:
                return False
            connection.execute(insert(_HITS), [{"key": key, "at": now, "expires_at": now + expiry}] * amount)
        return True

    def get_moving_window(self, key: str, limit: int, expiry: int) -> tuple[float, int]:  # noqa: ARG002
        """(the oldest entry still in the window, or now; how many entries are in it)."""
        now = self._clock()
        with read_session(self._engine()) as session:
            oldest, count = session.execute(
                select(func.min(_HITS.c.at), func.count()).where(
                    _HITS.c.key == key, _HITS.c.at > now - expiry
                )
            ).one()
        return (oldest if oldest is not None else now), int(count)

    # --- fixed windows (the rest of the storage interface) -----------------------------------

    def incr(self, key: str, expiry: int, amount: int = 1) -> int:
        """Count ``amount`` more in the key's window: the one open now, or one that opens now."""
        now = self._clock()
        with transaction(self._engine()) as session:
            connection = _locked(session.connection(), key, now)
            ends = connection.execute(
                select(func.min(_HITS.c.expires_at)).where(_HITS.c.key == key)
            ).scalar_one()
            ends = now + expiry if ends is None else ends
            connection.execute(insert(_HITS), [{"key": key, "at": now, "expires_at": ends}] * amount)
            return int(connection.execute(select(func.count()).where(_HITS.c.key == key)).scalar_one())

    def get(self, key: str) -> int:
        now = self._clock()
        with read_session(self._engine()) as session:
            query = select(func.count()).where(_HITS.c.key == key, _HITS.c.expires_at > now)
            return int(session.execute(query).scalar_one())

    def get_expiry(self, key: str) -> float:
        """When the key's window ends (now if it has none)."""
        now = self._clock()
        with read_session(self._engine()) as session:
            query = select(func.min(_HITS.c.expires_at)).where(_HITS.c.key == key, _HITS.c.expires_at > now)
            ends = session.execute(query).scalar_one()
        return float(ends) if ends is not None else now

    def check(self) -> bool:
        try:
            with read_session(self._engine()) as session:
                session.execute(select(1))
        except DBAPIError:
            return False
        return True

    def reset(self) -> int | None:
        with transaction(self._engine()) as session:
            return session.connection().execute(delete(_HITS)).rowcount

    def clear(self, key: str) -> None:
        with transaction(self._engine()) as session:
            session.connection().execute(delete(_HITS).where(_HITS.c.key == key))


def _locked(connection: Connection, key: str, now: float) -> Connection:
    """``connection``, its transaction holding the key (the replicas take turns on it, PostgreSQL)
    and the key's rows that have left their window deleted."""
    if connection.dialect.name == "postgresql":
        connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:key))"), {"key": key})
    connection.execute(delete(_HITS).where(_HITS.c.key == key, _HITS.c.expires_at <= now))
    return connection


def sweep_windows(session: Session, now: float | None = None) -> int:
    """Delete every row that has left its window (a key is cleaned when it is hit again; this is for
    the keys that are not: a source address seen once). With the nonce sweep, every 5 minutes."""
    at = time.time() if now is None else now  # real clock: the library's epoch seconds
    return int(session.connection().execute(delete(_HITS).where(_HITS.c.expires_at <= at)).rowcount)


def window_storage(settings: Settings) -> Storage:
    """Where the node's rate windows are kept: the database on PostgreSQL (several replicas), this
    process's memory on SQLite (one process)."""
    if settings.effective_database_url.startswith("postgresql"):
        return DatabaseStorage(get_engine)
    return MemoryStorage()
