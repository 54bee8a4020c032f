"""A peer's answer is read up to a size limit and within a total deadline, before its signature is
checked (service/exchange/client.py): a real node asks a certificate of a "peer" that is a tiny
server on 127.0.0.1 answering without end, or a byte at a time."""

from __future__ import annotations

import asyncio
import re
from datetime import date
from pathlib import Path
from typing import Literal

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.config import Settings
from service.exchange.client import AnswerTooLarge, read_bounded
from service.localnet import LocalNode
from service.models import Peer
from tests.conftest import NetworkFactory
from tests.exchange.loop_server import LoopServer
from tests.exchange.test_delivery_e2e import database
from tests.people.factories import id_number

NODES = [("410105", "金水区"), ("411627", "太康县")]
DEADLINE = 3  # YIPANQI_PEER_CALL_DEADLINE_SECONDS of the asking node
MIB = 1024 * 1024
Mode = Literal["flood", "declared", "drip"]


class BadPeer(LoopServer):
    """Answers every request on 127.0.0.1 with a 200 whose body never ends: ``flood`` sends it as
    fast as it is read (no length), ``declared`` announces 1.5 GiB, ``drip`` a byte a second."""

    def __init__(self, mode: Mode) -> None:
        self.mode = mode
        self.sent = 0  # body bytes written, all connections
        super().__init__("bad-peer")

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if length:
                await reader.readexactly(int(length.group(1)))
            declared = {
                "flood": "",
                "declared": "Content-Length: 1610612736\r\n",
                "drip": "Content-Length: 4096\r\n",
            }
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                + declared[self.mode].encode()
                + b"\r\n"
            )
            piece = b" " * 65536
            while True:
                if self.mode == "drip":
                    writer.write(b" ")
                    self.sent += 1
                    await writer.drain()
                    await asyncio.sleep(1)
                else:
                    writer.write(piece)
                    self.sent += len(piece)
                    await writer.drain()
        except (ConnectionError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass
        finally:
            writer.close()


def _peak_rss(node: LocalNode) -> int:
    assert node.process is not None
    status = Path(f"/proc/{node.process.pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


@pytest.fixture
def host(sqlite_network: NetworkFactory) -> tuple[LocalNode, LocalNode]:
    host, origin = sqlite_network(
        NODES, start=False, env={"YIPANQI_PEER_CALL_DEADLINE_SECONDS": str(DEADLINE)}
    )
    return host, origin


def _point(host: LocalNode, origin: LocalNode, url: str) -> None:
    with database(host) as session:
        entry = session.get(Peer, origin.node_id)
        assert entry is not None
        entry.url = url
        session.commit()


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["flood", "declared", "drip"])
def test_a_look_up_answered_without_end_fails_fast_with_bounded_memory(
    host: tuple[LocalNode, LocalNode], mode: Mode
) -> None:
    asking, origin = host
    with BadPeer(mode) as peer:
        _point(asking, origin, peer.url)
        asking.start()
        before = _peak_rss(asking)
        number = id_number(origin.node_id, date(1995, 3, 8), 1, "F")
        answer = asking.api(
            "POST", "/api/v1/certificates/lookup", json={"id_number": number, "name": "王秀英"}
        )
        assert answer.status_code == 502, answer.text
        assert answer.json()["code"] == "peer_unavailable"
        if mode == "drip":
            assert f"no complete answer within {DEADLINE} s" in answer.json()["detail"]
            assert peer.sent < 30  # a byte a second: cut at the deadline, not at a read timeout
        else:
            assert "AnswerTooLarge" in answer.json()["detail"]
            assert peer.sent < 128 * MIB  # the limit is 8 MiB; what the sockets' buffers held besides
        assert _peak_rss(asking) - before < 64 * MIB
        assert asking.api("GET", "/readyz").status_code == 200


def test_read_bounded_stops_at_the_limit_and_keeps_what_a_small_answer_says() -> None:
    settings = Settings()

    async def main(peer: BadPeer) -> None:
        async with httpx.AsyncClient(timeout=settings.peer_timeout_seconds) as client:
            with pytest.raises(AnswerTooLarge):
                await read_bounded(client, client.build_request("GET", peer.url), 1 * MIB)

    with BadPeer("flood") as peer:
        asyncio.run(main(peer))
        assert peer.sent < 64 * MIB

    def small(_request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"ok":true}', headers={"Signature": "x"})

    async def fine() -> None:
        async with httpx.AsyncClient(transport=httpx.MockTransport(small)) as client:
            request = client.build_request("POST", "http://peer/x", content=b"{}")
            response = await read_bounded(client, request, 11)
            assert (response.content, response.headers["Signature"]) == (b'{"ok":true}', "x")
            assert response.request is request  # the answer's binding is checked against it
            with pytest.raises(AnswerTooLarge):
                await read_bounded(client, request, 10)

    asyncio.run(fine())


def test_the_relays_post_is_bounded_too() -> None:
    """A delivery's answer (apost_signed, the relay's call) is cut at peer_max_response_bytes; the
    relay's own deadline (relay_delivery_deadline_seconds) bounds its time (test_slow_peer_e2e)."""
    from service.exchange.client import PeerClient, apost_signed
    from service.signing.node import NodeSigner

    settings = Settings(peer_max_response_bytes=MIB)
    key = Ed25519PrivateKey.generate()
    signer = NodeSigner(node_id="410105", name="金水区", keyid="410105/k1", private_key=key)

    async def main(peer: BadPeer) -> None:
        async with PeerClient(timeout=settings.peer_timeout_seconds) as client:
            with pytest.raises(AnswerTooLarge):
                await apost_signed(
                    client, settings, signer, url=peer.url + "/peer/v1/x", path="/x", body=b"{}"
                )

    with BadPeer("declared") as peer:
        asyncio.run(main(peer))
        assert peer.sent < 64 * MIB
