"""One bad peer does not hold up the others: three real nodes, one of them behind a bad proxy.

金水区 sends to 太康县 (healthy) and to 杨浦区, whose address in 金水区's directory is a small proxy
on 127.0.0.1. While it is bad, the proxy alternates: one connection it forwards to 杨浦区 and
dribbles the answer back a byte at a time (each byte well within the read timeout, the whole
answer would take many minutes); the next it reads and never answers. Every message to 太康县 is
delivered meanwhile, /readyz stays ready, and 杨浦区's messages wait, their circuit open. Healed,
the proxy forwards at full speed and they are delivered too, exactly once.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from typing import Literal

import httpx
import pytest

from service.localnet import LocalNode, wait_for
from service.models import OutboxStatus, Peer
from tests.conftest import NetworkFactory
from tests.exchange.loop_server import LoopServer
from tests.exchange.test_delivery_e2e import (
    assert_signed_receipt,
    database,
    inbox_rows,
    outbox_rows,
    send,
)

pytestmark = pytest.mark.slow

NODES = [("410105", "金水区"), ("411627", "太康县"), ("310110", "杨浦区")]
DEADLINE = 2.0  # YIPANQI_RELAY_DELIVERY_DEADLINE_SECONDS; the read timeout (FAST) is 3 s
DRIBBLE_PAUSE = 0.5  # seconds between two bytes of a dribbled answer
BAD_MESSAGES, GOOD_MESSAGES = 8, 60
PER_PEER = 4
CIRCUIT_FAILURES = 3  # the default of YIPANQI_RELAY_CIRCUIT_FAILURES
BAD_PHASE = 10.0  # seconds from the first message the bad peer stays bad, at least


class BadProxy(LoopServer):
    """A TCP proxy on 127.0.0.1 in front of ``upstream_port``, on an asyncio loop in its own thread."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.healed = False
        self.connections = 0
        self.open = 0
        self.most_open = 0  # connections open at once while bad
        super().__init__("bad-proxy")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        mode: Literal["forward", "dribble", "silent"] = (
            "forward" if self.healed else ("dribble" if self.connections % 2 else "silent")
        )
        self.open += 1
        if not self.healed:
            self.most_open = max(self.most_open, self.open)
        up_writer: asyncio.StreamWriter | None = None
        pipes: list[asyncio.Future[None]] = []
        try:
            if mode == "silent":  # read what comes, answer nothing, until the sender gives up
                while await reader.read(65536):
                    pass
            else:
                up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
                pace = DRIBBLE_PAUSE if mode == "dribble" else 0.0
                pipes = [
                    asyncio.ensure_future(_pipe(reader, up_writer, 0.0)),
                    asyncio.ensure_future(_pipe(up_reader, writer, pace)),
                ]
                await asyncio.wait(pipes, return_when=asyncio.FIRST_COMPLETED)
        except ConnectionError:
            pass
        finally:
            self.open -= 1
            for pipe in pipes:
                pipe.cancel()
            await asyncio.gather(*pipes, return_exceptions=True)
            for stream in (writer, up_writer):
                if stream is not None:
                    stream.close()


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter, pace: float) -> None:
    """Copy until the end; with ``pace``, one byte every ``pace`` seconds."""
    with contextlib.suppress(ConnectionError):
        await _copy(source, sink, pace)


async def _copy(source: asyncio.StreamReader, sink: asyncio.StreamWriter, pace: float) -> None:
    while chunk := await source.read(65536):
        if not pace:
            sink.write(chunk)
            await sink.drain()
            continue
        for byte in chunk:
            sink.write(bytes([byte]))
            await sink.drain()
            await asyncio.sleep(pace)


@contextmanager
def readiness_samples(node: LocalNode) -> Iterator[list[tuple[int, str]]]:
    """/readyz every quarter second while the block runs: (status, the relay's check) each time."""
    samples: list[tuple[int, str]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.25):
            try:
                response = httpx.get(f"{node.url}/readyz", timeout=5)
            except httpx.HTTPError as exc:
                samples.append((0, type(exc).__name__))
                continue
            samples.append((response.status_code, response.json()["checks"]["relay"]))

    sampler = threading.Thread(target=sample, name="readyz-sampler", daemon=True)
    sampler.start()
    try:
        yield samples
    finally:
        done.set()
        sampler.join(10)


def test_a_peer_that_dribbles_or_never_answers_holds_up_nobody(network: NetworkFactory) -> None:
    jinshui, taikang, yangpu = network(
        NODES,
        start=False,
        env={
            "YIPANQI_RELAY_DELIVERY_DEADLINE_SECONDS": str(DEADLINE),
            "YIPANQI_RELAY_PEER_CONCURRENCY": str(PER_PEER),
            "YIPANQI_RELAY_CONCURRENCY": "8",
        },
    )
    proxy = BadProxy(yangpu.port)
    proxy.start()
    try:
        with database(jinshui) as session:
            entry = session.get(Peer, yangpu.node_id)
            assert entry is not None
            entry.url = proxy.url  # 金水区 reaches 杨浦区 only through the proxy
            session.commit()
        with ThreadPoolExecutor(3) as starting:  # side by side: each start takes seconds
            list(starting.map(LocalNode.start, (taikang, yangpu, jinshui)))

        with readiness_samples(jinshui) as samples:
            started = time.monotonic()
            bad = send(jinshui, yangpu, BAD_MESSAGES)  # first in the queue
            good = send(jinshui, taikang, GOOD_MESSAGES)

            def good_delivered() -> bool:
                rows = outbox_rows(jinshui)
                return all(rows[m].status == OutboxStatus.delivered for m in good)

            wait_for(good_delivered, timeout=40, interval=0.25)
            took = time.monotonic() - started
            time.sleep(max(0.0, BAD_PHASE - took))  # the bad peer stays bad a while longer
            bad_for = time.monotonic() - started
            rows = outbox_rows(jinshui)
        # Every message to the healthy peer went through while the bad one's waited.
        assert all(rows[m].status == OutboxStatus.pending for m in bad)
        assert all(rows[m].delivered_at is None for m in bad)
        errors = {rows[m].last_error for m in bad} - {None}
        assert errors == {f"no complete answer within {DEADLINE:g} s"}  # dribbled or silent alike
        # The circuit opened: after the first round (the per-peer limit, and the slots freed before
        # the third failure in a row), one probe at a time, each lasting at least the deadline.
        # Sending on regardless would have been PER_PEER attempts every DEADLINE seconds.
        attempts = sum(rows[m].attempts for m in bad)
        assert attempts <= PER_PEER + (CIRCUIT_FAILURES - 1) + bad_for / DEADLINE + 1, (attempts, bad_for)
        assert took < 40
        assert proxy.connections >= PER_PEER
        assert proxy.most_open <= PER_PEER  # never more in flight to one peer than its limit
        assert jinshui.log_path is not None
        assert "peer circuit open recipient=310110" in jinshui.log_path.read_text(encoding="utf-8")
        # The relay never looked stalled: the healthy deliveries never waited for the bad ones.
        assert samples
        assert all(sample == (200, "ok") for sample in samples), samples
        # Sent to the healthy peer once each, with its signed receipt.
        assert sorted(m.message_id for m in inbox_rows(taikang)) == sorted(good)
        for message_id in good:
            assert_signed_receipt(rows[message_id], taikang, 202, "accepted", jinshui)

        # Healed: the circuit's next probe gets through, and the rest follow.
        proxy.healed = True

        def bad_delivered() -> bool:
            rows = outbox_rows(jinshui)
            return all(rows[m].status == OutboxStatus.delivered for m in bad)

        wait_for(bad_delivered, timeout=30, interval=0.25)
    finally:
        proxy.stop()

    # Exactly once at the bad peer too: the dribbled attempts had reached it (a duplicate then).
    stored = [m.message_id for m in inbox_rows(yangpu)]
    assert sorted(stored) == sorted(bad)
    rows = outbox_rows(jinshui)
    for message_id in bad:
        kind = "duplicate" if rows[message_id].receipt_status == 200 else "accepted"
        assert_signed_receipt(rows[message_id], yangpu, rows[message_id].receipt_status or 0, kind, jinshui)
    assert any(rows[m].receipt_status == 200 for m in bad)  # a dribbled attempt had reached it
