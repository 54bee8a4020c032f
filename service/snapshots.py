"""Small tables served from memory: peer keys and staff accounts (docs/storage.md, "From memory").

A ``Snapshot`` holds the whole table as loaded by one short read. It is loaded again

- at once in this process after a transaction that changed the table commits
  (``mark_changed(session, topic)`` inside the transaction);
- when it is older than ``refresh_seconds`` (a change made by another replica or a CLI command);
- when a look-up misses (a key or account added elsewhere), at most once per ``MISS_RELOAD_SECONDS``
  so that a flood of unknown ids costs no more than a few reads a second.

While one thread reloads, the others keep answering from the snapshot they have; a periodic reload
that fails (the database is out) keeps the snapshot it has.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import Counter
from collections.abc import Callable
from typing import Generic, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session

from service.db import read_session

T = TypeVar("T")
log = logging.getLogger(__name__)

MISS_RELOAD_SECONDS = 0.2
_CHANGED = "yipanqi_changed_topics"
_generations: Counter[str] = Counter()  # bumped after each commit that changed a topic


def mark_changed(session: Session, topic: str) -> None:
    """Call inside the transaction that changes ``topic``: snapshots of it reload after the commit."""
    session.info.setdefault(_CHANGED, set()).add(topic)


@event.listens_for(OrmSession, "after_commit")
def _bump(session: OrmSession) -> None:
    for topic in session.info.pop(_CHANGED, ()):
        _generations[topic] += 1


@event.listens_for(OrmSession, "after_rollback")
def _forget(session: OrmSession) -> None:
    session.info.pop(_CHANGED, None)


class Snapshot(Generic[T]):
    def __init__(
        self,
        topic: str,
        load: Callable[[Session], T],
        *,
        engine: Callable[[], Engine],
        refresh_seconds: float,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.topic = topic
        self._load = load
        self._engine = engine
        self.refresh_seconds = refresh_seconds
        self._monotonic = monotonic
        self._value: T | None = None
        self._loaded_at = 0.0
        self._generation = -1
        self._reload_lock = threading.Lock()

    def get(self) -> T:
        now = self._monotonic()
        if self._value is None or self._generation != _generations[self.topic]:
            return self._reload(wait=True)
        if now - self._loaded_at >= self.refresh_seconds:
            return self._reload(wait=False)
        return self._value

    def missed(self) -> T:
        """A look-up found nothing: reload unless that was just done."""
        if self._value is None or self._monotonic() - self._loaded_at >= MISS_RELOAD_SECONDS:
            return self._reload(wait=True)
        return self._value

    def _reload(self, *, wait: bool) -> T:
        if not self._reload_lock.acquire(blocking=wait or self._value is None):
            assert self._value is not None
            return self._value  # another thread is loading it: answer from the one we have
        try:
            generation = _generations[self.topic]
            started = self._monotonic()
            try:
                with read_session(self._engine()) as session:
                    value = self._load(session)
            except DBAPIError:
                if wait or self._value is None:
                    raise  # a change made here must be seen, or nothing to answer from: 503
                # A periodic refresh while the database is out: keep answering from what we have
                # (staff and peers go on being authenticated), and try again a period later.
                log.warning("%s: reload failed, answering from the snapshot in memory", self.topic)
                self._loaded_at = started
                return self._value
            self._value, self._loaded_at, self._generation = value, started, generation
            return value
        finally:
            self._reload_lock.release()

    def __repr__(self) -> str:
        return f"Snapshot({self.topic!r})"
