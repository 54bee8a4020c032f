"""The monthly report (月报) over 1,000,000 协查 cases on PostgreSQL, against a plain COUNT(*).

Creates a throwaway database on the server of ``YIPANQI_TEST_DATABASE_URL`` (default: local
``postgres`` with trust auth), migrates it, COPYs ``--cases`` 协查 cases and ``--notifications``
通报 spread evenly over the 12 months of 2026 (10 peers, every topic, both directions), ANALYZEs,
then times ``compute_report`` for October 2026 and, as the same-run baseline, a plain
``SELECT count(*) FROM verification_case``. Prints the EXPLAIN of the report's two GROUP BY
queries (they should walk the (direction, status, due_at) indexes) and drops the database.

    python bench/monthly_report.py [--cases 1000000] [--notifications 200000] [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import make_url
from sqlmodel import Session

from service.clock import clock
from service.db import make_engine
from service.migrations import upgrade
from service.models import LocalNode
from service.sla import rates
from service.sla.report import compute_report

PEERS = [f"4{i:02d}105" for i in range(10)]
TOPICS = ["marital_status", "contraception", "birth_registration", "reward_eligibility", "record_accuracy"]
KINDS = ["contraception", "pregnancy", "birth", "health_check", "arrival", "departure"]
YEAR_START = datetime(2025, 12, 31, 16, 0, tzinfo=UTC)  # 1 January 2026, 00:00 Shanghai


def ts(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def case_rows(n: int, rng: random.Random):  # type: ignore[no-untyped-def]
    for _ in range(n):
        due = YEAR_START + timedelta(days=rng.randrange(1, 366))  # every due_at is a Shanghai midnight
        received = due - timedelta(days=30)
        roll = rng.random()
        reply = None if roll < 0.03 else due - timedelta(hours=rng.randrange(-48, 600))
        direction = "incoming" if rng.random() < 0.5 else "outgoing"
        status = "answered" if reply else ("acknowledged" if direction == "incoming" else "delivered")
        topic = rng.choice(TOPICS)
        outcome = rng.choice(["confirmed", "confirmed", "not_confirmed"]) if reply else None
        yield (
            str(uuid.uuid4()), direction, rng.choice(PEERS), status, "41162719900308002X", "王秀英", "F",
            "1990-03-08", topic, "urgent" if rng.random() < 0.2 else "normal", rng.random() < 0.3, "?",
            ts(received), ts(received), ts(due), None, ts(reply), ts(reply), outcome, ts(received),
        )  # fmt: skip


def notification_rows(n: int, rng: random.Random):  # type: ignore[no-untyped-def]
    for _ in range(n):
        due = YEAR_START + timedelta(days=rng.randrange(1, 366))
        ack = None if rng.random() < 0.03 else due - timedelta(hours=rng.randrange(-48, 600))
        yield (
            str(uuid.uuid4()), "incoming" if rng.random() < 0.5 else "outgoing", rng.choice(PEERS),
            rng.choice(KINDS), "acknowledged" if ack else "received", "41162719900308002X", "王秀英", "F",
            "1990-03-08", "2026-01-01", "{}", ts(due - timedelta(days=30)), ts(due - timedelta(days=30)),
            ts(due), ts(ack), ts(ack), False, ts(due),
        )  # fmt: skip


CASE_COLUMNS = (
    "request_message_id, direction, peer, status, subject_id_number, subject_name, subject_sex, "
    "subject_birth_date, topic, priority, key_target, question, sent_at, received_at, due_at, "
    "acknowledged_at, answered_at, reply_received_at, outcome, updated_at"
)
NOTIFICATION_COLUMNS = (
    "message_id, direction, peer, kind, status, subject_id_number, subject_name, subject_sex, "
    "subject_birth_date, occurred_on, details, sent_at, received_at, due_at, acknowledged_at, "
    "ack_received_at, auto_acknowledged, updated_at"
)


def copy(url: str, table: str, columns: str, rows) -> float:  # type: ignore[no-untyped-def]
    import psycopg

    started = time.perf_counter()
    plain = make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)
    with psycopg.connect(plain) as conn:
        with conn.cursor() as cur, cur.copy(f"COPY {table} ({columns}) FROM STDIN") as out:
            for row in rows:
                out.write_row(row)
        conn.commit()
    return time.perf_counter() - started


def timed(fn, repeat: int) -> float:  # type: ignore[no-untyped-def]
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=1_000_000)
    parser.add_argument("--notifications", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    admin_url = os.environ.get(
        "YIPANQI_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
    )
    admin = create_engine(admin_url, isolation_level="AUTOCOMMIT")
    name = f"yipanqi_bench_{uuid.uuid4().hex[:8]}"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = make_url(admin_url).set(database=name).render_as_string(hide_password=False)
    engine = make_engine(url)
    try:
        upgrade(engine)
        with Session(engine) as session:
            session.add(LocalNode(node_id="410105", name="金水区", active_keyid="410105/k1"))
            session.commit()
        rng = random.Random(4)
        seconds = copy(url, "verification_case", CASE_COLUMNS, case_rows(args.cases, rng))
        print(f"COPY {args.cases:,} cases: {seconds:.1f} s")
        seconds = copy(url, "notification", NOTIFICATION_COLUMNS, notification_rows(args.notifications, rng))
        print(f"COPY {args.notifications:,} notifications: {seconds:.1f} s")
        with engine.begin() as conn:
            conn.execute(text("ANALYZE"))
        clock.freeze(datetime(2026, 11, 2, 1, 0, tzinfo=UTC))
        october = rates.parse_month("2026-10")
        start, end = rates.month_bounds(october)
        with Session(engine) as session:
            for label, query in (
                ("cases", rates.case_counts_query(start, end)),
                ("notifications", rates.notification_counts_query(start, end)),
            ):
                sql = query.compile(dialect=postgresql.dialect(), compile_kwargs={"literal_binds": True})
                plan = session.execute(text(f"EXPLAIN (ANALYZE, BUFFERS OFF, TIMING OFF) {sql}")).all()
                print(f"\nEXPLAIN ({label}):")
                for (line,) in plan:
                    print(f"  {line}")

            def baseline() -> None:
                session.execute(text("SELECT count(*) FROM verification_case")).one()

            report: list[object] = []

            def generate() -> None:
                report[:] = [compute_report(session, "2026-10")]

            base = timed(baseline, args.repeat)
            full = timed(generate, args.repeat)
        rows = report[0].rows  # type: ignore[attr-defined]
        headline = next(r for r in rows if r.metric == "feedback_rate" and r.dimension == "all")
        print(f"\n{args.cases:,} cases, {args.notifications:,} notices; 2026-10 report: {len(rows)} rows")
        print(f"  feedback_rate incoming: {headline.numerator}/{headline.denominator}")
        print(f"| step | median of {args.repeat} | vs baseline |")
        print("|---|---:|---:|")
        print(f"| SELECT count(*) FROM verification_case | {base * 1000:.0f} ms | 1.00x |")
        print(f"| compute_report('2026-10') | {full * 1000:.0f} ms | {full / base:.2f}x |")
    finally:
        clock.reset()
        engine.dispose()
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


if __name__ == "__main__":
    main()
