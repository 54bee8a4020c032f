"""End-to-end delivery throughput between two real nodes, relay concurrency 1 against N.

    python bench/relay.py [--messages 200] [--concurrency 4] [--stalled 5]

For each setting: a fresh pair of nodes on 127.0.0.1 (SQLite), both running; the clock runs
from the commit of ``--messages`` 协查 requests into the sender's outbox until every message to
the healthy peer holds a signed receipt. ``--stalled K`` first queues K messages for a peer that accepts
connections and never answers, as a hung proxy does. Prints messages/s and the ratio to
concurrency 1 measured in the same run.
"""

from __future__ import annotations

import argparse
import os
import socket
import tempfile
import time
from pathlib import Path

from sqlalchemy import func
from sqlmodel import Session, select

from service.db import make_engine
from service.directory.service import KeySpec, add_peer
from service.localnet import build_network, free_ports, wait_for
from service.models import OutboxMessage, OutboxStatus, Priority, Topic
from service.signing import pii
from service.signing.node import load_signer
from service.subjects import Subject
from service.verification.schemas import VerificationRequestCreate
from service.verification.service import create_outgoing

SUBJECT = Subject(id_number="411627199503080024", name="王秀英", sex="F", birth_date="1995-03-08")  # type: ignore[arg-type]


def run(messages: int, concurrency: int, stalled: int) -> float:
    root = Path(tempfile.mkdtemp(prefix="yipanqi-bench-"))
    env = {
        "YIPANQI_RELAY_CONCURRENCY": str(concurrency),
        "YIPANQI_RELAY_INTERVAL_SECONDS": "0.05",
        "YIPANQI_RELAY_BATCH_SIZE": "50",
        "YIPANQI_LOG_LEVEL": "WARNING",
        "YIPANQI_PEER_TIMEOUT_SECONDS": "2",
    }
    sender, receiver = build_network(root, [("410105", "金水区"), ("411627", "太康县")], free_ports(2), env)
    engine = make_engine(sender.database_url)
    # A peer that accepts connections and never answers (a hung proxy): each try waits for the timeout.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(1024)
    with Session(engine) as session:
        add_peer(
            session,
            node_id="110105",
            name="朝阳区",
            url=f"http://127.0.0.1:{hung.getsockname()[1]}",
            keys=[KeySpec.parse(receiver.public_key.replace("411627", "110105"))],
        )
        session.commit()
    receiver.start()
    sender.start()
    try:
        with Session(engine) as session:
            signer = load_signer(session, sender.data_dir / "keys")
            recipients = ["110105"] * stalled + ["411627"] * messages  # the hung peer's first
            for i, recipient in enumerate(recipients):
                data = VerificationRequestCreate(
                    recipient=recipient,
                    subject=SUBJECT,
                    topic=Topic.marital_status,
                    priority=Priority.normal,
                    question=f"bench {i}",
                )
                create_outgoing(session, signer, data, "bench")
            session.commit()  # the running relay sees them all at once from here
        start = time.perf_counter()

        def delivered() -> bool:
            with Session(engine) as s:
                count = s.exec(
                    select(func.count()).where(
                        OutboxMessage.status == OutboxStatus.delivered, OutboxMessage.recipient == "411627"
                    )
                ).one()
            return count == messages

        wait_for(delivered, timeout=600, interval=0.05)
        return messages / (time.perf_counter() - start)
    finally:
        sender.stop()
        receiver.stop()
        engine.dispose()
        hung.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--stalled", type=int, default=0, help="messages queued first for a peer that hangs")
    args = parser.parse_args()
    # The nodes take this process's PII key (LocalNode.init), so what it queues is theirs to read.
    os.environ.setdefault("YIPANQI_PII_KEYS", pii.Keyring({1: pii.new_secret()}).dump())
    baseline = run(args.messages, 1, args.stalled)
    other = run(args.messages, args.concurrency, args.stalled)
    print(f"{args.messages} messages to a healthy peer, {args.stalled} queued before them for a hung peer")
    print(f"{'relay concurrency':<20}{'messages/s':>12}{'vs 1':>8}")
    print(f"{1:<20}{baseline:>12.1f}{1.0:>7.2f}x")
    print(f"{args.concurrency:<20}{other:>12.1f}{other / baseline:>7.2f}x")


if __name__ == "__main__":
    main()
