"""The rate windows shared by the replicas (service/rate_windows.py): on PostgreSQL a peer's look-ups
and a guesser's failed sign-ins are counted once for the node, however many processes serve it.

Two storages on two engines stand for two replicas; the storages' clock is injected (the windows
are in epoch seconds). The last test runs ``yipanqi serve --workers 2`` for real.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from limits import parse
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import create_engine
from sqlalchemy.engine import Engine

from service.certificates.throttle import PeerLimits
from service.config import Settings
from service.db import make_engine, transaction
from service.errors import DatabaseUnavailable, TooManyRequests
from service.localnet import free_port
from service.migrations import upgrade
from service.rate_windows import DatabaseStorage, sweep_windows, window_storage
from tests.conftest import NetworkFactory, PostgresServer


class Clock:
    """Epoch seconds from now on the real clock (the windows are epoch seconds), moved by the test."""

    def __init__(self) -> None:
        self.start = self.now = float(int(time.time()))  # real clock

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def replicas(postgres: PostgresServer) -> Iterator[tuple[list[Engine], Clock]]:
    url = postgres.new_database()
    engines = [make_engine(url), make_engine(url)]
    upgrade(engines[0])
    try:
        yield engines, Clock()
    finally:
        for engine in engines:
            engine.dispose()


def storages(engines: list[Engine], clock: Clock) -> list[DatabaseStorage]:
    return [DatabaseStorage(lambda e=e: e, clock=clock) for e in engines]  # type: ignore[misc]


@pytest.mark.postgres
def test_two_replicas_count_one_moving_window(replicas: tuple[list[Engine], Clock]) -> None:
    engines, clock = replicas
    limiters = [MovingWindowRateLimiter(s) for s in storages(engines, clock)]
    item = parse("3/minute")
    taken = []
    for i in range(6):
        clock.now += 1
        taken.append(limiters[i % 2].hit(item, "peer:411627"))
    assert taken == [True, True, True, False, False, False]
    assert not limiters[0].test(item, "peer:411627")
    assert limiters[1].test(item, "peer:410105")  # another key has its own window
    stats = limiters[1].get_window_stats(item, "peer:411627")
    assert (stats.reset_time, stats.remaining) == (clock.start + 1 + 60, 0)  # the oldest leaves first
    clock.now = clock.start + 1 + 60  # the first hit has left the window, the other two not
    assert limiters[1].hit(item, "peer:411627")
    assert not limiters[0].hit(item, "peer:411627")


@pytest.mark.postgres
def test_a_burst_on_both_replicas_takes_exactly_the_limit(replicas: tuple[list[Engine], Clock]) -> None:
    engines, clock = replicas
    limiters = [MovingWindowRateLimiter(s) for s in storages(engines, clock)]
    item = parse("5/hour")
    results: list[bool] = []
    lock = threading.Lock()

    def burst(limiter: MovingWindowRateLimiter) -> None:
        for _ in range(10):
            taken = limiter.hit(item, "account:7")
            with lock:
                results.append(taken)

    threads = [threading.Thread(target=burst, args=(limiters[i % 2],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert (results.count(True), results.count(False)) == (5, 35)


@pytest.mark.postgres
def test_the_fixed_window_operations_count_the_same_rows(replicas: tuple[list[Engine], Clock]) -> None:
    engines, clock = replicas
    first, second = storages(engines, clock)
    assert (first.get("k"), first.get_expiry("k")) == (0, clock.start)
    assert first.incr("k", 60) == 1
    clock.now += 10
    assert second.incr("k", 60, amount=2) == 3  # the same window: it ends 60 s after it opened
    assert (second.get("k"), second.get_expiry("k")) == (3, clock.start + 60)
    clock.now = clock.start + 60
    assert first.get("k") == 0
    assert first.incr("k", 60) == 1  # a new window
    assert first.get_expiry("k") == clock.start + 120
    first.clear("k")
    assert second.get("k") == 0
    assert first.check()


@pytest.mark.postgres
def test_look_ups_are_limited_across_replicas(replicas: tuple[list[Engine], Clock]) -> None:
    engines, clock = replicas
    limits = [PeerLimits("2/minute", concurrency=8, windows=s) for s in storages(engines, clock)]
    with limits[0].admit("411627"), limits[1].admit("411627"):
        pass
    with pytest.raises(TooManyRequests) as refused, limits[0].admit("411627"):
        pass
    # The clock does not move: the first leaves 60 s after it came. (Retry-After is from the real
    # clock, as the library's windows are: this clock started from it.)
    assert 55 <= refused.value.retry_after <= 60


def test_a_database_that_does_not_answer_is_503_not_500() -> None:
    port = free_port()  # nothing listens there
    engine = create_engine(f"postgresql+psycopg://postgres@127.0.0.1:{port}/none?connect_timeout=2")
    try:
        limits = PeerLimits("2/minute", concurrency=8, windows=DatabaseStorage(lambda: engine))
        with pytest.raises(DatabaseUnavailable), limits.admit("411627"):
            pass
        assert limits.in_flight("411627") == 0
    finally:
        engine.dispose()


def test_sqlite_keeps_the_windows_in_memory_and_postgresql_in_the_database() -> None:
    sqlite = Settings(database_url="sqlite:///x.db")  # type: ignore[call-arg]
    postgres = Settings(database_url="postgresql+psycopg://postgres@127.0.0.1:5432/x")  # type: ignore[call-arg]
    assert isinstance(window_storage(sqlite), MemoryStorage)
    assert isinstance(window_storage(postgres), DatabaseStorage)


@pytest.mark.postgres
def test_failed_sign_ins_are_limited_once_for_two_worker_processes(postgres_network: NetworkFactory) -> None:
    env = {"YIPANQI_RELAY_ENABLED": "false", "YIPANQI_AUTH_FAILURES_PER_MINUTE": "4"}
    (node,) = postgres_network([("410105", "金水区")], start=False, env=env)
    node.start(workers=2)
    wrong = {"Authorization": f"Bearer {node.token[:-4]}xxxx"}
    # A new connection each time, so that both workers take some of them.
    url = f"{node.url}/api/v1/verification-requests"
    statuses = [httpx.get(url, headers=wrong).status_code for _ in range(16)]
    assert statuses.count(401) == 4, statuses
    assert set(statuses[4:]) == {429}, statuses


@pytest.mark.postgres
def test_the_sweep_forgets_rows_past_their_window(replicas: tuple[list[Engine], Clock]) -> None:
    engines, clock = replicas
    (storage, _other) = storages(engines, clock)
    limiter = MovingWindowRateLimiter(storage)
    assert limiter.hit(parse("3/minute"), "source:192.0.2.1")  # seen once, never again
    assert limiter.hit(parse("3/hour"), "source:192.0.2.2")
    with transaction(engines[0]) as session:
        assert sweep_windows(session, clock.start + 59) == 0
    with transaction(engines[0]) as session:
        assert sweep_windows(session, clock.start + 60) == 1
    assert storage.get("LIMITER/source:192.0.2.2/3/1/hour") == 1
