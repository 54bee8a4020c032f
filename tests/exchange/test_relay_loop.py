"""The relay's loop in real time: deadlines, slots that never wait for a batch, leases that two
replicas never share, a stop that frees what was in flight.

A Relay (or two, as two replicas would be) over one throwaway database: SQLite, and PostgreSQL
when YIPANQI_TEST_DATABASE_URL is set. The peer is played by respx, whose answers may take their
time, or by a small TCP server on 127.0.0.1 where the bytes themselves matter. The clock is the
session's (pinned, moving in real time), not frozen: leases and deadlines run out for real.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import respx
from sqlalchemy.engine import Engine

from service.clock import utcnow
from service.db import make_engine
from service.exchange.relay import Relay, RelayWorker
from service.models import OutboxStatus, Peer
from tests.conftest import PostgresServer
from tests.exchange.test_relay import (
    OTHER,
    OTHER_ENDPOINT,
    PEER,
    URL,
    World,
    accepted,
    answering,
    new_world,
)

FAST = {
    "relay_interval_seconds": 0.05,
    "relay_backoff_base_seconds": 0.2,
    "relay_backoff_cap_seconds": 0.5,
    "relay_max_attempts": 30,
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engines(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[list[Engine]]:
    """Three engines on one database: one per replica, one for the test's own look."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'node.db'}"
    else:
        postgres: PostgresServer = request.getfixturevalue("postgres")
        url = postgres.new_database()
    made = [make_engine(url) for _ in range(3)]
    yield made
    for engine in made:
        engine.dispose()


@pytest.fixture
def world(tmp_path: Path, engines: list[Engine]) -> World:
    return new_world(tmp_path, engines[2])


@pytest.fixture
def peer() -> Iterator[respx.Router]:
    with respx.mock(assert_all_called=False) as router:
        yield router


async def until(predicate: Callable[[], bool], timeout: float, what: str) -> float:
    """Wait (checking in a thread: the database) until ``predicate()``; the seconds it took."""
    start = time.monotonic()
    while not await asyncio.to_thread(predicate):
        if time.monotonic() - start > timeout:
            raise AssertionError(f"not within {timeout} s: {what}")
        await asyncio.sleep(0.05)
    return time.monotonic() - start


@asynccontextmanager
async def running(*relays: Relay) -> AsyncIterator[None]:
    """The relays' loops, as the worker runs them, side by side on this loop; stopped at the end."""
    stop = asyncio.Event()
    tasks = [asyncio.create_task(relay.run(stop, asyncio.Event())) for relay in relays]
    try:
        yield
    finally:
        stop.set()
        await asyncio.gather(*tasks)


@dataclass
class Wire:
    """What the peer sees: for each message, when each send of it began and ended."""

    sends: dict[str, list[list[datetime]]] = field(default_factory=lambda: defaultdict(list))
    cancelled: set[str] = field(default_factory=set)  # messages whose sender gave up mid-answer

    def hanging(self, seconds: float) -> Callable[[httpx.Request], Awaitable[httpx.Response]]:
        """A peer that takes ``seconds`` to answer (and never does, if the sender gives up first)."""

        async def answer(request: httpx.Request) -> httpx.Response:
            span = [utcnow(), utcnow()]
            self.sends[json.loads(request.content)["message_id"]].append(span)
            try:
                await asyncio.sleep(seconds)
            except asyncio.CancelledError:
                self.cancelled.add(json.loads(request.content)["message_id"])
                raise
            finally:
                span[1] = utcnow()  # the sender gave up (cancelled) or the answer went out
            return httpx.Response(503)

        return answer

    def assert_never_two_at_once(self) -> None:
        for message_id, spans in self.sends.items():
            ordered = sorted(spans)
            for before, after in itertools.pairwise(ordered):
                assert before[1] <= after[0], f"{message_id} was sent twice at once: {ordered}"


# --- the deadline ----------------------------------------------------------------------------


async def _dribble(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Read a request, then answer one byte every 0.2 s, well within any read timeout, for ever."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        int(line.split(b":")[1]) for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")
    )
    await reader.readexactly(length)
    answer = b"HTTP/1.1 202 Accepted\r\nContent-Type: application/json\r\nContent-Length: 4096\r\n\r\n"
    try:
        for byte in (answer + b" " * 4096)[:-1]:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.2)
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        writer.close()


def test_a_dribbling_peer_is_cut_off_at_the_delivery_deadline(world: World, engines: list[Engine]) -> None:
    """Each byte comes within the 1 s read timeout; the whole answer would take 15 minutes."""
    (message_id,) = world.enqueue()
    relay = world.relay(engines[0], peer_timeout_seconds=1.0, relay_delivery_deadline_seconds=1.5, **FAST)

    async def main() -> str | None:
        server = await asyncio.start_server(_dribble, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        with world.session() as session:
            found = session.get(Peer, PEER)
            assert found is not None
            found.url = f"http://127.0.0.1:{port}"
            session.commit()
        async with server:
            row, url = relay._load(message_id)
            assert row is not None
            # A safety net only, far past the 1.5 s deadline: without it the answer takes 15 minutes.
            async with asyncio.timeout(60):
                attempt = await relay.deliver(row, url)
        await relay.client.aclose()
        assert attempt.result == "retry"
        return attempt.error

    assert asyncio.run(main()) == "no complete answer within 1.5 s"


# --- slots -----------------------------------------------------------------------------------


def test_free_slots_keep_delivering_while_one_delivery_hangs(
    world: World, engines: list[Engine], peer: respx.Router
) -> None:
    """Two slots, one peer at a time each: the hung peer holds one, the other delivers everything."""
    wire = Wire()
    peer.post(OTHER_ENDPOINT).mock(side_effect=wire.hanging(60))
    peer.post(URL).mock(side_effect=answering(world, accepted))
    stuck = world.enqueue(2, recipient=OTHER)  # first in the queue
    fine = world.enqueue(20)
    relay = world.relay(
        engines[0],
        relay_concurrency=2,
        relay_peer_concurrency=1,
        relay_delivery_deadline_seconds=20,
        **FAST,
    )

    async def main() -> float:
        async with running(relay):
            took = await until(
                lambda: all(world.row(m).status == OutboxStatus.delivered for m in fine), 15, "delivered"
            )
            # Meanwhile the hung peer's first message is still on its way, its second not sent.
            first, second = (world.row(m) for m in stuck)
            assert (first.attempts, first.lease_owner, first.last_error) == (1, relay.owner, None)
            assert second.attempts == 0
            assert len(wire.sends) == 1
        return took

    took = asyncio.run(main())
    assert took < 15
    # Stopping gave the hung delivery up and freed its message for another replica at once.
    first = world.row(stuck[0])
    assert (first.status, first.lease_owner, first.lease_until) == (OutboxStatus.pending, None, None)


# --- leases: two replicas never send one message at once -------------------------------------


def test_a_lease_is_kept_while_its_delivery_runs_and_no_replica_sends_alongside(
    world: World, engines: list[Engine], peer: respx.Router
) -> None:
    """Deliveries longer than the lease, two replicas claiming all the while: never two at once."""
    wire = Wire()
    peer.post(URL).mock(side_effect=wire.hanging(60))
    ids = world.enqueue(3)
    settings: dict[str, Any] = {
        "relay_lease_seconds": 1.0,
        "relay_delivery_deadline_seconds": 2.5,
        **FAST,
    }
    a, b = world.relay(engines[0], **settings), world.relay(engines[1], **settings)

    async def main() -> None:
        async with running(a, b):
            await until(lambda: all(len(wire.sends[m]) >= 2 for m in ids), 20, "each sent twice")

    asyncio.run(main())
    wire.assert_never_two_at_once()
    for message_id in ids:
        first = sorted(wire.sends[message_id])[0]
        assert first[1] - first[0] >= timedelta(seconds=2.3)  # held past two leases: renewed
        # Every send was an attempt (a claim the stop cut short before it sent may be one more).
        sends = len(wire.sends[message_id])
        assert sends <= world.row(message_id).attempts <= sends + 1


def test_a_replica_that_loses_its_database_stops_sending_before_its_lease_runs_out(
    world: World, engines: list[Engine], peer: respx.Router
) -> None:
    """It cannot renew: it gives the delivery up first, and the other replica takes over in seconds."""
    wire = Wire()
    peer.post(URL).mock(side_effect=wire.hanging(60))
    (message_id,) = world.enqueue()
    lease = 2.0
    settings: dict[str, Any] = {"relay_lease_seconds": lease, "relay_delivery_deadline_seconds": 30, **FAST}
    a, b = world.relay(engines[0], **settings), world.relay(engines[1], **settings)

    def lost(*_args: object) -> Any:
        raise ConnectionError("database unreachable")

    async def main() -> datetime:
        async with running(a):
            await until(lambda: bool(wire.sends[message_id]), 10, "sent by the first replica")
            a.renew = lost  # type: ignore[method-assign]
            a.record = lost  # type: ignore[method-assign]
            await asyncio.sleep(lease / 4 + 0.1)  # a renewal already under way has landed
            row = world.row(message_id)
            assert row.lease_owner == a.owner
            assert row.lease_until is not None
            async with running(b):
                await until(lambda: len(wire.sends[message_id]) >= 2, 10, "sent by the second replica")
        return row.lease_until

    lease_until = asyncio.run(main())
    wire.assert_never_two_at_once()
    first, second = sorted(wire.sends[message_id])[:2]
    assert first[1] < lease_until  # the first replica gave up while its lease still held...
    assert second[0] >= lease_until  # ...and the second took over only once it had run out,
    assert second[0] - first[0] < timedelta(seconds=lease + 2)  # within seconds of the claim


def test_a_stopping_worker_frees_what_it_had_in_flight_and_wakes_on_commit(
    world: World, engines: list[Engine], peer: respx.Router
) -> None:
    wire = Wire()
    peer.post(OTHER_ENDPOINT).mock(side_effect=wire.hanging(60))
    peer.post(URL).mock(side_effect=answering(world, accepted))
    # A long interval: only the commit's wake-up can make the delivery quick.
    relay = world.relay(engines[0], relay_lease_seconds=60, **{**FAST, "relay_interval_seconds": 30})
    worker = RelayWorker(relay, interval=30)
    worker.start()
    try:
        (stuck,) = world.enqueue(recipient=OTHER)
        (sent,) = world.enqueue()
        # Within 10 s, a third of the 30 s interval: the commit woke the worker.
        asyncio.run(until(lambda: world.row(sent).status == OutboxStatus.delivered, 10, "delivered"))
        asyncio.run(until(lambda: bool(wire.sends[stuck]), 10, "in flight"))
    finally:
        # Joined for less than the 30 s deadline: only the stop's short grace can end the thread
        # in time, by cancelling the hanging delivery (the peer never answers for 60 s).
        worker.stop(timeout=15)
    assert not worker.alive
    assert stuck in wire.cancelled
    assert relay.client.is_closed
    row = world.row(stuck)
    assert (row.status, row.attempts, row.lease_owner) == (OutboxStatus.pending, 1, None)
    relay.client.close()  # what the app's lifespan does next: nothing left to close


def test_a_client_never_used_closes_from_a_running_loop() -> None:
    """The app's lifespan closes the relay's client from its own (async) code, relay disabled."""
    from service.exchange.client import PeerClient

    client = PeerClient()

    async def lifespan_end() -> None:
        client.close()

    asyncio.run(lifespan_end())
    assert client.is_closed
