"""Engine, the UTC column type, read sessions and short write transactions (docs/storage.md).

Two kinds of session, and nothing else:

- ``read_session()`` (and the staff API's ``SessionDep``): reads only. On SQLite its transactions
  are ``BEGIN DEFERRED``, a WAL snapshot that never takes the write lock; a flush raises.
- ``transaction()``: one short unit of work, committed at the end of the ``with`` block. On SQLite
  it first takes this process's writer lock (waiting in the process, in order, instead of in
  SQLite's busy handler), then ``BEGIN IMMEDIATE``; the lock is let go at commit or rollback.

Any other session that writes (a test's ``Session(engine)``, the relay's factory) takes the same
writer lock when its transaction begins, so writers in one process never busy-wait on each other.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from fastapi import Depends
from sqlalchemy import DateTime, event
from sqlalchemy.engine import Connection, Dialect, Engine, make_url
from sqlalchemy.orm import Session as OrmSession
from sqlalchemy.types import TypeDecorator
from sqlmodel import Session, create_engine

from service.config import get_settings
from service.errors import ServiceBusy
from service.signing.pii import secure_sqlite_files

READ_ONLY = "yipanqi_read_only"  # execution option and Session.info key of a read session
_WRITER_LOCK = "yipanqi_writer_lock"  # connection info: this connection holds its engine's writer lock


class UTCDateTime(TypeDecorator[datetime]):
    """Timezone-aware UTC on every backend (SQLite hands back naive values)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given to a UTC column")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:  # noqa: ARG002
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


class WriteInReadSession(RuntimeError):
    """A programming error: writes go in ``transaction()`` (docs/storage.md)."""


# SQLite's own wait for a lock held by another process (a CLI command beside the node): a last
# resort. Inside the process, writers queue on the writer lock instead.
SQLITE_BUSY_TIMEOUT_MS = 5000


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # Autocommit at the driver level; SQLAlchemy's "begin" event below opens the transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


class WriterLock:
    """One SQLite writer at a time in this process, taken in arrival order with a bounded wait."""

    def __init__(self, wait_seconds: float) -> None:
        self._lock = threading.Lock()
        self.wait_seconds = wait_seconds

    def acquire(self) -> None:
        if not self._lock.acquire(timeout=self.wait_seconds):
            raise ServiceBusy("the database is busy; try again shortly", retry_after=1)

    def release(self) -> None:
        self._lock.release()


def _sqlite_begin(lock: WriterLock) -> Callable[[Connection], None]:
    def begin(conn: Connection) -> None:
        if conn.get_execution_options().get(READ_ONLY):
            conn.exec_driver_sql("BEGIN DEFERRED")  # a snapshot: no write lock
            return
        # A write transaction takes the write lock up front (a deferred one that reads and then
        # writes fails with SQLITE_BUSY_SNAPSHOT under WAL when another writer committed between),
        # after this process's writer lock, so that it waits here and not in the busy handler.
        lock.acquire()
        try:
            conn.exec_driver_sql("BEGIN IMMEDIATE")
        except BaseException:
            lock.release()
            raise
        conn.info[_WRITER_LOCK] = lock

    return begin


def _release_writer_lock(conn: Connection) -> None:
    lock: WriterLock | None = conn.info.pop(_WRITER_LOCK, None)
    if lock is not None:
        lock.release()


def _release_on_reset(_dbapi_connection: Any, record: Any, _reset_state: Any) -> None:
    """Backstop: a connection back in the pool in a transaction never keeps the writer lock."""
    _release_on_close(_dbapi_connection, record)


def _release_on_close(_dbapi_connection: Any, record: Any) -> None:
    lock: WriterLock | None = record.info.pop(_WRITER_LOCK, None) if record is not None else None
    if lock is not None:
        lock.release()


def make_engine(url: str) -> Engine:
    settings = get_settings()
    # hide_parameters: a database error's message (and so the log) never carries an ID number or a name.
    # The pool holds a connection for every request the node admits at once and for the relay and
    # the scheduler, so that no request waits for a connection (docs/storage.md).
    pool = {
        "pool_size": settings.effective_db_pool_size,
        "max_overflow": 0,
        "pool_timeout": settings.write_lock_wait_seconds,
    }
    if url.startswith("sqlite"):
        database = make_url(url).database
        file = None
        if database and database != ":memory:" and not database.startswith("file:"):
            file = Path(database)
        if file is not None:
            # Personal data: the file is the owner's only (0600), and so are its -wal and -shm,
            # which SQLite creates later with the database file's mode (service/signing/pii.py).
            secure_sqlite_files(file)
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_MS / 1000},
            hide_parameters=True,
            **pool,
        )
        lock = WriterLock(settings.write_lock_wait_seconds)
        event.listen(engine, "connect", _sqlite_pragmas)
        if file is not None:
            event.listen(engine, "connect", lambda *_: secure_sqlite_files(file))  # -wal, -shm made now
        event.listen(engine, "begin", _sqlite_begin(lock))
        event.listen(engine, "commit", _release_writer_lock)
        event.listen(engine, "rollback", _release_writer_lock)
        event.listen(engine.pool, "reset", _release_on_reset)
        event.listen(engine.pool, "close", _release_on_close)
        return engine
    return create_engine(url, pool_pre_ping=True, hide_parameters=True, **pool)


@event.listens_for(OrmSession, "before_flush")
def _refuse_writes_in_read_session(session: OrmSession, _context: Any, _instances: Any) -> None:
    if session.info.get(READ_ONLY) and (session.new or session.dirty or session.deleted):
        raise WriteInReadSession("this session only reads: write in `with transaction() as session:`")


@event.listens_for(OrmSession, "do_orm_execute")
def _refuse_statements_that_write(state: Any) -> None:
    if state.session.info.get(READ_ONLY) and (state.is_insert or state.is_update or state.is_delete):
        raise WriteInReadSession("this session only reads: write in `with transaction() as session:`")


@lru_cache
def get_engine() -> Engine:
    return make_engine(get_settings().effective_database_url)


_ENGINE = "yipanqi_engine"  # Session.info: the engine a read session reads (for transaction(session))


def read_session(engine: Engine | None = None) -> Session:
    """A session that only reads (``with read_session() as session:``)."""
    engine = engine or get_engine()
    bind = engine.execution_options(**{READ_ONLY: True})
    return Session(bind, expire_on_commit=False, info={READ_ONLY: True, _ENGINE: engine})


def _engine_of(on: Engine | Session | None) -> Engine:
    if on is None:
        return get_engine()
    if isinstance(on, Engine):
        return on
    engine = on.info.get(_ENGINE) or on.get_bind()
    assert isinstance(engine, Engine)
    return engine


@contextmanager
def transaction(on: Engine | Session | None = None) -> Iterator[Session]:
    """One short write transaction: committed when the block ends, rolled back if it raises.

    ``on``: the engine, or a session whose database to write (the node's own by default). A session
    that may itself write (not a read session: a test's, a CLI command's) is used as it is, flushed
    at the end of the block and committed by its owner.
    Nothing slow goes inside: no signature, password hash, file parsing, rendering or network
    call (docs/storage.md). Objects stay readable after the block (``expire_on_commit=False``).
    """
    if isinstance(on, Session) and not on.info.get(READ_ONLY):
        with on.begin_nested():
            yield on
        return
    with Session(_engine_of(on), expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise


def new_session(engine: Engine | None = None) -> Session:
    """A session for code that commits for itself (the relay, the sweeps): each of its transactions
    takes the writer lock at its first statement on SQLite, so each must be as short as a
    ``transaction()`` block. Prefer ``transaction()`` or ``read_session()``."""
    return Session(engine or get_engine(), expire_on_commit=False)


def get_session() -> Iterator[Session]:
    """The staff API's request session: reads only; a route writes in ``transaction()``."""
    with read_session() as session:
        yield session


SessionDep = Annotated[Session, Depends(get_session)]
