"""Console pages with large tables: 待办, 已发, a case, the register, the dashboard, 预警.

    python bench/console.py [--backend sqlite|postgres|both] [--cases 100000] [--people 100000]
                            [--notifications 10000] [--small 10000] [--requests 200]
                            [--seconds 6] [--concurrency 4] [--pg-url URL]

For each backend it initialises a node (金水区 410105, as service/localnet.py does; SQLite in a
temporary folder, or a throwaway PostgreSQL database on ``--pg-url``'s server, which needs
CREATEDB), seeds ``--small`` 协查 cases (and the same share of people and 通报) with SQLAlchemy
Core bulk inserts, starts ``yipanqi serve`` (relay off, one process), signs an operator in through
the login form (CSRF cookie and token, then the ``yp_console`` cookie) and times the list pages;
then it seeds the rest up to ``--cases`` / ``--people`` / ``--notifications`` into the running
node's database and times every page. Seeded cases go both ways, to 9 peers, over 13 months;
about 16% of the incoming ones are open (待签收 / 待反馈) with deadlines from 20 days ago to 25
days ahead, so 待办 has thousands of rows; outgoing cases have their outbox message (the 已发
list joins it). One incoming case gets a request received and an ack sent (its history).

The requests come from a separate process (this file with ``--client``: one asyncio httpx
client, keep-alive): up to ``--requests`` sequential requests per page, then up to the same number
over ``--concurrency`` connections, each mode stopped after ``--seconds`` (at least 12 requests).
The baseline, on the same server in the same run, is
``GET /healthz`` (no database, no template): it also shows what the client and the server's
HTTP layer cost, and the client's own CPU is printed. Each page's p50/p95/p99 (ms) and its p50
over the baseline's are printed with the rows seeded, the backend, the cores and load average.
Servers are stopped, the folder removed and the database dropped at the end, also on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import html
import json
import os
import random
import re
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))

DEFAULT_PG = "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
NODE = ("410105", "金水区")
PEERS = ["411627", "412726", "510722", "130124", "411502", "410326", "411702", "411324", "412826"]
TOPICS = ["marital_status", "contraception", "birth_registration", "reward_eligibility", "record_accuracy"]
KINDS = ["contraception", "pregnancy", "birth", "health_check", "arrival", "departure"]
SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗"
GIVEN = "秀英丽华芳敏静强磊军洋勇艳杰娟涛明超霞平刚"
NODE_ENV = {
    "YIPANQI_RELAY_ENABLED": "false",
    "YIPANQI_LOG_LEVEL": "WARNING",
    # The SLA sweep runs once at start (the seed's overdue items already carry overdue_at), then
    # not again during the bench: its writes would land in the middle of the timings.
    "YIPANQI_SWEEP_INTERVAL_SECONDS": "86400",
}
CHUNK = 5000
MIN_REQUESTS = 12  # per page and mode, whatever the time budget


def say(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# --- the client (a separate process) -------------------------------------------------------------


async def _client(spec: dict[str, Any]) -> dict[str, Any]:
    import httpx

    out: dict[str, Any] = {}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    async with httpx.AsyncClient(base_url=spec["base"], cookies=spec["cookies"], limits=limits,
                                 timeout=60.0, follow_redirects=False) as client:  # fmt: skip

        async def one(target: dict[str, Any]) -> float:
            started = time.perf_counter()
            if target["method"] == "GET":
                response = await client.get(target["path"])
            else:
                response = await client.post(target["path"], data=target["data"])
            elapsed = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"{target['path']}: {response.status_code} {response.text[:200]}")
            return elapsed * 1000

        for target in spec["targets"]:
            for _ in range(spec["warmup"]):
                await one(target)
            budget = spec["seconds"]
            seq: list[float] = []
            until = time.perf_counter() + budget
            while len(seq) < spec["n"] and (len(seq) < MIN_REQUESTS or time.perf_counter() < until):
                seq.append(await one(target))
            conc: list[float] = []
            ends = time.perf_counter() + budget

            async def worker(
                count: int, target: dict[str, Any] = target, into: list[float] = conc, until: float = ends
            ) -> None:
                done = 0
                while done < count and (done < MIN_REQUESTS // 4 or time.perf_counter() < until):
                    into.append(await one(target))
                    done += 1

            k = spec["concurrency"]
            started = time.perf_counter()
            await asyncio.gather(*(worker(spec["n"] // k) for _ in range(k)))
            wall = time.perf_counter() - started
            out[target["name"]] = {"seq": seq, "conc": conc, "conc_rps": len(conc) / wall}
    return out


def client_main() -> None:
    spec = json.loads(sys.stdin.read())
    cpu, wall = time.process_time(), time.perf_counter()
    results = asyncio.run(_client(spec))
    results["_client"] = {"cpu": time.process_time() - cpu, "wall": time.perf_counter() - wall}
    print(json.dumps(results))


def run_client(spec: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--client"],
        input=json.dumps(spec), capture_output=True, text=True, check=False,
    )  # fmt: skip
    if done.returncode != 0:
        raise RuntimeError(f"client failed: {done.stderr[-2000:]}")
    result: dict[str, Any] = json.loads(done.stdout)
    return result


# --- seeding ------------------------------------------------------------------------------------


def _id_number(i: int, origin: str) -> tuple[str, date, str]:
    from service import idnumbers

    birth = date(1970, 1, 1) + timedelta(days=(i // 1000) * 7 % 12000)
    order = i % 1000
    first17 = f"{origin}{birth:%Y%m%d}{order:03d}"
    return first17 + idnumbers.check_character(first17), birth, "M" if order % 2 else "F"


def _name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN)


def person_rows(start: int, stop: int, now: datetime) -> Iterator[dict[str, Any]]:
    rng = random.Random(start)
    for i in range(start, stop):
        origin = PEERS[i % len(PEERS)]
        number, birth, sex = _id_number(i, origin)
        yield {
            "id_number": number, "name": _name(rng), "sex": sex, "birth_date": birth,
            "origin_node": origin, "host_node": NODE[0],
            "arrived_on": date(2020, 1, 1) + timedelta(days=rng.randrange(2000)), "departed_on": None,
            "marital_status": "first_marriage" if sex == "F" else None, "marriage_date": None,
            "contraception_method": "iud" if sex == "F" and i % 2 else None, "contraception_since": None,
            "merged_into": None, "created_at": now, "updated_at": now, "updated_by": "bench",
        }  # fmt: skip


def case_rows(start: int, stop: int, now: datetime) -> Iterator[tuple[dict[str, Any], dict[str, Any] | None]]:
    """A case and, for an outgoing one, its request's outbox row."""
    rng = random.Random(1_000_000 + start)
    for i in range(start, stop):
        incoming = i % 2 == 0
        peer = PEERS[rng.randrange(len(PEERS))]
        number, birth, sex = _id_number(i, peer)
        roll = rng.random()
        if roll < 0.16:  # open: sent in the last 5 weeks, due from 20 days ago to 25 days ahead
            due = now + timedelta(days=rng.uniform(-20, 25))
            status = ("received" if roll < 0.08 else "acknowledged") if incoming else (
                "queued" if roll < 0.02 else "delivered")  # fmt: skip
        else:  # answered, over the last 13 months
            due = now - timedelta(days=rng.uniform(0, 395))
            status = "answered"
        received = None if status == "queued" else due - timedelta(days=15)
        sent = (received or due - timedelta(days=15)) - timedelta(minutes=rng.randrange(1, 120))
        acked = None
        if received is not None and status in ("acknowledged", "answered"):
            acked = received + timedelta(hours=rng.randrange(1, 72))
        answered = None if status != "answered" else due - timedelta(hours=rng.randrange(-72, 300))
        message_id = str(uuid.UUID(int=rng.getrandbits(128), version=4))
        case = {
            "request_message_id": message_id, "direction": "incoming" if incoming else "outgoing",
            "peer": peer, "status": status, "subject_id_number": number, "subject_name": _name(rng),
            "subject_sex": sex, "subject_birth_date": birth, "topic": TOPICS[i % len(TOPICS)],
            "priority": "urgent" if rng.random() < 0.2 else "normal", "key_target": rng.random() < 0.1,
            "question": "请核实该对象婚育情况。", "reference": None, "sent_at": sent,
            "received_at": received, "due_at": due, "acknowledged_at": acked, "promised_by": None,
            "answered_at": answered, "reply_received_at": answered,
            "outcome": "confirmed" if answered else None,
            "overdue_at": due if status != "answered" and due < now else None,
            "findings": "经核实，情况属实。" if answered else None,
            "created_by": None if incoming else "bench",
            "assigned_to": None, "updated_at": answered or sent, "chased_at": None, "chased_by": None,
        }  # fmt: skip
        outbox = None
        if not incoming:
            outbox = {
                "message_id": message_id, "type": "verification.request", "recipient": peer,
                "path": "/peer/v1/verification-requests", "conversation_id": message_id,
                "body": b'{"payload":{"question":"\\u8bf7\\u6838\\u5b9e"}}', "digest": "sha-256=:bench:",
                "status": "pending" if status == "queued" else "delivered", "attempts": 1,
                "next_attempt_at": sent, "created_at": sent, "delivered_at": received,
            }  # fmt: skip
        yield case, outbox


def notification_rows(start: int, stop: int, now: datetime) -> Iterator[dict[str, Any]]:
    rng = random.Random(2_000_000 + start)
    for i in range(start, stop):
        incoming = i % 2 == 0
        peer = PEERS[rng.randrange(len(PEERS))]
        number, birth, sex = _id_number(i + 500_000, peer)
        open_ = rng.random() < 0.15
        due = now + timedelta(days=rng.uniform(-10, 10) if open_ else -rng.uniform(0, 395))
        status = ("received" if incoming else "delivered") if open_ else "acknowledged"
        received = due - timedelta(days=7)
        ack = None if open_ else due - timedelta(hours=rng.randrange(-48, 150))
        yield {
            "message_id": str(uuid.UUID(int=rng.getrandbits(128), version=4)),
            "direction": "incoming" if incoming else "outgoing", "peer": peer,
            "kind": KINDS[i % len(KINDS)], "status": status, "subject_id_number": number,
            "subject_name": _name(rng), "subject_sex": sex, "subject_birth_date": birth,
            "occurred_on": received.date(), "details": "{}", "person_id": None,
            "sent_at": received - timedelta(minutes=5), "received_at": received, "due_at": due,
            "acknowledged_at": ack, "ack_received_at": ack, "auto_acknowledged": False,
            "overdue_at": due if open_ and due < now else None, "created_by": None, "assigned_to": None,
            "updated_at": ack or received,
        }  # fmt: skip


def _chunks(rows: Iterator[Any]) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) >= CHUNK:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def seed(url: str, counts: tuple[int, int, int], start: tuple[int, int, int], now: datetime) -> float:
    """Insert cases, people and 通报 from ``start`` up to ``counts`` (SQLAlchemy Core, executemany)."""
    from sqlalchemy import insert

    from service.db import make_engine
    from service.models import Notification, OutboxMessage, Person, VerificationCase

    started = time.perf_counter()
    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            for chunk in _chunks(case_rows(start[0], counts[0], now)):
                conn.execute(insert(VerificationCase), [c for c, _o in chunk])
                outbox = [o for _c, o in chunk if o is not None]
                if outbox:
                    conn.execute(insert(OutboxMessage), outbox)
            for people in _chunks(person_rows(start[1], counts[1], now)):
                conn.execute(insert(Person), people)
            for notices in _chunks(notification_rows(start[2], counts[2], now)):
                conn.execute(insert(Notification), notices)
        if engine.dialect.name == "postgresql":  # autovacuum would do it soon after such a load
            with engine.connect() as conn:
                conn.exec_driver_sql("ANALYZE")
    finally:
        engine.dispose()
    return time.perf_counter() - started


def add_history(url: str, now: datetime) -> int:
    """An open incoming case with its request received and an ack sent: the case page's example."""
    from sqlalchemy import insert, select

    from service.db import make_engine
    from service.models import CaseStatus, Direction, InboxMessage, OutboxMessage, VerificationCase

    engine = make_engine(url)
    try:
        with engine.begin() as conn:
            case_id, message_id, peer = conn.execute(
                select(VerificationCase.id, VerificationCase.request_message_id, VerificationCase.peer)
                .where(VerificationCase.direction == Direction.incoming,
                       VerificationCase.status == CaseStatus.acknowledged)
                .order_by(VerificationCase.id).limit(1)
            ).one()  # fmt: skip
            body = json.dumps({"payload": {"question": "请核实该对象婚育情况。"}}).encode()
            conn.execute(insert(InboxMessage), [{
                "message_id": message_id, "type": "verification.request", "sender": peer,
                "conversation_id": message_id, "body": body, "digest": "sha-256=:bench:",
                "keyid": f"{peer}/k1", "signature_input": "sig1=()", "signature": "sig1=:x:",
                "received_at": now - timedelta(days=2), "due_at": now + timedelta(days=13),
            }])  # fmt: skip
            ack = str(uuid.uuid4())
            conn.execute(insert(OutboxMessage), [{
                "message_id": ack, "type": "verification.ack", "recipient": peer,
                "path": "/peer/v1/verification-acks", "conversation_id": message_id,
                "body": json.dumps({"payload": {"promised_by": str(now.date())}}).encode(),
                "digest": "sha-256=:bench:", "status": "pending", "attempts": 0,
                "next_attempt_at": now, "created_at": now - timedelta(days=1),
            }])  # fmt: skip
        return int(case_id)
    finally:
        engine.dispose()


# --- the node ------------------------------------------------------------------------------------


@contextmanager
def pg_database(pg_url: str) -> Iterator[str]:
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    name = f"yipanqi_bench_{uuid.uuid4().hex[:8]}_console"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield make_url(pg_url).set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def sign_in(base: str, username: str, password: str) -> tuple[dict[str, str], str]:
    """The console cookies (``yp_csrf``, ``yp_console``) and the form token, through the login form."""
    import httpx

    with httpx.Client(base_url=base, timeout=30.0) as client:
        page = client.get("/console/login")
        page.raise_for_status()
        match = re.search(r'name="csrftoken" value="([^"]+)"', page.text)
        assert match, "no csrftoken in the login form"
        token = html.unescape(match.group(1))
        answer = client.post("/console/login", data={"csrftoken": token, "username": username,
                                                     "password": password, "next": ""})  # fmt: skip
        assert answer.status_code == 303, (answer.status_code, answer.text[:300])
        cookies = dict(client.cookies.items())
        assert "yp_console" in cookies, list(cookies)
        assert "yp_csrf" in cookies, list(cookies)
        return cookies, token


def next_page(base: str, cookies: dict[str, str], path: str) -> str:
    import httpx

    page = httpx.get(base + path, cookies=cookies, timeout=30.0)
    page.raise_for_status()
    match = re.search(r'href="(/console/[a-z]+\?[^"]*after=[^"]+)"', page.text)
    assert match, f"no 下一页 link on {path}"
    return html.unescape(match.group(1))


# --- report --------------------------------------------------------------------------------------


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def table(backend: str, rows: str, results: dict[str, Any]) -> list[str]:
    base = statistics.median(results["baseline"]["seq"])
    base_c = statistics.median(results["baseline"]["conc"])
    lines = []
    for name, r in results.items():
        if name.startswith("_"):
            continue
        seq, conc = r["seq"], r["conc"]
        s50, s95, s99, c50, c95, c99 = (pct(v, q) for v in (seq, conc) for q in (0.5, 0.95, 0.99))
        lines.append(
            f"{backend:8} {rows:>22} {name:24} | {s50:7.1f} {s95:7.1f} {s99:7.1f} {s50 / base:7.1f}x"
            f" | {c50:7.1f} {c95:7.1f} {c99:7.1f} {c50 / base_c:7.1f}x {r['conc_rps']:7.1f}"
            f" {len(seq):4d}/{len(conc):<4d}"
        )
    c = results["_client"]
    lines.append(f"{'':8} {'':>22} client process: {c['cpu']:.1f} s CPU over {c['wall']:.1f} s "
                 f"({100 * c['cpu'] / c['wall']:.0f}% of a core)")  # fmt: skip
    return lines


HEADER = (
    f"{'backend':8} {'rows seeded':>22} {'page':24} | {'sequential (ms)':^39}"
    f" | {'concurrent (ms)':^39} {'req/s':>7} {'n':>9}\n"
    f"{'':8} {'cases/people/通报':>20} {'':24} | {'p50':>7} {'p95':>7} {'p99':>7} {'×base':>8}"
    f" | {'p50':>7} {'p95':>7} {'p99':>7} {'×base':>8}"
)


def run_backend(backend: str, args: argparse.Namespace, root: Path, stack: ExitStack) -> list[str]:
    from service.localnet import LocalNode, free_ports
    from service.models import Role

    env = dict(NODE_ENV)
    if backend == "postgres":
        env["YIPANQI_DATABASE_URL"] = stack.enter_context(pg_database(args.pg_url))
    node = LocalNode(NODE[0], NODE[1], free_ports(1), root / backend, env)
    say(f"[{backend}] initialising the node")
    node.init(console_logins=True)
    now = datetime.now(UTC)  # real clock: the node it seeds runs on it
    share = args.small / args.cases
    small = (args.small, int(args.people * share), int(args.notifications * share))
    full = (args.cases, args.people, args.notifications)
    say(f"[{backend}] seeding {small[0]:,} cases, {small[1]:,} people, {small[2]:,} 通报")
    seconds = seed(node.database_url, small, (0, 0, 0), now)
    say(f"[{backend}]   {seconds:.1f} s")
    case_id = add_history(node.database_url, now)
    stack.callback(node.stop)
    node.start()
    username, password = node.logins[Role.operator]
    cookies, token = sign_in(node.url, username, password)
    person_number = _id_number(7, PEERS[7 % len(PEERS)])[0]

    def spec(targets: list[tuple[str, str, str, dict[str, str] | None]]) -> dict[str, Any]:
        items = [{"name": n, "method": m, "path": p, "data": d} for n, m, p, d in targets]
        return {"base": node.url, "cookies": cookies, "targets": items, "n": args.requests,
                "concurrency": args.concurrency, "warmup": 3, "seconds": args.seconds}  # fmt: skip

    lists = [
        ("baseline", "GET", "/healthz", None),
        ("pending", "GET", "/console/pending", None),
        ("pending page 2", "GET", next_page(node.url, cookies, "/console/pending"), None),
        ("outgoing", "GET", "/console/outgoing", None),
        ("outgoing page 2", "GET", next_page(node.url, cookies, "/console/outgoing"), None),
    ]
    lines = []
    say(f"[{backend}] timing the lists at {small[0]:,} cases")
    results = run_client(spec(lists))
    lines += table(backend, "/".join(f"{n:,}" for n in small), results)

    say(f"[{backend}] seeding up to {full[0]:,} cases, {full[1]:,} people, {full[2]:,} 通报")
    seconds = seed(node.database_url, full, small, now)
    say(f"[{backend}]   {seconds:.1f} s")
    search = {"csrftoken": token, "by": "id_number", "id_number": person_number}
    pages = [
        ("baseline", "GET", "/healthz", None),
        ("pending", "GET", "/console/pending", None),
        ("pending page 2", "GET", next_page(node.url, cookies, "/console/pending"), None),
        ("pending status=to_reply", "GET", "/console/pending?status=to_reply", None),
        ("pending peer=411627", "GET", "/console/pending?peer=411627", None),
        ("outgoing", "GET", "/console/outgoing", None),
        ("outgoing page 2", "GET", next_page(node.url, cookies, "/console/outgoing"), None),
        ("case (with history)", "GET", f"/console/cases/{case_id}", None),
        ("people", "GET", "/console/people", None),
        ("people search (POST)", "POST", "/console/people/search", search),
        ("stats (dashboard)", "GET", "/console/stats", None),
        ("warnings", "GET", "/console/warnings", None),
    ]
    say(f"[{backend}] timing every page at {full[0]:,} cases")
    results = run_client(spec(pages))
    lines += table(backend, "/".join(f"{n:,}" for n in full), results)
    return lines


def main() -> None:
    if "--client" in sys.argv:
        client_main()
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="sqlite")
    parser.add_argument("--cases", type=int, default=100_000)
    parser.add_argument("--people", type=int, default=100_000)
    parser.add_argument("--notifications", type=int, default=10_000)
    parser.add_argument("--small", type=int, default=10_000, help="cases at the first step")
    parser.add_argument("--requests", type=int, default=200, help="per page, sequential and concurrent")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument(
        "--seconds",
        type=float,
        default=6.0,
        help="time budget per page and mode: stop early (after at least 12 requests)",
    )
    parser.add_argument("--pg-url", default=os.environ.get("YIPANQI_TEST_DATABASE_URL", DEFAULT_PG))
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    backends = ["sqlite", "postgres"] if args.backend == "both" else [args.backend]
    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    lines: list[str] = []
    with tempfile.TemporaryDirectory(prefix="yipanqi-bench-console-") as tmp:
        for backend in backends:
            with ExitStack() as stack:
                lines += run_backend(backend, args, Path(tmp), stack)
                dropping = ", dropping its database" if backend == "postgres" else ""
                say(f"[{backend}] stopping the node{dropping}")
    print(f"yipanqi console bench — {os.cpu_count()} cores, load average {load_start:.2f} at start, "
          f"{os.getloadavg()[0]:.2f} at end, {time.perf_counter() - started:.0f} s in all")  # fmt: skip
    print(f"up to {args.requests} requests per page sequential, then up to {args.requests} over "
          f"{args.concurrency} connections, each mode stopped after {args.seconds:g} s (n = requests made);\n"
          "one asyncio httpx client process; baseline = GET /healthz on the same node; "
          "×base = p50 / the baseline's p50 in the same mode")  # fmt: skip
    print(HEADER)
    print("-" * 130)
    for line in lines:
        print(line)


if __name__ == "__main__":
    main()
