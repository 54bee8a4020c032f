"""A network of real nodes on 127.0.0.1, each its own process and data folder (demo and tests)."""

from __future__ import annotations

import ctypes
import os
import random
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from sqlmodel import Session, select

from service.clock import utcnow
from service.db import make_engine
from service.directory.service import KeySpec, add_peer
from service.migrations import upgrade
from service.models import Role, Staff
from service.signing import pii
from service.signing.node import init_node
from service.staff.passwords import set_password
from service.staff.service import create_staff

PR_SET_PDEATHSIG = 1  # linux/prctl.h
STOP_TIMEOUT = 15.0  # seconds a node gets to shut down after SIGTERM before SIGKILL
LOCAL_TOKEN_DAYS = 3650  # the test and demo networks' staff tokens (the longest a token may last)


class NodeStartError(RuntimeError):
    """A node process ended before it was ready; the message carries its last log line."""


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    """Whether ``host:port`` cannot be bound (bound as uvicorn does, so TIME_WAIT does not count)."""
    with socket.socket() as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((host, port))
        except OSError:
            return True
    return False


def _die_with_parent() -> Callable[[], None] | None:
    """On Linux, a ``preexec_fn`` that has the kernel send the child SIGTERM when we die, even by SIGKILL.

    The kernel sends it when the *thread* that forked the child ends, so only the main thread
    starts tied nodes. Elsewhere there is no such signal: None.
    """
    if not sys.platform.startswith("linux"):
        return None
    prctl = ctypes.CDLL(None, use_errno=True).prctl  # looked up before the fork; the child only calls it
    prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
    parent = os.getpid()

    def arm() -> None:
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
        if os.getppid() != parent:  # we died between the fork and prctl: nobody will send it
            os._exit(1)

    return arm


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
    # Console sign-ins (user name, password) for each role, made by init(console_logins=True).
    logins: dict[Role, tuple[str, str]] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None  # where the running (or last) process writes

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

    def init(self, *, console_logins: bool = False) -> None:
        """What ``yipanqi init`` and ``staff add`` do, in-process (a CLI start costs a second or two).

        ``console_logins``: also one account of each role with a console password (``logins``).
        The node's PII key file is this process's key ring when YIPANQI_PII_KEYS is set (the tests
        read what the node stores), else a new key."""
        pii.make_data_dir(self.data_dir)
        key_file = self.data_dir / "keys" / pii.KEY_FILE
        if not key_file.exists():
            shared = os.environ.get("YIPANQI_PII_KEYS")
            ring = pii.Keyring.parse(shared) if shared else pii.Keyring({1: pii.new_secret()})
            pii.write_key_file(key_file, ring)
        engine = make_engine(self.database_url)
        try:
            upgrade(engine)
            with Session(engine, expire_on_commit=False) as session:
                key = init_node(session, self.data_dir / "keys", node_id=self.node_id, name=self.name)
                self.public_key = f"{key.keyid}={key.public_key}"
                # A local network's tokens last the longest a token may (3650 days): its nodes may run
                # on a clock months from the one they were made on (a test pinned to another month).
                self.token = create_staff(
                    session,
                    username=f"operator-{self.node_id}",
                    role=Role.operator,
                    token_days=LOCAL_TOKEN_DAYS,
                )[1]
                # The test network's admin is also 负责人, so one token reaches every staff route;
                # pure roles (admin handles no case) are in tests/staff/test_role_matrix.py.
                self.admin_token = create_staff(
                    session,
                    username=f"admin-{self.node_id}",
                    roles=(Role.admin, Role.supervisor),
                    token_days=LOCAL_TOKEN_DAYS,
                )[1]
                if console_logins:
                    for role in (Role.supervisor, Role.auditor):
                        create_staff(
                            session,
                            username=f"{role.value}-{self.node_id}",
                            role=role,
                            token_days=LOCAL_TOKEN_DAYS,
                        )
                session.commit()
                accounts = session.exec(select(Staff)).all() if console_logins else []
            for staff in accounts:  # hashed outside the transaction above, one short write each
                assert staff.id is not None
                password = f"Yp-{secrets.token_urlsafe(9)}-9a"
                set_password(staff.id, password, must_change=False, now=utcnow(), engine=engine)
                self.logins[Role(staff.username.split("-")[0])] = (staff.username, password)
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

    def start(self, log_path: Path | None = None, *, tied: bool = False, workers: int = 1) -> None:
        """Start ``yipanqi serve`` (``--workers``: processes, PostgreSQL only) and wait until it is ready.

        ``tied`` (the demo): the node gets a process group of its own, so a Ctrl-C in the terminal
        reaches the parent alone, which stops its nodes in order; and on Linux the node is sent
        SIGTERM when the parent dies, however it dies. Call it from the main thread then.
        """
        if tied and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("tied nodes are started from the main thread (the parent-death signal)")
        options: dict[str, Any] = {"process_group": 0, "preexec_fn": _die_with_parent()} if tied else {}
        self.log_path = log_path or self.data_dir / "node.log"
        log = open(self.log_path, "ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--host", "127.0.0.1", "--port", str(self.port)]
            + (["--workers", str(workers)] if workers > 1 else []),
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
            **options,
        )
        log.close()
        self.wait_ready()

    def last_log_line(self) -> str:
        """The node's last words (an exception's message, ``address already in use``), or ''."""
        if self.log_path is None:
            return ""
        try:
            lines = self.log_path.read_text(encoding="utf-8", errors="replace").strip().splitlines()
        except OSError:
            return ""
        return lines[-1].strip() if lines else ""

    def wait_ready(self, timeout: float = 120.0) -> None:
        # A node is ready in a second or two; the long wait is for a machine loaded by parallel
        # test workers. A node that exits is reported at once.
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                said = self.last_log_line()
                raise NodeStartError(
                    f"node {self.node_id} on port {self.port} exited with {self.process.returncode}"
                    + (f": {said}" if said else "")
                )
            try:
                if httpx.get(f"{self.url}/readyz", timeout=1.0).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            time.sleep(0.1)
        raise TimeoutError(f"node {self.node_id} not ready after {timeout}s")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        self.send_signal(sig)
        self.reap()

    def send_signal(self, sig: int = signal.SIGTERM) -> None:
        """Send ``sig`` if the process still runs (``reap`` waits for it)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)

    def reap(self, timeout: float = STOP_TIMEOUT) -> None:
        """Wait for the process to end, SIGKILL it after ``timeout``; forget it."""
        if self.process is not None:
            try:
                self.process.wait(timeout=timeout)
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
    *,
    console_logins: bool = False,
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
        node.init(console_logins=console_logins)
    for node in nodes:
        for other in nodes:
            if other is not node:
                node.trust(other)
    return nodes


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> int:
    """First of ``n`` consecutive free ports, taken below the kernel's ephemeral range.

    A node stopped and started again must find its port still free; in the ephemeral range any
    outgoing connection on the machine (a pooled database connection, an API call) may have been
    given it meanwhile, and the restart fails with "address already in use".
    """
    try:
        low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = 32768
    for _ in range(50):
        base = random.randrange(10000, low - n) if low - n > 10000 else free_port()
        ok = True
        for p in range(base, base + n):
            with socket.socket() as s:
                try:
                    s.bind(("127.0.0.1", p))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free ports")


def stop_all(nodes: list[LocalNode]) -> None:
    """SIGTERM every node at once, then wait for each: the slowest sets the time, not their sum."""
    for node in nodes:
        node.send_signal()
    for node in nodes:
        node.reap()


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
