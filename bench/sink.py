"""A trivial HTTP/1.1 endpoint for checking the load generator: it answers every request at once.

    python bench/sink.py --port 8300

No framework and no database: asyncio reads each request (headers, then Content-Length bytes of
body), finds the envelope's ``message_id`` and answers ``202`` with a 60-byte JSON body that
repeats it (so bench/presigned.lua can match the answer to its request and time it, as it does
for the node). bench/load.py drives it with the same script and the same kind of pre-signed
requests as the node: whatever rate it reaches is a floor for what the load generator can send.
"""

from __future__ import annotations

import argparse
import asyncio
import signal

MARK = b'"message_id":"'


class Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.buffer = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        while True:
            end = self.buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            head = self.buffer[:end].lower()
            length = 0
            at = head.find(b"\r\ncontent-length:")
            if at >= 0:
                stop = head.find(b"\r\n", at + 2)
                length = int(head[at + 17 : stop if stop >= 0 else len(head)])
            total = end + 4 + length
            if len(self.buffer) < total:
                return
            body, self.buffer = self.buffer[end + 4 : total], self.buffer[total:]
            at = body.find(MARK)
            message_id = body[at + len(MARK) : body.find(b'"', at + len(MARK))] if at >= 0 else b""
            answer = b'{"message_id":"' + message_id + b'","status":"accepted"}'
            assert self.transport is not None
            self.transport.write(
                b"HTTP/1.1 202 Accepted\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n%s"
                % (len(answer), answer)
            )


async def serve(port: int) -> None:
    loop = asyncio.get_running_loop()
    server = await loop.create_server(Sink, "127.0.0.1", port, backlog=2048)
    stopped = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopped.set)
    async with server:
        await stopped.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    asyncio.run(serve(parser.parse_args().port))


if __name__ == "__main__":
    main()
