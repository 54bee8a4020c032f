"""An authority, documents it signs, and a migrated node database (in-process, frozen clock)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.clock import clock
from service.config import Settings
from service.db import make_engine
from service.directory.document import build_directory, dump_signed, sign_directory, time_text
from service.migrations import upgrade
from service.models import LocalNode
from service.signing.keys import public_key_text

NOW = datetime(2026, 6, 10, 2, 0, tzinfo=UTC)  # the frozen clock of these tests
SELF = "410105"  # the node under test (金水区)


@dataclass
class Authority:
    keyid: str = "henan/2026"
    key: Ed25519PrivateKey = field(default_factory=Ed25519PrivateKey.generate)

    @property
    def trusted(self) -> str:
        """The setting's form: ``<keyid>=<base64url public key>``."""
        return f"{self.keyid}={public_key_text(self.key.public_key())}"

    def sign(
        self,
        version: int,
        peers: list[dict[str, Any]],
        *,
        issued_at: datetime = NOW - timedelta(hours=1),
        valid: timedelta = timedelta(days=30),
    ) -> bytes:
        directory = build_directory(
            version=version,
            issuer="河南省卫生健康委员会",
            issued_at=issued_at,
            expires_at=issued_at + valid,
            peers=peers,
        )
        return dump_signed(sign_directory(directory, self.keyid, self.key))


def peer_entry(
    node_id: str, name: str, *keys: tuple[str, Ed25519PrivateKey, datetime | None, datetime | None]
) -> dict[str, Any]:
    """One peer of a document; each key as (label, private key, not_before, not_after)."""
    return {
        "node_id": node_id,
        "name": name,
        "url": f"https://yipanqi.{node_id}.example",
        "keys": [
            {
                "keyid": f"{node_id}/{label}",
                "public_key": public_key_text(key.public_key()),
                "not_before": time_text(nb) if nb else None,
                "not_after": time_text(na) if na else None,
            }
            for label, key, nb, na in keys
        ],
    }


@pytest.fixture
def authority() -> Authority:
    return Authority()


@pytest.fixture
def settings(authority: Authority, tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, directory_authority_keys=[authority.trusted])


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated database of node 410105, with the clock frozen at NOW."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'node.db'}"
    else:
        url = request.getfixturevalue("postgres").new_database()
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session:
        session.add(LocalNode(node_id=SELF, name="金水区", active_keyid=f"{SELF}/k1"))
        session.commit()
    clock.freeze(NOW)
    yield engine
    clock.reset()
    engine.dispose()


class Publisher:
    """What the authority's server answers at /directory.json: a status and a body."""

    def __init__(self) -> None:
        self.status = 200
        self.body = b""
        self.requests = 0
        server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server = server
        self.url = f"http://127.0.0.1:{server.server_address[1]}/directory.json"
        self.thread = threading.Thread(target=server.serve_forever, daemon=True)
        self.thread.start()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        publisher = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                publisher.requests += 1
                self.send_response(publisher.status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(publisher.body)))
                self.end_headers()
                self.wfile.write(publisher.body)

            def log_message(self, *_args: object) -> None:
                pass

        return Handler

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join()


@pytest.fixture
def publisher() -> Iterator[Publisher]:
    p = Publisher()
    yield p
    p.close()
