"""Batch bench: messages/s into one real node through ``POST /peer/v1/batch`` (docs/protocol.md §18).

    python bench/batch.py [--messages 20000] [--batch-size 1000] [--concurrency 2]
                          [--backend sqlite|postgres] [--type notification|verification.request]
                          [--singles 400] [--workers 1] [--breakdown] [--profile]

It starts, as bench/load.py does, a node of its own: ``yipanqi serve`` for 太康县 (411627), one
process, one uvicorn worker, relay off, every other setting at its default, trusting 金水区
(410105) whose private key the bench holds; SQLite in a temporary folder, or a throwaway
PostgreSQL database on ``--pg-url``. It builds ``--messages`` envelopes the way the outbox does
(``envelope_body``: a UUIDv7 each; arrival 通报 by default), cuts them into batches of
``--batch-size``, signs every batch first (``sign_request``, as the relay does), then POSTs them
over ``--concurrency`` keep-alive connections and waits for every answer. It checks that every item
came back ``202`` and that the node's inbox holds exactly the messages sent, and prints:

- messages/s = items accepted / (last answer − first request), and batches/s;
- p50 / p99 of a batch's round trip;
- the node process's CPU over the run (user + system, % of one core, from /proc; with
  ``--workers N``, PostgreSQL only, the node is ``yipanqi serve --workers N`` and its worker
  processes' CPU is counted too);
- for comparison, ``--singles`` of the same messages sent one request each (4 connections).

``--breakdown`` also times, in this process on a temporary SQLite file, each step the node takes for
a batch of ``--batch-size``: reading and checking the items (rule 8, no database), storing them in
one transaction (nonce, duplicate check, the domain's bulk path ``handle_many`` where it has one,
else each item's handler in a savepoint of its own, the inbox rows), the same without the bulk
paths (every item in its own savepoint, as before they existed), the same with handlers that do
nothing, and signing the answers. With ``--profile`` (pip install pyinstrument) it prints where the
storing step spends its time.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import uuid6
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlmodel import Session

from service.clock import utcnow
from service.exchange import batch
from service.exchange.envelope import envelope_body
from service.localnet import build_network, free_ports
from service.notifications.schemas import ArrivalDetails, NotificationPayload
from service.signing.http import sign_request
from service.signing.node import NodeSigner, load_signer
from service.sla.deadlines import SHANGHAI
from service.subjects import Subject
from service.verification.schemas import RequestPayload

SENDER, RECEIVER = ("410105", "金水区"), ("411627", "太康县")
NODE_ENV = {"YIPANQI_RELAY_ENABLED": "false", "YIPANQI_LOG_LEVEL": "WARNING"}
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SUBJECT = Subject(id_number="411627199503080024", name="王秀英", sex="F", birth_date="1995-03-08")
BATCH_PATH = "/peer/v1" + batch.PATH


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def payload(kind: str) -> tuple[str, str, Any]:
    """(message type, single endpoint, payload) of the bench's messages."""
    if kind == "verification.request":
        request = RequestPayload(
            subject=SUBJECT,
            topic="marital_status",
            priority="normal",
            key_target=False,
            question="请核实该对象婚育情况。",
        )
        return kind, "/peer/v1/verification-requests", request
    day = utcnow().astimezone(SHANGHAI).date() - timedelta(days=1)
    arrival = NotificationPayload(
        subject=SUBJECT,
        kind="arrival",
        occurred_on=day,
        details=ArrivalDetails(arrived_on=day),
    )
    return "notification", "/peer/v1/notifications", arrival


def envelopes(signer: NodeSigner, kind: str, count: int) -> list[bytes]:
    message_type, _path, body = payload(kind)
    return [
        envelope_body(
            message_id=uuid6.uuid7(),
            type=message_type,
            sender=signer.node_id,
            recipient=RECEIVER[0],
            sent_at=utcnow(),
            correlation_id=None,
            payload=body,
        )
        for _ in range(count)
    ]


def signed(signer: NodeSigner, path: str, body: bytes) -> dict[str, str]:
    return sign_request(
        method="POST", path=path, body=body, key=signer.private_key, keyid=signer.keyid, created=utcnow()
    )


def cpu_seconds(pid: int) -> float:
    """User + system CPU of process ``pid`` and of its children alive now (``--workers``: uvicorn's)."""
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            proc, fields = stat.parent.name, stat.read_text().rsplit(")", 1)[1].split()
        except OSError:  # gone meanwhile
            continue
        if proc == str(pid) or fields[1] == str(pid):
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


@dataclass
class Run:
    messages: int = 0
    requests: int = 0
    seconds: float = 0.0
    latencies: list[float] | None = None
    statuses: Counter[int] | None = None
    cpu: float = math.nan

    @property
    def rate(self) -> float:
        return self.messages / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        values = sorted(self.latencies or [])
        return values[max(0, math.ceil(q / 100 * len(values)) - 1)] if values else math.nan


def send_all(url: str, requests: list[tuple[bytes, dict[str, str], int]], concurrency: int, pid: int) -> Run:
    """POST the pre-signed (body, headers, items) over ``concurrency`` connections; the figures."""
    run = Run(latencies=[], statuses=Counter())
    assert run.latencies is not None
    assert run.statuses is not None
    queue = list(reversed(requests))
    lock = threading.Lock()
    accepted = [0]

    def worker() -> None:
        with httpx.Client(timeout=120.0) as client:
            while True:
                with lock:
                    if not queue:
                        return
                    body, headers, items = queue.pop()
                started = time.perf_counter()
                response = client.post(url, content=body, headers=headers)
                took = time.perf_counter() - started
                if response.status_code == 200 and items > 1:
                    codes = Counter(r["status"] for r in response.json()["results"])
                else:
                    codes = Counter({response.status_code: items})
                with lock:
                    run.latencies.append(took)  # type: ignore[union-attr]
                    run.statuses.update(codes)  # type: ignore[union-attr]
                    accepted[0] += codes.get(202, 0)

    cpu_before, started = cpu_seconds(pid), time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    run.seconds = time.perf_counter() - started
    run.cpu = 100 * (cpu_seconds(pid) - cpu_before) / run.seconds
    run.messages, run.requests = accepted[0], len(requests)
    return run


def inbox_count(database_url: str) -> int:
    engine = create_engine(database_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(text("SELECT count(*) FROM inbox_message")).scalar_one())
    finally:
        engine.dispose()


def bench_node(args: argparse.Namespace, root: Path) -> None:
    urls: list[str] | None = None
    admin = None
    name = f"yipanqi_bench_batch_{uuid6.uuid7().hex[-8:]}"
    if args.backend == "postgres":
        admin = create_engine(args.pg_url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
        sender_url = f"sqlite:///{(root / SENDER[0] / 'yipanqi.db').resolve()}"
        urls = [sender_url, make_url(args.pg_url).set(database=name).render_as_string(hide_password=False)]
    try:
        say(f"[{args.backend}] initialising the node (migrations, keys, directory)")
        sender, node = build_network(root, [SENDER, RECEIVER], free_ports(2), NODE_ENV, urls)
        engine = create_engine(sender.database_url)
        try:
            with Session(engine) as session:
                signer = load_signer(session, sender.data_dir / "keys")
        finally:
            engine.dispose()
        node.start(tied=True, workers=args.workers)
        try:
            assert node.process is not None
            pid = node.process.pid
            info = httpx.get(f"{node.url}/peer/v1/node", timeout=10).json()
            limits = info.get("batch") or {}
            say(f"[{args.backend}] node advertises {info.get('capabilities')} {limits}")
            size = min(args.batch_size, int(limits.get("max_items", 0)))
            if size < 1:
                raise SystemExit("the node does not advertise batches")
            # Warm-up: imports, pools, caches.
            for body in envelopes(signer, args.type, 20):
                httpx.post(
                    f"{node.url}{payload(args.type)[1]}",
                    content=body,
                    headers=signed(signer, payload(args.type)[1], body),
                )
            warm = batch.request_body(envelopes(signer, args.type, size))
            httpx.post(
                f"{node.url}{BATCH_PATH}", content=warm, headers=signed(signer, BATCH_PATH, warm), timeout=120
            )

            bodies = envelopes(signer, args.type, args.messages)
            started = time.perf_counter()
            requests = []
            for start in range(0, len(bodies), size):
                body = batch.request_body(bodies[start : start + size])
                requests.append((body, signed(signer, BATCH_PATH, body), len(bodies[start : start + size])))
            say(
                f"[{args.backend}] {len(requests)} batches of up to {size} signed in"
                f" {time.perf_counter() - started:.1f} s ({len(requests[0][0]):,} bytes each);"
                f" sending over {args.concurrency} connections"
            )
            before = inbox_count(node.database_url)
            run = send_all(f"{node.url}{BATCH_PATH}", requests, args.concurrency, pid)
            stored = inbox_count(node.database_url) - before
            single = None
            if args.singles:
                _type, path, _payload = payload(args.type)
                singles = [
                    (b, signed(signer, path, b), 1) for b in envelopes(signer, args.type, args.singles)
                ]
                single = send_all(f"{node.url}{path}", singles, 4, pid)
        finally:
            node.stop()
    finally:
        if admin is not None:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()
    load = os.getloadavg()
    print(
        f"yipanqi batch bench — {os.cpu_count()} cores, load average {load[0]:.2f}; backend {args.backend};"
        f" {args.type}; one node, {args.workers} uvicorn worker process(es)"
    )
    print(
        f"batch:  {run.messages:,} of {args.messages:,} messages accepted in {run.requests} batches of {size}"
        f" over {args.concurrency} connections, {run.seconds:.2f} s: {run.rate:,.0f} messages/s,"
        f" {run.requests / run.seconds:.2f} batches/s; per batch p50 {run.percentile(50):.2f} s,"
        f" p99 {run.percentile(99):.2f} s; node CPU {run.cpu:.0f}% of a core;"
        f" statuses {dict(run.statuses or {})}"
    )
    print(f"        the node's inbox grew by {stored:,} (expected {args.messages:,})")
    if single is not None:
        print(
            f"single: {single.messages:,} messages one request each over 4 connections,"
            f" {single.seconds:.2f} s: {single.rate:,.0f} messages/s;"
            f" p50 {1000 * single.percentile(50):.1f} ms; node CPU {single.cpu:.0f}%;"
            f" batch/single {run.rate / single.rate:.1f}x"
        )
    if stored != args.messages or run.messages != args.messages:
        raise SystemExit("not every message was accepted and stored once")


# --- in-process breakdown --------------------------------------------------------------------------------


def breakdown(args: argparse.Namespace, root: Path) -> None:
    """Each step of a batch in this process (SQLite), per item."""
    os.environ["YIPANQI_DATA_DIR"] = str(root / "breakdown")
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from service.config import get_settings
    from service.db import get_engine, transaction
    from service.directory.service import KeySpec, add_peer
    from service.exchange.inbox import CheckedItem, accept_batch
    from service.main import PEER_ENDPOINTS
    from service.migrations import upgrade
    from service.signing.http import verify_request
    from service.signing.keys import public_key_text

    get_settings.cache_clear()  # the node's setup above read the settings before YIPANQI_DATA_DIR was set
    get_engine.cache_clear()
    (root / "breakdown").mkdir()
    upgrade(get_engine())
    sender = NodeSigner(SENDER[0], SENDER[1], f"{SENDER[0]}/k1", Ed25519PrivateKey.generate())
    key = Ed25519PrivateKey.generate()
    with Session(get_engine()) as session:
        add_peer(
            session,
            node_id=SENDER[0],
            name=SENDER[1],
            url="http://127.0.0.1:9",
            keys=[KeySpec.parse(f"{sender.keyid}={public_key_text(sender.private_key.public_key())}")],
        )
        session.commit()
    endpoints = {e.message_type: e for e in PEER_ENDPOINTS if not e.synchronous}
    # The node's handlers as they are (a bulk path where the domain has one), the same without the
    # bulk paths (every item's handler in a SAVEPOINT of its own), and handlers that do nothing.
    no_bulk = {t: replace(e, handle_many=None) for t, e in endpoints.items()}
    idle = {
        t: replace(
            e,
            handle=lambda _session, _message: None,
            handle_many=(lambda _session, messages: [None] * len(messages)) if e.handle_many else None,
        )
        for t, e in endpoints.items()
    }
    n = args.batch_size

    def one(handlers: dict[str, Any], profile: bool = False) -> dict[str, float]:
        body = batch.request_body(envelopes(sender, args.type, n))
        headers = signed(sender, BATCH_PATH, body)
        t0 = time.perf_counter()
        sig = verify_request(
            method="POST", path=BATCH_PATH, headers=headers.items(), body=body,
            resolve_key=lambda _k: sender.private_key.public_key(), now=utcnow(),
        )  # fmt: skip
        t1 = time.perf_counter()
        checked = [
            batch.check_item(t, handlers, sig, local_node=RECEIVER[0]) for t in batch.read_items(body, 1000)
        ]
        good = [c for c in checked if isinstance(c, CheckedItem)]
        t2 = time.perf_counter()
        profiler: Any = None
        if profile:
            from pyinstrument import Profiler

            profiler = Profiler()
            profiler.start()
        with transaction() as session:
            outcomes = accept_batch(
                session, good, signature=sig, now=utcnow(), nonce_keep_until=utcnow() + timedelta(minutes=10)
            )
        if profiler is not None:
            profiler.stop()
            print(profiler.output_text(unicode=True, color=False))
        t3 = time.perf_counter()
        answers = [batch.answer_of(o, None) for o in outcomes]
        batch.response_body(answers, key=key, keyid=f"{RECEIVER[0]}/k1", created=utcnow())
        t4 = time.perf_counter()
        assert all(a.status == 202 for a in answers)
        return {"verify": t1 - t0, "check": t2 - t1, "store": t3 - t2, "sign": t4 - t3}

    one(endpoints)  # warm-up
    rounds = [one(endpoints) for _ in range(3)]
    per_item_rounds = [one(no_bulk) for _ in range(3)]
    idle_rounds = [one(idle) for _ in range(3)]

    def per_item(values: list[dict[str, float]], step: str) -> float:
        return float(1e6 * statistics.median(v[step] for v in values) / n)

    real = {s: per_item(rounds, s) for s in ("verify", "check", "store", "sign")}
    bare = per_item(idle_rounds, "store")
    one_by_one = per_item(per_item_rounds, "store")
    total = sum(real.values())
    print(f"breakdown, batch of {n} {args.type} (median of 3, µs per item, in-process, SQLite):")
    print(f"  verify the request's signature  {real['verify']:8.1f}")
    print(f"  read + check the items (rule 8) {real['check']:8.1f}")
    print(
        f"  store (one transaction)         {real['store']:8.1f}"
        f"   of which the domain handler ≈ {real['store'] - bare:.1f}"
    )
    print(f"  store, handler doing nothing    {bare:8.1f}")
    handler = one_by_one - bare
    print(
        f"  store, no bulk path (per item)  {one_by_one:8.1f}   of which the domain handler ≈ {handler:.1f}"
    )
    print(f"  sign every item's answer        {real['sign']:8.1f}")
    print(
        f"  total                           {total:8.1f}  → {1e6 / total:,.0f} items/s on one core;"
        f" {1e6 / (total - real['store'] + bare):,.0f}/s with a free handler"
    )
    if args.profile:
        one(endpoints, profile=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python bench/batch.py", description=__doc__.splitlines()[0])
    parser.add_argument("--messages", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--type", choices=["notification", "verification.request"], default="notification")
    parser.add_argument(
        "--singles", type=int, default=400, help="also send this many one request each (0: not)"
    )
    parser.add_argument("--workers", type=int, default=1, help="yipanqi serve --workers (PostgreSQL only)")
    parser.add_argument("--pg-url", default=os.environ.get("YIPANQI_TEST_DATABASE_URL", DEFAULT_PG))
    parser.add_argument("--breakdown", action="store_true", help="also time each step in this process")
    parser.add_argument("--profile", action="store_true", help="with --breakdown: profile the storing step")
    parser.add_argument("--no-node", action="store_true", help="only the in-process breakdown")
    args = parser.parse_args(argv)
    if not 1 <= args.batch_size <= 1000 or args.messages < 1 or args.concurrency < 1:
        parser.error("--batch-size 1–1000, --messages and --concurrency at least 1")
    root = Path(tempfile.mkdtemp(prefix="yipanqi-bench-batch-"))
    try:
        if not args.no_node:
            bench_node(args, root)
        if args.breakdown or args.no_node:
            breakdown(args, root)
    finally:
        shutil.rmtree(root, ignore_errors=True)  # it holds private keys
    return 0


if __name__ == "__main__":
    sys.exit(main())
