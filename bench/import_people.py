"""Register import throughput: a generated CSV into a fresh database (SQLite and/or PostgreSQL).

    python bench/import_people.py [--rows 100000] [--bad 50] [--batch 1000] [--repeat 3]
                                  [--backend sqlite|postgres|both] [--pg-url URL]

Writes a UTF-8 CSV with Chinese headers (valid ID numbers, ``--bad`` broken rows spread through
it) and imports it with the same importer as ``yipanqi import people`` into a fresh, migrated
database, then imports the same file again (every row is then registered already: nothing may
be stored) and makes a dry run. The baseline is parsing and validating every row without a
database (``read_table`` and ``parse_row``); each repeat measures it right before its imports, so
both see the same machine, and the best of ``--repeat`` runs of each is reported (the machine may
be shared). The ratio stored / validate-only says what storing costs. The bench node (999999) is
neither the rows' host nor their origin, so no arrival notification is queued and no certificate
issued: this is the register alone. PostgreSQL gets a throwaway database per repeat on
``--pg-url``'s server (the account needs CREATEDB), dropped afterwards.
"""

from __future__ import annotations

import argparse
import os
import random
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from pathlib import Path
from typing import NamedTuple

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import create_engine, text
from sqlalchemy.engine import Engine, make_url
from sqlmodel import Session, func, select

from service import idnumbers
from service.db import make_engine
from service.migrations import upgrade
from service.models import Person
from service.people import importer
from service.people.schemas import ImportReport, today
from service.signing.node import NodeSigner

HEADER = "身份证号,姓名,性别,出生日期,户籍地代码,现居住地代码,流入日期,婚姻状况,避孕措施"
ORIGINS = ("411627", "412726", "510722", "130124")
SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗"
GIVEN = "秀英丽华芳敏静强磊军洋勇艳杰娟涛明超霞平刚"


def row(i: int, rng: random.Random) -> str:
    birth = date(1975, 1, 1) + timedelta(days=rng.randrange(365 * 30))
    origin = ORIGINS[i % len(ORIGINS)]
    sex = "F" if i % 3 else "M"
    order = (i % 500) * 2 + (1 if sex == "M" else 0)  # 17th digit odd for men
    first17 = f"{origin}{birth:%Y%m%d}{order:03d}"
    number = first17 + idnumbers.check_character(first17)
    name = rng.choice(SURNAMES) + rng.choice(GIVEN) + rng.choice(GIVEN)
    arrived = date(2020, 1, 1) + timedelta(days=rng.randrange(2000))
    woman = sex == "F" and 15 <= importer_age(birth) <= 49
    extra = "初婚,上环" if woman and i % 2 else ","
    return (
        f"{number},{name},{'女' if sex == 'F' else '男'},{birth:%Y-%m-%d},{origin},410105,{arrived},{extra}"
    )


def importer_age(birth: date) -> int:
    day = today()
    return day.year - birth.year - ((day.month, day.day) < (birth.month, birth.day))


def write_csv(path: Path, rows: int, bad: int, rng: random.Random) -> None:
    lines, seen = [HEADER], set()
    broken = set(rng.sample(range(rows), bad))
    for i in range(rows):
        line = row(i, rng)
        while line.split(",", 1)[0] in seen:  # a random birth date may repeat a number: draw again
            line = row(i, rng)
        seen.add(line.split(",", 1)[0])
        if i in broken:  # a wrong check digit: the row must be refused, nothing of it stored
            digit = line[17]
            line = line[:17] + ("0" if digit != "0" else "1") + line[18:]
        lines.append(line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")


def baseline(content: bytes) -> tuple[int, Timing]:
    """Parse and validate every row, store nothing: rows and time taken."""
    start, cpu = time.perf_counter(), time.process_time()
    table = importer.read_table(content)
    day, rows = today(), 0
    for _line, cells in table.rows:
        importer.parse_row(table.fields, cells, day)
        rows += 1
    return rows, Timing(time.perf_counter() - start, time.process_time() - cpu)


class Timing(NamedTuple):
    wall: float  # seconds
    cpu: float  # CPU seconds of this process (PostgreSQL's own work is not in it)


@contextmanager
def database(backend: str, tmp: Path, pg_url: str) -> Iterator[Engine]:
    """A fresh, migrated database: a SQLite file in ``tmp`` or a throwaway PostgreSQL database."""
    if backend == "sqlite":
        engine = make_engine(f"sqlite:///{tmp / 'bench.db'}")
        upgrade(engine)
        try:
            yield engine
        finally:
            engine.dispose()
        return
    admin = create_engine(pg_url, isolation_level="AUTOCOMMIT")
    name = f"yipanqi_bench_{uuid.uuid4().hex[:12]}_import"
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        engine = make_engine(make_url(pg_url).set(database=name).render_as_string(hide_password=False))
        try:
            upgrade(engine)
            yield engine
        finally:
            engine.dispose()
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


def timed_import(
    engine: Engine, signer: NodeSigner, content: bytes, batch: int, *, dry_run: bool = False
) -> tuple[ImportReport, Timing]:
    start, cpu = time.perf_counter(), time.process_time()
    table = importer.read_table(content)
    report = importer.import_people(signer, table, "bench", engine=engine, dry_run=dry_run, batch_size=batch)
    return report, Timing(time.perf_counter() - start, time.process_time() - cpu)


STEPS = ("parse+validate only", "import (stored)", "same file again", "dry run")


def run_once(
    backend: str, tmp: Path, args: argparse.Namespace, signer: NodeSigner, content: bytes
) -> list[Timing]:
    """The time each of ``STEPS`` took, checking what each stored."""
    rows, base = baseline(content)
    with database(backend, tmp, args.pg_url) as engine:
        report, stored = timed_import(engine, signer, content, args.batch)
        with Session(engine) as session:
            count = session.exec(select(func.count()).select_from(Person)).one()
        assert report.bad == args.bad
        assert count == report.stored == args.rows - args.bad, (count, report.stored)
        again, repeated = timed_import(engine, signer, content, args.batch)
        assert again.stored == 0
        assert again.bad == args.rows  # the bad rows again, and every good one registered already
        dry, dry_seconds = timed_import(engine, signer, content, args.batch, dry_run=True)
        assert (dry.stored, dry.bad) == (0, args.rows)
        with Session(engine) as session:
            assert session.exec(select(func.count()).select_from(Person)).one() == count
    assert rows == report.rows == again.rows == dry.rows
    return [base, stored, repeated, dry_seconds]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bad", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--backend", choices=("sqlite", "postgres", "both"), default="both")
    parser.add_argument(
        "--pg-url",
        default=os.environ.get(
            "YIPANQI_TEST_DATABASE_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
        ),
        help="a PostgreSQL server where the account may CREATE DATABASE (default $YIPANQI_TEST_DATABASE_URL)",
    )
    args = parser.parse_args()
    backends = ("sqlite", "postgres") if args.backend == "both" else (args.backend,)
    signer = NodeSigner("999999", "bench", "999999/k1", Ed25519PrivateKey.generate())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "people.csv"
        write_csv(path, args.rows, args.bad, random.Random(7))
        content = path.read_bytes()
        print(
            f"{args.rows} rows ({args.bad} bad), {len(content) / 1e6:.1f} MB CSV, batches of {args.batch}, "
            f"best of {args.repeat}"
        )
        for backend in backends:
            runs = []
            for i in range(args.repeat):
                folder = Path(tmp) / f"{backend}{i}"
                folder.mkdir()
                runs.append(run_once(backend, folder, args, signer, content))
                ratio = runs[-1][0].wall / runs[-1][1].wall
                times = ", ".join(f"{t.wall:.2f} s" for t in runs[-1])
                print(f"  {backend} run {i + 1}: {times} ({ratio:.2f}x)")
            wall = [min(run[k].wall for run in runs) for k in range(len(STEPS))]
            cpu = [min(run[k].cpu for run in runs) for k in range(len(STEPS))]
            for step, seconds, used in zip(STEPS, wall, cpu, strict=True):
                print(
                    f"[{backend}] {step:<20} {args.rows / seconds:>7,.0f} rows/s ({wall[0] / seconds:.2f}x) "
                    f"in {seconds:5.2f} s; CPU {used:5.2f} s ({cpu[0] / used:.2f}x)"
                )


if __name__ == "__main__":
    main()
