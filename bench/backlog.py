"""A backlog relayed between two real nodes: messages/s end to end, in batches and one by one.

    python bench/backlog.py [--messages 100000] [--singles 2000] [--backend sqlite|postgres]
                            [--type notification|verification.request] [--keep]
                            [--set NAME=VALUE ...]

For each run, a fresh pair of nodes on 127.0.0.1 (金水区 410105 sends to 太康县 411627, each a
``yipanqi serve`` process of its own, one uvicorn worker, settings at their defaults but for the log
level and any ``--set``): ``--messages`` outgoing 通报 (arrival) or 协查 requests are queued in the
sender's outbox with both nodes stopped, the way staff create them (``create_outgoing``, committed
2,000 at a time); then the receiver is started, then the sender, whose relay finds the whole backlog due.
The run ends when every message to the receiver holds a signed receipt. Then the bench checks
exactly-once: the sender's outbox has every message delivered, and the receiver holds each one
exactly once (its inbox and its 通报 or 协查 table, by message_id).

Figures: messages/s = messages / (last delivery − first delivery), from the sender's own
``delivered_at`` of each message (the drain rate, startup excluded), and the same over the whole
run from the sender's start (startup included). The baseline is the same relay with batches off
(``YIPANQI_RELAY_BATCH_ENABLED=false``: one signed request per message) on ``--singles`` messages,
in the same session; batch / single is the ratio of the two drain rates. Node CPU is each node
process's user + system time over the run, % of one core (/proc). On PostgreSQL, the two nodes
use two throwaway databases on ``--pg-url``.

The load here is the two nodes themselves on the machine's two cores (the receiver stores and
signs while the sender verifies and records), so no separate load generator process is needed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import uuid6
from sqlalchemy import create_engine, func, text
from sqlalchemy.engine import make_url
from sqlmodel import Session, select

from service.clock import utcnow
from service.db import make_engine, read_session
from service.localnet import LocalNode, build_network, free_ports, stop_all, wait_for
from service.models import (
    Direction,
    InboxMessage,
    Notification,
    OutboxMessage,
    OutboxStatus,
    VerificationCase,
)
from service.notifications.schemas import NotificationCreate
from service.notifications.service import create_outgoing as create_notification
from service.signing import pii
from service.signing.node import load_signer
from service.sla.deadlines import SHANGHAI
from service.subjects import Subject
from service.verification.schemas import VerificationRequestCreate
from service.verification.service import create_outgoing as create_request

SENDER, RECEIVER = ("410105", "金水区"), ("411627", "太康县")
DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
SUBJECT = Subject(id_number="411627199503080024", name="王秀英", sex="F", birth_date="1995-03-08")  # type: ignore[arg-type]
CHUNK = 2000


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Result:
    messages: int
    drain: float  # messages/s, first to last delivery
    whole: float  # messages/s, from the sender's start
    sender_cpu: float  # % of one core over the run
    receiver_cpu: float
    queued_seconds: float


@contextmanager
def databases(backend: str, pg_url: str) -> Iterator[list[str]]:
    """Environment for the two nodes: nothing on SQLite (each its own file), two throwaway
    PostgreSQL databases otherwise, dropped afterwards."""
    if backend == "sqlite":
        yield []
        return
    server = make_url(pg_url)
    admin = create_engine(server, isolation_level="AUTOCOMMIT")
    names = [f"yipanqi_backlog_{uuid6.uuid7().hex[-10:]}_{n}" for n in ("sender", "receiver")]
    with admin.connect() as conn:
        for name in names:
            conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield [server.set(database=name).render_as_string(hide_password=False) for name in names]
    finally:
        with admin.connect() as conn:
            for name in names:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def queue(node: LocalNode, kind: str, count: int) -> None:
    engine = make_engine(node.database_url)
    day = utcnow().astimezone(SHANGHAI).date() - timedelta(days=1)
    try:
        with Session(engine) as session:
            signer = load_signer(session, node.data_dir / "keys")
        for start in range(0, count, CHUNK):
            with Session(engine) as session:
                for i in range(start, min(start + CHUNK, count)):
                    if kind == "notification":
                        create_notification(
                            session,
                            signer,
                            NotificationCreate(
                                recipient=RECEIVER[0],
                                subject=SUBJECT,
                                kind="arrival",
                                occurred_on=day,
                                details={"arrived_on": day},
                            ),
                            "bench",
                        )
                    else:
                        create_request(
                            session,
                            signer,
                            VerificationRequestCreate(
                                recipient=RECEIVER[0],
                                subject=SUBJECT,
                                topic="marital_status",
                                priority="normal",
                                question=f"bench {i}",
                            ),
                            "bench",
                        )
                session.commit()
    finally:
        engine.dispose()


def delivered_span(node: LocalNode) -> tuple[int, datetime | None, datetime | None]:
    engine = make_engine(node.database_url)
    try:
        with read_session(engine) as session:
            query = select(
                func.count(), func.min(OutboxMessage.delivered_at), func.max(OutboxMessage.delivered_at)
            ).where(OutboxMessage.status == OutboxStatus.delivered, OutboxMessage.recipient == RECEIVER[0])
            count, first, last = session.exec(query).one()
            return int(count), first, last
    finally:
        engine.dispose()


def check_exactly_once(sender: LocalNode, receiver: LocalNode, kind: str, count: int) -> None:
    """Every message delivered, and stored at the receiver once (inbox and domain table)."""
    engines = [make_engine(sender.database_url), make_engine(receiver.database_url)]
    try:
        with read_session(engines[0]) as session:
            sent = set(
                session.exec(
                    select(OutboxMessage.message_id).where(OutboxMessage.recipient == RECEIVER[0])
                ).all()
            )
            undelivered = session.exec(
                select(func.count()).where(
                    OutboxMessage.recipient == RECEIVER[0], OutboxMessage.status != OutboxStatus.delivered
                )
            ).one()
        table = Notification if kind == "notification" else VerificationCase
        with read_session(engines[1]) as session:
            inbox = session.exec(
                select(InboxMessage.message_id).where(InboxMessage.sender == SENDER[0])
            ).all()
            stored = session.exec(
                select(table.message_id).where(table.direction == Direction.incoming)  # type: ignore[attr-defined]
            ).all()
    finally:
        for engine in engines:
            engine.dispose()
    problems = []
    if len(sent) != count or undelivered:
        problems.append(f"sender: {len(sent)} queued, {undelivered} not delivered")
    for name, ids in (("inbox", inbox), (table.__name__, stored)):
        if len(ids) != len(set(ids)):
            problems.append(f"receiver {name}: {len(ids) - len(set(ids))} duplicates")
        if set(ids) != sent:
            problems.append(
                f"receiver {name}: {len(sent - set(ids))} missing, {len(set(ids) - sent)} unexpected"
            )
    if problems:
        raise SystemExit("exactly-once check failed: " + "; ".join(problems))


def run(
    kind: str,
    count: int,
    *,
    batches: bool,
    backend: str,
    pg_url: str,
    keep: bool,
    settings: dict[str, str] | None = None,
) -> Result:
    root = Path(tempfile.mkdtemp(prefix="yipanqi-backlog-"))
    env = {"YIPANQI_LOG_LEVEL": "WARNING", "YIPANQI_RELAY_BATCH_ENABLED": "true" if batches else "false"}
    env.update(settings or {})
    try:
        with databases(backend, pg_url) as urls:
            sender, receiver = build_network(
                root, [SENDER, RECEIVER], free_ports(2), env, database_urls=urls or None
            )
            began = time.perf_counter()
            queue(sender, kind, count)
            queued_seconds = time.perf_counter() - began
            say(f"  queued {count:,} in {queued_seconds:.1f} s; starting the nodes")
            try:
                receiver.start(root / "receiver.log")
                start = time.perf_counter()
                sender.start(root / "sender.log")
                assert sender.process is not None
                assert receiver.process is not None
                cpu0 = cpu_seconds(sender.process.pid), cpu_seconds(receiver.process.pid)
                wait_for(lambda: delivered_span(sender)[0] == count, timeout=3600, interval=0.5)
                elapsed = time.perf_counter() - start
                cpu1 = cpu_seconds(sender.process.pid), cpu_seconds(receiver.process.pid)
                done, first, last = delivered_span(sender)
            finally:
                stop_all([sender, receiver])
            check_exactly_once(sender, receiver, kind, count)
            assert first is not None
            assert last is not None
            span = max((last - first).total_seconds(), 1e-3)
            return Result(
                count,
                (done - 1) / span if done > 1 else float("nan"),
                done / elapsed,
                100 * (cpu1[0] - cpu0[0]) / elapsed,
                100 * (cpu1[1] - cpu0[1]) / elapsed,
                queued_seconds,
            )
    finally:
        if keep:
            say(f"  kept {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--messages", type=int, default=100_000)
    parser.add_argument("--singles", type=int, default=2_000)
    parser.add_argument("--backend", choices=["sqlite", "postgres"], default="sqlite")
    parser.add_argument("--type", choices=["notification", "verification.request"], default="notification")
    parser.add_argument("--pg-url", default=os.environ.get("YIPANQI_TEST_DATABASE_URL", DEFAULT_PG))
    parser.add_argument("--keep", action="store_true", help="keep the nodes' folder (logs, databases)")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="a setting for both nodes (README, Configuration), e.g. YIPANQI_RELAY_PEER_CONCURRENCY=8",
    )
    args = parser.parse_args()
    if not all(item.startswith("YIPANQI_") and "=" in item for item in args.set):
        parser.error("--set takes a node setting, YIPANQI_...=VALUE")
    settings = dict(item.split("=", 1) for item in args.set)
    # The nodes take this process's PII key (LocalNode.init), so what it queues is theirs to read.
    os.environ.setdefault("YIPANQI_PII_KEYS", pii.Keyring({1: pii.new_secret()}).dump())
    rows = []
    for label, batches, count in (("single", False, args.singles), ("batch", True, args.messages)):
        say(f"{label}: {count:,} {args.type} on {args.backend}")
        rows.append(
            (
                label,
                run(
                    args.type,
                    count,
                    batches=batches,
                    backend=args.backend,
                    pg_url=args.pg_url,
                    keep=args.keep,
                    settings=settings,
                ),
            )
        )
    load = os.getloadavg()
    print(
        f"yipanqi backlog bench — {os.cpu_count()} cores, load average {load[0]:.2f} at the end; "
        f"{args.type}, {args.backend}; exactly-once checked after each run"
    )
    heads = ("messages", "drain msg/s", "whole msg/s", "sender cpu", "receiver cpu")
    print(f"{'relay':<8}" + "".join(f"{h:>14}" for h in heads))
    for label, r in rows:
        print(
            f"{label:<8}{r.messages:>14,}{r.drain:>14,.0f}{r.whole:>14,.0f}"
            f"{r.sender_cpu:>13.0f}%{r.receiver_cpu:>13.0f}%"
        )
    single, batched = rows[0][1], rows[1][1]
    print(f"batch / single (drain): {batched.drain / single.drain:.1f}x")


if __name__ == "__main__":
    main()
