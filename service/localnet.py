"""A network of real nodes on 127.0.0.1, each its own process and data folder (demo and tests)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session

from service.db import make_engine
from service.directory.service import KeySpec, add_peer
from service.migrations import upgrade
from service.models import Role
from service.signing.node import init_node
from service.staff.service import create_staff


@dataclass
class LocalNode:
    node_id: str
    name: str
    port: int
    data_dir: Path
    env_extra: dict[str, str] = field(default_factory=dict)
    public_key: str = ""  # "<keyid>=<base64url>"
    token: str = ""  # an operator's bearer token
    admin_token: str = ""
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("YIPANQI_")}
        env.update({"YIPANQI_DATA_DIR": str(self.data_dir), "PYTHONUNBUFFERED": "1"}, **self.env_extra)
        return env

    def cli(self, *args: str) -> str:
        result = subprocess.run(
            [sys.executable, "-m", "service", *args],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if result.returncode != 0:
            raise RuntimeError(f"yipanqi {' '.join(args[:2])} failed: {result.stdout}{result.stderr}")
        return result.stdout

    @property
    def database_url(self) -> str:
        return (
            self.env_extra.get("YIPANQI_DATABASE_URL")
            or f"sqlite:///{(self.data_dir / 'yipanqi.db').resolve()}"
        )

    def init(self) -> None:
        """What ``yipanqi init`` and ``staff add`` do, in-process (a CLI start costs a second or two)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        engine = make_engine(self.database_url)
        try:
            upgrade(engine)
            with Session(engine, expire_on_commit=False) as session:
                key = init_node(session, self.data_dir / "keys", node_id=self.node_id, name=self.name)
                self.public_key = f"{key.keyid}={key.public_key}"
                self.token = create_staff(session, username=f"operator-{self.node_id}", role=Role.operator)[1]
                self.admin_token = create_staff(session, username=f"admin-{self.node_id}", role=Role.admin)[1]
                session.commit()
        finally:
            engine.dispose()

    def trust(self, other: LocalNode) -> None:
        """``yipanqi peers add`` for ``other``, in-process."""
        engine = make_engine(self.database_url)
        try:
            with Session(engine) as session:
                keys = [KeySpec.parse(other.public_key)]
                add_peer(session, node_id=other.node_id, name=other.name, url=other.url, keys=keys)
                session.commit()
        finally:
            engine.dispose()

    def start(self, log_path: Path | None = None) -> None:
        log = open(log_path or self.data_dir / "node.log", "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(self.port)],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()
        self.wait_ready()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"node {self.node_id} exited with {self.process.returncode}")
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"node {self.node_id} not ready after {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def api(
        self, method: str, path: str, *, admin: bool = False, token: str | None = None, **kwargs: Any
    ) -> httpx.Response:
        """The staff API as the operator (default), the admin, or whoever ``token`` belongs to."""
        token = token or (self.admin_token if admin else self.token)
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.request(method, f"{self.url}{path}", headers=headers, timeout=30.0, **kwargs)


def build_network(
    root: Path,
    specs: list[tuple[str, str]],
    base_port: int,
    env_extra: dict[str, str] | None = None,
    database_urls: list[str] | None = None,
) -> list[LocalNode]:
    """Initialise nodes in ``root`` and make every node trust every other one (not started).

    Each node gets its own SQLite file, or the PostgreSQL database given for it.
    """
    nodes = []
    for i, (node_id, name) in enumerate(specs):
        env = dict(env_extra or {})
        if database_urls:
            env["YIPANQI_DATABASE_URL"] = database_urls[i]
        nodes.append(LocalNode(node_id, name, base_port + i, root / node_id, env))
    for node in nodes:
        node.init()
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.trust(other)
    return nodes


def wait_for(predicate: Any, timeout: float = 30.0, interval: float = 0.2) -> Any:
    """Poll until ``predicate()`` is truthy; return its value."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(interval)
