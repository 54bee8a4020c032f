"""A network of real nodes on 127.0.0.1, each its own process and data folder (demo and tests)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

_TOKEN = re.compile(r"^yp_[0-9]+_\S+$", re.M)
_KEY = re.compile(r"--key (\S+=\S+)")


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

    def init(self) -> None:
        out = self.cli("init", "--node-id", self.node_id, "--name", self.name)
        match = _KEY.search(out)
        if match is None:
            raise RuntimeError(f"init printed no key: {out}")
        self.public_key = match.group(1)
        self.token = self._staff("operator")
        self.admin_token = self._staff("admin")

    def _staff(self, role: str) -> str:
        out = self.cli("staff", "add", "--username", f"{role}-{self.node_id}", "--role", role)
        match = _TOKEN.search(out)
        if match is None:
            raise RuntimeError("staff add printed no token")
        return match.group(0)

    def trust(self, other: LocalNode) -> None:
        self.cli(
            "peers",
            "add",
            "--node-id",
            other.node_id,
            "--name",
            other.name,
            "--url",
            other.url,
            "--key",
            other.public_key,
        )

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

    def api(self, method: str, path: str, *, admin: bool = False, **kwargs: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.admin_token if admin else self.token}"}
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
