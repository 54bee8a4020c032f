"""Shared fixtures: throwaway databases and networks of real node processes on 127.0.0.1."""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from service.clock import clock
from service.localnet import LocalNode, build_network, free_port, free_ports  # noqa: F401 (tests import them here)

PG_ENV = "YIPANQI_TEST_DATABASE_URL"

# One PII key ring for the test process (service/signing/pii.py): what it reads of a node's database
# it decrypts with the key that LocalNode.init wrote into the node's keys/pii.key.
os.environ.setdefault("YIPANQI_PII_KEYS", "v1:" + "dGVzdC1vbmx5LXBpaS1rZXktMzItYnl0ZXMtbG9uZyE")

# Tests never read today's date: the whole session, this process and every node it starts, runs on
# a clock pinned to YIPANQI_TEST_NOW (an ISO time with its offset) when the session starts, and
# moving on from there in real time. .ci/run runs the date-sensitive suites under several of them.
TEST_NOW_ENV = "YIPANQI_TEST_NOW"
DEFAULT_TEST_NOW = "2026-06-10T10:00:00+08:00"  # a Wednesday mid-month, far from any holiday


def pinned_now(environ: Mapping[str, str] = os.environ) -> datetime:
    raw = environ.get(TEST_NOW_ENV) or DEFAULT_TEST_NOW
    try:
        at = datetime.fromisoformat(raw)
    except ValueError:
        raise pytest.UsageError(f"{TEST_NOW_ENV} must be an ISO time such as {DEFAULT_TEST_NOW}") from None
    if at.tzinfo is None:
        raise pytest.UsageError(f"{TEST_NOW_ENV} needs its UTC offset, e.g. {DEFAULT_TEST_NOW}")
    return at


TEST_NOW = pinned_now()
SESSION_OFFSET = TEST_NOW - datetime.now(UTC)  # real clock
clock.rebase(SESSION_OFFSET)


def clock_offset(after: timedelta = timedelta(0), *, at: datetime | None = None) -> str:
    """YIPANQI_CLOCK_OFFSET_SECONDS for a node whose clock reads ``at`` (default: the test clock) + ``after``.

    An offset is from the real clock, which is what a node process adds it to.
    """
    offset = SESSION_OFFSET if at is None else at - datetime.now(UTC)  # real clock
    return str((offset + after).total_seconds())


# Fast relay timings so tests do not wait on production backoff; the session's pinned clock.
FAST = {
    "YIPANQI_CLOCK_OFFSET_SECONDS": clock_offset(),
    "YIPANQI_RELAY_INTERVAL_SECONDS": "0.2",
    "YIPANQI_RELAY_BACKOFF_BASE_SECONDS": "0.2",
    "YIPANQI_RELAY_BACKOFF_CAP_SECONDS": "1",
    "YIPANQI_RELAY_LEASE_SECONDS": "3",
    "YIPANQI_PEER_TIMEOUT_SECONDS": "3",
}


class PostgresServer:
    """Creates throwaway databases on the test server and drops them at the end."""

    def __init__(self, admin_url: str) -> None:
        self.admin_url = admin_url
        self.engine = create_engine(admin_url, isolation_level="AUTOCOMMIT")
        self.created: list[str] = []

    def new_database(self) -> str:
        name = f"yipanqi_test_{uuid.uuid4().hex[:12]}"
        with self.engine.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        self.created.append(name)
        return make_url(self.admin_url).set(database=name).render_as_string(hide_password=False)

    def drop_all(self) -> None:
        with self.engine.connect() as conn:
            for name in self.created:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        self.engine.dispose()


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresServer]:
    url = os.environ.get(PG_ENV)
    if not url:
        pytest.skip(
            f"PostgreSQL tests need {PG_ENV} (e.g. postgresql+psycopg://postgres@127.0.0.1:5432/postgres)"
        )
    server = PostgresServer(url)
    try:
        with server.engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except Exception as exc:  # unreachable server: say so instead of failing every test
        pytest.skip(f"PostgreSQL at {PG_ENV} is not reachable: {type(exc).__name__}")
    yield server
    server.drop_all()


def backend_urls(request: pytest.FixtureRequest, count: int = 1) -> list[str] | None:
    """Database URLs for a fixture with params "sqlite"/"postgres": None (SQLite) or new databases."""
    if request.param != "postgres":
        return None
    server: PostgresServer = request.getfixturevalue("postgres")
    return [server.new_database() for _ in range(count)]


NetworkFactory = Callable[..., list[LocalNode]]


def _network_factory(tmp_path: Path, database_for: Callable[[], str] | None) -> Iterator[NetworkFactory]:
    started: list[LocalNode] = []

    def make(
        specs: list[tuple[str, str]] | None = None, *, start: bool = True, env: dict[str, str] | None = None
    ) -> list[LocalNode]:
        specs = specs or [("410105", "金水区"), ("411627", "太康县")]
        base = free_ports(len(specs))
        root = tmp_path / f"net{len(started)}"
        urls = [database_for() for _ in specs] if database_for is not None else None
        nodes = build_network(root, specs, base, {**FAST, **(env or {})}, urls)
        started.extend(nodes)
        if start:
            for node in nodes:
                node.start()
        return nodes

    yield make
    for node in started:
        node.stop()


@pytest.fixture
def sqlite_network(tmp_path: Path) -> Iterator[NetworkFactory]:
    yield from _network_factory(tmp_path, None)


@pytest.fixture
def postgres_network(tmp_path: Path, postgres: PostgresServer) -> Iterator[NetworkFactory]:
    yield from _network_factory(tmp_path, postgres.new_database)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def network(request: pytest.FixtureRequest) -> NetworkFactory:
    """Both backends: the SQLite default and PostgreSQL (skipped without a server)."""
    name = "sqlite_network" if request.param == "sqlite" else "postgres_network"
    factory: NetworkFactory = request.getfixturevalue(name)
    return factory
