"""Register import throughput: a generated CSV into a fresh SQLite database, in one process.

    python bench/import_people.py [--rows 100000] [--bad 50] [--batch 1000]

Writes a UTF-8 CSV with Chinese headers (valid ID numbers, ``--bad`` broken rows spread through
it), imports it with the same importer as ``yipanqi import people``, and prints rows/s. The
baseline, measured in the same run, is parsing and validating every row without touching a
database; the ratio says what storing costs on this machine. The bench node (999999) is not the
rows' host, so no arrival notifications are queued: this is the register alone.
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlmodel import Session, func, select

from service import idnumbers
from service.db import make_engine
from service.migrations import upgrade
from service.models import Person
from service.people import importer
from service.people.schemas import today
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


def baseline(content: bytes) -> tuple[int, float]:
    """Parse and validate every row, store nothing: rows and seconds."""
    start = time.perf_counter()
    table = importer.read_table(content)
    day, rows = today(), 0
    for _line, cells in table.rows:
        importer.parse_row(table.fields, cells, day)
        rows += 1
    return rows, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--bad", type=int, default=50)
    parser.add_argument("--batch", type=int, default=1000)
    args = parser.parse_args()
    signer = NodeSigner("999999", "bench", "999999/k1", Ed25519PrivateKey.generate())
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "people.csv"
        write_csv(path, args.rows, args.bad, random.Random(7))
        content = path.read_bytes()
        print(f"{args.rows} rows ({args.bad} bad), {len(content) / 1e6:.1f} MB CSV")
        rows, seconds = baseline(content)
        base = rows / seconds
        print(f"parse+validate only: {rows} rows in {seconds:.1f} s = {base:,.0f} rows/s (1.00x)")
        engine = make_engine(f"sqlite:///{Path(tmp) / 'bench.db'}")
        upgrade(engine)
        with Session(engine, expire_on_commit=False) as session:
            start = time.perf_counter()
            report = importer.import_people(
                session, signer, importer.read_table(content), "bench",
                batch_size=args.batch, commit=session.commit,
            )  # fmt: skip
            session.commit()
            seconds = time.perf_counter() - start
            count = session.exec(select(func.count()).select_from(Person)).one()
        engine.dispose()
    speed = report.rows / seconds
    print(
        f"import into SQLite:  {report.rows} rows in {seconds:.1f} s = {speed:,.0f} rows/s "
        f"({speed / base:.2f}x); stored {report.stored}, bad {report.bad}, in the table {count}"
    )
    assert report.bad == args.bad
    assert count == report.stored == args.rows - args.bad


if __name__ == "__main__":
    main()
