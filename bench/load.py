"""Load bench: a real node against a plain FastAPI baseline, driven by wrk with pre-signed requests.

    python -m bench [--duration 10] [--connections 4,16,64,256] [--backend sqlite|postgres|both]
                    [--mode single|batch|both] [--quick]

For each backend (SQLite file, PostgreSQL throwaway database) it starts, each in its own process:

- **the node**: ``yipanqi serve`` of a node initialised as service/localnet.py does (太康县 411627,
  trusting 金水区 410105, whose private key the bench holds), relay off;
- **the baseline**: bench/baseline.py, a plain FastAPI endpoint that parses the same JSON and
  inserts one row into the same kind of database with the node's engine (same pragmas), served by
  uvicorn with the same options and worker count as ``yipanqi serve``.

Before each point it signs fresh requests with 410105's key exactly as the node's client does
(envelope_body, sign_request: a new UUIDv7 message_id and nonce each, ``created`` = now), enough
for the point's duration, and writes them as raw HTTP requests. wrk (Debian package ``wrk``,
one process of its own) sends them with bench/presigned.lua, each at most once, over 4 / 16 / 64 /
256 keep-alive connections; a point ends after ``--duration`` seconds or when its requests run
out. The node verifies and stores every one (protocol section 5: signature, nonce, envelope,
inbox, case, signed receipt). Mode *single* is ``POST /peer/v1/verification-requests``; mode
*batch* is ``POST /peer/v1/batch`` and runs only if ``GET /peer/v1/node`` advertises it.

It prints one table: req/s, p50 and p99 latency (ms), non-2xx and 5xx answers for the node and the
baseline at each connection count, the ratio node/baseline of req/s, the CPU each server process
and wrk used (% of one core), and the machine's core count. A load generator check first runs the
same script against bench/sink.py (answers at once, no framework): the rate it reaches is a floor
for what wrk can send on this machine. Progress goes to stderr, the table to stdout. Servers are
stopped, the temporary folder (private keys) removed and the PostgreSQL databases dropped at the
end, also on Ctrl-C or SIGTERM.
"""

from __future__ import annotations

import argparse
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, NoReturn

import httpx
import uuid6
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from service.clock import utcnow
from service.config import Settings
from service.db import make_engine
from service.exchange.batch import request_body
from service.exchange.envelope import envelope_body
from service.localnet import _die_with_parent, build_network, free_port, free_ports
from service.models import Priority, Topic
from service.signing.http import sign_request
from service.signing.node import NodeSigner, load_signer
from service.subjects import Subject
from service.verification.schemas import RequestPayload
from service.verification.service import REQUEST

HERE = Path(__file__).resolve().parent
LUA = HERE / "presigned.lua"
BASELINE = HERE / "baseline.py"
SINK = HERE / "sink.py"

SENDER, RECEIVER = ("410105", "金水区"), ("411627", "太康县")
SINGLE_PATH, BATCH_PATH = "/peer/v1/verification-requests", "/peer/v1/batch"
PAYLOAD = RequestPayload(
    subject=Subject(id_number="411627199503080024", name="王秀英", sex="F", birth_date="1995-03-08"),  # type: ignore[arg-type]
    topic=Topic.marital_status,
    priority=Priority.normal,
    key_target=False,
    question="请核实该对象婚育情况。",
)
# The node runs with default settings (LocalNode drops the caller's YIPANQI_* variables).
LIFETIME = timedelta(seconds=Settings.model_fields["max_signature_lifetime_seconds"].default)
NODE_ENV = {"YIPANQI_RELAY_ENABLED": "false", "YIPANQI_LOG_LEVEL": "WARNING"}
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
HEADROOM = 1.5  # requests signed per point: this × the best rate seen so far × the duration
WARMUP_CONNECTIONS, WARMUP_SECONDS, WARMUP_REQUESTS = 16, 2, 1500
WRK_TIMEOUT = "30s"  # wrk counts slower answers as timeouts and leaves them out of its histogram


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


STOP_SIGNALS = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}


def protected(fn: Callable[..., Any], *args: Any) -> None:
    """Run a clean-up step with Ctrl-C, SIGTERM and SIGHUP held back until it is done.

    A signal that arrives meanwhile is delivered afterwards (and stops the bench then), so a
    second Ctrl-C cannot leave a node running or a database behind.
    """
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    try:
        fn(*args)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)


# --- requests ----------------------------------------------------------------------------------


def advertises_batch(info: dict[str, Any]) -> bool:
    """Whether ``GET /peer/v1/node`` offers ``POST /peer/v1/batch`` (docs/protocol.md §18)."""
    return "batch" in (info.get("capabilities") or [])


def batch_body(envelopes: list[bytes]) -> bytes:
    """The body of ``POST /peer/v1/batch``: ``{"items": ["<envelope>", …]}``, as the relay sends it."""
    return request_body(envelopes)


@dataclass
class Signer:
    """Builds requests from 410105 to 411627 as service/exchange/client.py does, signed now."""

    node: NodeSigner
    recipient: str

    def envelope(self) -> tuple[str, bytes]:
        message_id = uuid6.uuid7()
        body = envelope_body(
            message_id=message_id,
            type=REQUEST,
            sender=self.node.node_id,
            recipient=self.recipient,
            sent_at=utcnow(),
            correlation_id=None,
            payload=PAYLOAD,
        )
        return str(message_id), body

    def raw(self, host: str, path: str, body: bytes) -> bytes:
        headers = sign_request(
            method="POST",
            path=path,
            body=body,
            key=self.node.private_key,
            keyid=self.node.keyid,
            created=utcnow(),
            lifetime=LIFETIME,
        )
        lines = [f"POST {path} HTTP/1.1", f"Host: {host}"]
        lines += [f"{name}: {value}" for name, value in headers.items()]
        lines.append(f"Content-Length: {len(body)}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode("ascii") + body

    def build(self, host: str, mode: str, count: int, batch_size: int) -> list[tuple[str, bytes]]:
        """``count`` requests, each with a token (a message_id) that the answer repeats."""
        out = []
        for _ in range(count):
            if mode == "single":
                message_id, body = self.envelope()
                out.append((message_id, self.raw(host, SINGLE_PATH, body)))
            else:
                envelopes = [self.envelope() for _ in range(batch_size)]
                body = batch_body([e[1] for e in envelopes])
                out.append((envelopes[0][0], self.raw(host, BATCH_PATH, body)))
        return out


def write_requests(requests: list[tuple[str, bytes]], prefix: Path, threads: int) -> None:
    """One file per wrk thread (round robin): records ``<token> <length>\\n<raw request>``."""
    files = [open(f"{prefix}.{k + 1}", "wb") for k in range(threads)]
    try:
        for i, (token, raw) in enumerate(requests):
            out = files[i % threads]
            out.write(b"%s %d\n" % (token.encode("ascii"), len(raw)))
            out.write(raw)
    finally:
        for f in files:
            f.close()


# --- processes -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a running process, from /proc (Linux)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return math.nan
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Server:
    """A bench process (baseline, sink): own process group, SIGTERM on our death (Linux)."""

    name: str
    argv: list[str]
    port: int
    log: Path
    ready_path: str | None = "/healthz"  # None: ready when the port accepts connections
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self, env: dict[str, str]) -> None:
        with open(self.log, "ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                process_group=0,
                preexec_fn=_die_with_parent(),
            )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                tail = self.log.read_text(errors="replace").strip().splitlines()[-1:]
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: {' '.join(tail)}")
            try:
                if self.ready_path is None:
                    socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                    return
                if httpx.get(self.url + self.ready_path, timeout=1).status_code == 200:
                    return
            except (OSError, httpx.HTTPError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"{self.name} not ready after 30 s")

    def stop(self) -> None:
        stop_process(self.process)
        self.process = None


def stop_process(process: subprocess.Popen[bytes] | None, sig: int = signal.SIGTERM) -> None:
    if process is None or process.returncode is not None:
        return
    try:
        process.send_signal(sig)
        process.wait(timeout=15)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
    except ProcessLookupError:
        pass


# --- one load point --------------------------------------------------------------------------------


@dataclass
class Point:
    completed: int = 0
    seconds: float = 0.0
    rps: float = 0.0
    p50_ms: float = math.nan
    p99_ms: float = math.nan
    non_2xx: int = 0
    status_5xx: int = 0
    socket_errors: int = 0
    ran_out: bool = False
    prepared: int = 0
    overflow: int = 0
    latency_from: str = "raw"  # "wrk": too few answers named their message; wrk's own percentiles
    wrk_cpu: float = math.nan  # % of one core
    server_cpu: float = math.nan
    statuses: dict[int, int] = field(default_factory=dict)
    logged: Counter[str] = field(default_factory=Counter)  # exceptions in the server's log
    settle_seconds: float = 0.0  # after the point: until the server answered its probe again


def percentile(values: list[float], q: float) -> float:
    """Nearest rank."""
    if not values:
        return math.nan
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def read_results(path: Path) -> Point:
    point, latencies, firsts, lasts = Point(), [], [], []
    wrk_p50 = wrk_p99 = math.nan
    for line in path.read_text().splitlines():
        kind, *values = line.split()
        if kind == "errors":
            connect, read, write, timeout, _status = map(int, values)
            point.socket_errors = connect + read + write + timeout
        elif kind == "wrk_latency":
            wrk_p50, wrk_p99 = (float(v) / 1000 for v in values)
        elif kind == "thread":
            first, last = float(values[0]), float(values[1])
            if first >= 0 and last >= 0:
                firsts.append(first)
                lasts.append(last)
            point.completed += int(values[2])
            point.prepared += int(values[4])
            point.overflow += int(values[6])
            point.ran_out = point.ran_out or values[7] == "1"
        elif kind == "status":
            code, count = int(values[0]), int(values[1])
            point.statuses[code] = point.statuses.get(code, 0) + count
        elif kind == "lat":
            latencies.extend(float(v) / 1000 for v in values)
    if firsts:
        point.seconds = (max(lasts) - min(firsts)) / 1e6
        point.rps = point.completed / point.seconds if point.seconds > 0 else 0.0
    point.non_2xx = sum(n for code, n in point.statuses.items() if not 200 <= code < 300)
    point.status_5xx = sum(n for code, n in point.statuses.items() if 500 <= code < 600)
    if point.completed and len(latencies) >= 0.95 * point.completed:
        point.p50_ms, point.p99_ms = percentile(latencies, 50), percentile(latencies, 99)
    else:
        point.p50_ms, point.p99_ms, point.latency_from = wrk_p50, wrk_p99, "wrk"
    return point


@dataclass
class Wrk:
    binary: str
    threads: int
    workdir: Path
    keep: bool = False
    running: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def run(
        self,
        url: str,
        requests: list[tuple[str, bytes]],
        connections: int,
        duration: int,
        server_pid: int | None,
        wrap: bool = False,
    ) -> Point:
        threads = min(self.threads, connections)
        tag = uuid.uuid4().hex[:8]
        prefix, out, log = (self.workdir / f"{tag}.{x}" for x in ("requests", "out", "log"))
        write_requests(requests, prefix, threads)
        env = {
            **os.environ,
            "BENCH_REQUESTS": str(prefix),
            "BENCH_OUT": str(out),
            "BENCH_WRAP": "1" if wrap else "0",
        }
        argv = [self.binary, "-t", str(threads), "-c", str(connections), "-d", f"{duration}s"]
        argv += ["--timeout", WRK_TIMEOUT, "-s", str(LUA), url + "/"]
        cpu_before = cpu_seconds(server_pid) if server_pid else math.nan
        started = time.monotonic()
        with open(log, "wb") as log_file:
            process = subprocess.Popen(
                argv, env=env, stdout=log_file, stderr=subprocess.STDOUT,
                process_group=0, preexec_fn=_die_with_parent(),
            )  # fmt: skip
        self.running.append(process)
        try:
            usage = self._wait(process, deadline=started + duration + 60)
        finally:
            self.running.remove(process)
        wall = time.monotonic() - started
        cpu_after = cpu_seconds(server_pid) if server_pid else math.nan
        if process.returncode != 0 or not out.exists():
            raise RuntimeError(
                f"wrk failed ({process.returncode}): {log.read_text(errors='replace')[-2000:]}"
            )
        point = read_results(out)
        point.wrk_cpu = 100 * (usage.ru_utime + usage.ru_stime) / wall
        point.server_cpu = 100 * (cpu_after - cpu_before) / wall
        if not self.keep:
            for f in self.workdir.glob(f"{tag}.*"):
                f.unlink()
        return point

    @staticmethod
    def _wait(process: subprocess.Popen[bytes], deadline: float) -> Any:
        """Reap wrk and return its resource usage (CPU time); SIGINT, then SIGKILL, past the deadline."""
        interrupted = False
        while True:
            pid, status, usage = os.wait4(process.pid, os.WNOHANG)
            if pid:
                process.returncode = os.waitstatus_to_exitcode(status)
                return usage
            if time.monotonic() > deadline:
                process.send_signal(signal.SIGKILL if interrupted else signal.SIGINT)
                interrupted, deadline = True, deadline + 10
            time.sleep(0.02)

    def stop_all(self) -> None:
        for process in list(self.running):
            stop_process(process, signal.SIGKILL)


# --- one backend -----------------------------------------------------------------------------------


@dataclass
class Row:
    backend: str
    mode: str
    connections: int
    node: Point | None = None
    baseline: Point | None = None
    skipped: str = ""  # why there are no figures


@dataclass
class Target:
    name: str
    url: str
    pid: int
    log: Path
    probe: str  # a GET that needs a worker thread and the database: answered once the server has settled
    hint: float = 0.0  # best req/s seen so far, to size the next point


CAUSE = "The above exception was the direct cause of the following exception:"
EXCEPTION_LINE = re.compile(r"^([A-Za-z_][\w.]*(?:Error|Exception|Timeout))\b(.*)$")


def logged_errors(text: str) -> Counter[str]:
    """The exceptions a server logged, by final type (a chained cause is not counted twice)."""
    lines, found = text.splitlines(), Counter[str]()
    for i, line in enumerate(lines):
        match = EXCEPTION_LINE.match(line)
        if match is None:
            continue
        rest = [x for x in lines[i + 1 : i + 4] if x.strip()]
        if rest and rest[0].strip() == CAUSE:
            continue
        message = match.group(2).split("(Background", 1)[0].strip(" :")
        message = re.sub(r"^\([\w.]+\) ", "", message)  # SQLAlchemy repeats the driver's exception type
        found[f"{match.group(1).rsplit('.', 1)[-1]}: {message[:70]}" if message else match.group(1)] += 1
    return found


SETTLE_TIMEOUT = 120.0


def settle(target: Target, timeout: float = SETTLE_TIMEOUT) -> float:
    """Wait until the server answers its probe (the work a point left in flight is done); seconds."""
    started = time.monotonic()
    while (left := timeout - (time.monotonic() - started)) > 0:
        try:
            if httpx.get(target.url + target.probe, timeout=left).status_code == 200:
                return time.monotonic() - started
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    return timeout


@dataclass
class Options:
    duration: int
    connections: list[int]
    modes: list[str]
    batch_size: int
    max_requests: int
    pg_url: str


class Bench:
    def __init__(self, options: Options, wrk: Wrk, root: Path) -> None:
        self.options, self.wrk, self.root = options, wrk, root
        self.rows: list[Row] = []
        self.notes: list[str] = []
        self.signing_rate = 0.0  # signed requests/s in this process, for the progress lines

    def point(
        self,
        signer: Signer,
        target: Target,
        mode: str,
        connections: int,
        duration: int,
        count: int | None = None,
    ) -> Point:
        if count is None:
            wanted = math.ceil(HEADROOM * target.hint * duration) + 4 * connections
            count = max(200, min(self.options.max_requests, wanted))
        host = target.url.removeprefix("http://")
        started = time.perf_counter()
        requests = signer.build(host, mode, count, self.options.batch_size)
        signed_in = time.perf_counter() - started
        self.signing_rate = count / signed_in if signed_in else 0.0
        log_from = target.log.stat().st_size if target.log.exists() else 0
        point = self.wrk.run(target.url, requests, connections, duration, target.pid)
        # Requests still in the server when wrk stopped go on there: wait for them to end, so that
        # the next point starts on an idle server and what they logged counts for this point.
        point.settle_seconds = settle(target)
        if target.log.exists():
            with open(target.log, "rb") as log:
                log.seek(log_from)
                point.logged = logged_errors(log.read().decode("utf-8", "replace"))
        target.hint = max(target.hint, point.rps * (2 if point.ran_out else 1))
        return point

    def run_backend(self, backend: str) -> None:
        with ExitStack() as stack:
            try:
                self._run_backend(backend, stack)
            finally:
                dropping = ", dropping its databases" if backend == "postgres" else ""
                say(f"[{backend}] stopping the node and the baseline{dropping}")

    def _run_backend(self, backend: str, stack: ExitStack) -> None:
        folder = self.root / backend
        folder.mkdir()
        sender_url = f"sqlite:///{(folder / SENDER[0] / 'yipanqi.db').resolve()}"
        if backend == "postgres":
            node_db, baseline_db = self._pg_databases(stack)
            database_urls: list[str] | None = [sender_url, node_db]
        else:
            database_urls, baseline_db = None, f"sqlite:///{(folder / 'baseline.db').resolve()}"
        say(f"[{backend}] initialising the node (migrations, keys, directory)")
        sender, node = build_network(folder, [SENDER, RECEIVER], free_ports(2), NODE_ENV, database_urls)
        engine = make_engine(sender.database_url)
        try:
            with Session(engine) as session:
                signer = Signer(load_signer(session, sender.data_dir / "keys"), node.node_id)
        finally:
            engine.dispose()
        stack.callback(protected, node.stop)
        node.start(tied=True)
        baseline_port = free_port()
        baseline = Server(
            "baseline",
            [sys.executable, str(BASELINE), "--port", str(baseline_port), "--database-url", baseline_db],
            baseline_port,
            folder / "baseline.log",
        )
        stack.callback(protected, baseline.stop)
        baseline.start(env=node.env)
        assert node.process is not None
        assert baseline.process is not None
        assert node.log_path is not None
        targets = [
            Target("node", node.url, node.process.pid, node.log_path, "/peer/v1/node"),
            Target("baseline", baseline.url, baseline.pid, baseline.log, "/healthz"),
        ]
        info = httpx.get(f"{node.url}/peer/v1/node", timeout=10).json()
        for mode in self.options.modes:
            if mode == "batch" and not advertises_batch(info):
                self.rows.append(
                    Row(
                        backend,
                        mode,
                        0,
                        skipped="not available: node does not advertise batch (GET /peer/v1/node)",
                    )
                )
                say(f"[{backend}] batch: not available: node does not advertise batch")
                continue
            for target in targets:  # warm-up: imports, pools, caches; sizes the first point
                target.hint = 0.0
                warm = self.point(signer, target, mode, WARMUP_CONNECTIONS, WARMUP_SECONDS, WARMUP_REQUESTS)
                say(f"[{backend}] {mode} warm-up {target.name}: {warm.rps:,.0f} req/s")
            for connections in self.options.connections:
                row = Row(backend, mode, connections)
                for target in targets:
                    point = self.point(signer, target, mode, connections, self.options.duration)
                    setattr(row, target.name, point)
                    say(
                        f"[{backend}] {mode} {connections:>3} conns {target.name:<8} {point.rps:>8,.0f} req/s"
                        f"  p50 {point.p50_ms:7.1f} ms  p99 {point.p99_ms:7.1f} ms  non-2xx {point.non_2xx}"
                        f"  ({point.prepared:,} signed at {self.signing_rate:,.0f}/s)"
                    )
                    self._note(row, target.name, point)
                self.rows.append(row)

    def _note(self, row: Row, name: str, point: Point) -> None:
        where = f"{row.backend} {row.mode} {row.connections} {name}"
        if point.ran_out:
            self.notes.append(
                f"{where}: ran out of its {point.prepared:,} pre-signed requests after {point.seconds:.1f} s"
            )
        if point.socket_errors:
            self.notes.append(f"{where}: {point.socket_errors} socket errors (connect/read/write/timeout)")
        if point.overflow:
            self.notes.append(f"{where}: {point.overflow} requests lost to reconnects (not resent)")
        if point.settle_seconds >= SETTLE_TIMEOUT:
            self.notes.append(
                f"{where}: still no answer to a probe {SETTLE_TIMEOUT:.0f} s after the point (requests left"
                " in flight); the next point ran anyway"
            )
        elif point.settle_seconds > 2:
            self.notes.append(
                f"{where}: after the point the server took {point.settle_seconds:.0f} s to answer a probe"
                " again (requests left in flight)"
            )
        if point.latency_from == "wrk" and point.completed:
            self.notes.append(f"{where}: latency from wrk's histogram (answers did not name their message)")
        if point.completed == 0 and point.prepared:
            self.notes.append(f"{where}: no answer at all in {self.options.duration} s")
        if point.logged:
            kinds = "; ".join(f"{n}× {kind}" for kind, n in point.logged.most_common(4))
            self.notes.append(f"{where}: server logged {sum(point.logged.values())} exceptions: {kinds}")
        if point.non_2xx:
            codes = ", ".join(f"{n}× {c}" for c, n in sorted(point.statuses.items()) if not 200 <= c < 300)
            self.notes.append(f"{where}: non-2xx answers {codes}")

    def _pg_databases(self, stack: ExitStack) -> tuple[str, str]:
        admin = create_engine(self.options.pg_url, isolation_level="AUTOCOMMIT")
        stack.callback(protected, admin.dispose)
        stem = f"yipanqi_bench_{uuid.uuid4().hex[:8]}"
        urls = []
        for suffix in ("node", "baseline"):
            name = f"{stem}_{suffix}"
            with admin.connect() as conn:
                conn.execute(text(f'CREATE DATABASE "{name}"'))
            stack.callback(protected, self._drop_database, admin, name)
            urls.append(
                make_url(self.options.pg_url).set(database=name).render_as_string(hide_password=False)
            )
        say(f"[postgres] databases {stem}_node and {stem}_baseline")
        return urls[0], urls[1]

    @staticmethod
    def _drop_database(admin: Any, name: str) -> None:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))

    def check_generator(self, signer_factory: Callable[[], Signer], connections: int, duration: int) -> str:
        """wrk and the same script against bench/sink.py, cycling through 5,000 pre-signed requests."""
        port = free_port()
        sink = Server(
            "sink", [sys.executable, str(SINK), "--port", str(port)], port, self.root / "sink.log", None
        )
        try:
            sink.start(env=dict(os.environ))
            requests = signer_factory().build(f"127.0.0.1:{port}", "single", 5000, 1)
            point = self.wrk.run(sink.url, requests, connections, duration, sink.pid, wrap=True)
        finally:
            protected(sink.stop)
        return (
            f"load generator check: wrk → bench/sink.py (asyncio, no framework), {connections} connections,"
            f" {duration} s: {point.rps:,.0f} req/s, p50 {point.p50_ms:.2f} ms, wrk {point.wrk_cpu:.0f}%"
            f" and sink {point.server_cpu:.0f}% of a core"
        )


# --- the table ---------------------------------------------------------------------------------------


def _figures(point: Point | None) -> str:
    if point is None:
        return " " * 50
    mark = "*" if point.ran_out else " "
    p50, p99 = (f"{v:>8.1f}" if point.completed else f"{'—':>8}" for v in (point.p50_ms, point.p99_ms))
    return (
        f"{point.rps:>8,.0f}{mark}{p50}{p99}{point.non_2xx:>8}{point.status_5xx:>5}"
        f"{point.server_cpu:>6.0f}%{point.wrk_cpu:>5.0f}%"
    )


def table(rows: list[Row], header: list[str], notes: list[str]) -> str:
    block = f"{'req/s':>9}{'p50 ms':>8}{'p99 ms':>8}{'non-2xx':>8}{'5xx':>5}{'cpu':>7}{'wrk':>6}"
    lines = [*header, ""]
    lines.append(f"{'':<22}| {'node':<49}| {'baseline':<49}|")
    lines.append(f"{'backend':<9}{'mode':<7}{'conns':>5} | {block} | {block} | node/base")
    lines.append("-" * len(lines[-1]))
    for row in rows:
        if row.skipped:
            lines.append(f"{row.backend:<9}{row.mode:<7}{'—':>5} | {row.skipped}")
            continue
        ratio = (
            f"{row.node.rps / row.baseline.rps:>8.2f}x"
            if row.node and row.baseline and row.baseline.rps
            else f"{'—':>9}"
        )
        lines.append(
            f"{row.backend:<9}{row.mode:<7}{row.connections:>5} | {_figures(row.node)} |"
            f" {_figures(row.baseline)} | {ratio}"
        )
    if notes:
        lines += ["", *notes]
    return "\n".join(lines)


# --- main ----------------------------------------------------------------------------------------------


def _interrupt(signum: int, _frame: Any) -> NoReturn:
    raise KeyboardInterrupt(signal.Signals(signum).name)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__.splitlines()[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--duration", type=int, default=None, help="seconds per point (default 10)")
    parser.add_argument(
        "--connections", default=None, help="comma-separated connection counts (default 4,16,64,256)"
    )
    parser.add_argument("--backend", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--mode", choices=["single", "batch", "both"], default="both")
    parser.add_argument("--batch-size", type=int, default=50, help="messages per batch request (default 50)")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads (default 1)")
    parser.add_argument(
        "--max-requests",
        type=int,
        default=120_000,
        help="cap on requests signed for one point (default 120000)",
    )
    parser.add_argument(
        "--pg-url",
        default=os.environ.get("YIPANQI_TEST_DATABASE_URL", DEFAULT_PG),
        help="PostgreSQL server to create the throwaway databases on (default $YIPANQI_TEST_DATABASE_URL or"
        f" {DEFAULT_PG})",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the temporary folder (logs, requests, private keys) and say where",
    )
    parser.add_argument("--no-check", action="store_true", help="skip the load generator check")
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run: 2 s per point, 4 and 64 connections (unless given)"
    )
    args = parser.parse_args(argv)
    if args.duration is None:
        args.duration = 2 if args.quick else 10
    if args.connections is None:
        args.connections = "4,64" if args.quick else "4,16,64,256"
    try:
        args.connection_list = [int(c) for c in args.connections.split(",") if c.strip()]
    except ValueError:
        parser.error("--connections takes numbers separated by commas, e.g. 4,16,64,256")
    if not args.connection_list or min(args.connection_list) < 1:
        parser.error("--connections must name at least one count of 1 or more")
    if not 1 <= args.duration <= 200:
        parser.error("--duration must be 1–200 s (signatures are valid for 300 s from signing)")
    if args.threads < 1 or args.batch_size < 1:
        parser.error("--threads and --batch-size must be 1 or more")
    return args


def postgres_reachable(url: str) -> str | None:
    """None if we can connect, else why not."""
    try:
        engine = create_engine(url)
        try:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        finally:
            engine.dispose()
    except Exception as exc:  # the driver missing, the server down, auth
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
    return None


@contextmanager
def temporary_root(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="yipanqi-bench-load-"))
    try:
        yield root
    finally:
        if keep:
            say(f"kept {root} (it holds private keys: remove it when done)")
        else:
            protected(shutil.rmtree, root, True)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    binary = shutil.which("wrk")
    if binary is None:
        say("wrk not found: install it (Debian: apt-get install wrk)")
        return 2
    version = subprocess.run([binary, "-v"], capture_output=True, text=True, check=False).stdout.split(" [")[
        0
    ]
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    modes = ["single", "batch"] if args.mode == "both" else [args.mode]
    options = Options(
        args.duration, args.connection_list, modes, args.batch_size, args.max_requests, args.pg_url
    )
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    load_start = os.getloadavg()
    try:
        with ExitStack() as stack:
            root = stack.enter_context(temporary_root(args.keep))
            wrk = Wrk(binary, args.threads, root, args.keep)
            stack.callback(protected, wrk.stop_all)
            bench = Bench(options, wrk, root)
            try:
                check = "load generator check: skipped (--no-check)"
                if not args.no_check:
                    say("load generator check against bench/sink.py")
                    check = bench.check_generator(
                        _throwaway_signer, max(args.connection_list), min(3, args.duration)
                    )
                    say(check)
                for backend in backends:
                    if backend == "postgres":
                        why = postgres_reachable(args.pg_url)
                        if why is not None:
                            if args.backend == "postgres":
                                say(f"PostgreSQL at {args.pg_url} not reachable: {why}")
                                return 2
                            bench.rows.append(Row("postgres", "—", 0, skipped=f"not available: {why}"))
                            continue
                    bench.run_backend(backend)
            finally:
                say("removing the temporary folder")
    except KeyboardInterrupt as exc:
        say(
            f"interrupted ({str(exc) or 'SIGINT'}): servers stopped, databases dropped, temporary folder"
            " removed"
        )
        return 130
    load_end = os.getloadavg()
    cores = os.cpu_count()
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else cores
    header = [
        f"yipanqi load bench — {cores} cores (os.cpu_count(); {affinity} usable by this process),"
        f" load average {load_start[0]:.2f} at start, {load_end[0]:.2f} at end",
        f"{version}, {args.threads} thread(s), {args.duration} s per point;"
        " each server one process, one uvicorn worker",
        "single = one signed POST /peer/v1/verification-requests (a 协查 request, 422-byte envelope);"
        f" batch = POST /peer/v1/batch of {args.batch_size}",
        "node = `yipanqi serve`, relay off; baseline = bench/baseline.py (json.loads + one INSERT, same"
        " engine and pragmas, no signatures)",
        "p50/p99 per request; cpu = the server process, wrk = the load generator, % of one core over the"
        " point; * = ran out of pre-signed requests before the duration",
        check,
    ]
    print(table(bench.rows, header, bench.notes))
    return 0


def _throwaway_signer() -> Signer:
    """A sender key of its own for the sink check (the sink verifies nothing)."""
    return Signer(
        NodeSigner(SENDER[0], SENDER[1], f"{SENDER[0]}/k1", Ed25519PrivateKey.generate()), RECEIVER[0]
    )


if __name__ == "__main__":
    sys.exit(main())
