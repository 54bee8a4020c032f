"""Set-based SQL for the register import: a chunk of records in a few statements, on either backend.

A chunk is a few statements whatever its size: one finds the numbers registered already, one the
look-alikes, one inserts (SQLite: one multi-row ``INSERT … VALUES … ON CONFLICT (id_number) DO
NOTHING RETURNING``, faster there than ``executemany`` or ``json_each``; PostgreSQL: ``COPY``,
then the new ids), where the ORM's bulk path costs a round of SQLAlchemy parameter processing per
row, and with psycopg a prepared execution per row. Look-ups send their keys as one JSON
parameter that the database unpacks (``json_each``, ``json_array_elements_text``).

Each value is first put through its column's own bind processor, so what is stored (SQLite's
date and time text, the enums, the encrypted columns' ciphertext) is exactly what the ORM would have
stored, and the blind indexes are added. Encoding (and so encryption) happens before the write
transaction (``Encoder.encode``); only the statements run inside it. Numbers and names are matched
by their blind indexes (service/signing/pii.py).
"""

from __future__ import annotations

import json
import operator
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from datetime import date, datetime
from functools import lru_cache
from itertools import chain
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Dialect
from sqlmodel import Session

from service.db import READ_ONLY, WriteInReadSession
from service.models import Person
from service.people.schemas import PersonCreate
from service.signing import pii

TABLE = Person.__table__  # type: ignore[attr-defined]
# What a record gives (PersonCreate without its children), then what the import adds.
DATA = tuple(name for name in PersonCreate.model_fields if name != "children")
META = ("created_at", "updated_at", "updated_by")
INDEXES = ("id_number_index", "name_index")
COLUMNS = DATA + META + INDEXES
ORIGIN = COLUMNS.index("origin_node")
BIRTH_DATE = COLUMNS.index("birth_date")
ID_NUMBER = COLUMNS.index("id_number")
NAME = COLUMNS.index("name")
ID_NUMBER_INDEX = COLUMNS.index("id_number_index")
NAME_INDEX = COLUMNS.index("name_index")
assert all(name in TABLE.c for name in COLUMNS)
# Rows per SQLite INSERT: 17 bound values each, well under SQLite's 32,766 (3.32 and later; the
# RETURNING used here needs 3.35).
SQLITE_ROWS_PER_INSERT = 1000

LookalikeKey = tuple[str, date, str]  # the name's blind index, birth date, sex


def _json_default(value: Any) -> str:
    if isinstance(value, date | datetime):  # PostgreSQL's date and time stamp: cast from ISO 8601
        return value.isoformat()
    raise TypeError(f"cannot encode a {type(value).__name__}")


def dumps(value: Any) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=_json_default)


class _Backend(ABC):
    """The three statements of a chunk, in each database's own bulk form."""

    @abstractmethod
    def insert(self, session: Session, rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, int]]: ...

    @abstractmethod
    def existing(self, session: Session, id_numbers: Sequence[str]) -> list[tuple[str, int]]: ...

    @abstractmethod
    def lookalikes(self, session: Session, keys: list[list[Any]]) -> list[tuple[int, str, date, Any]]: ...


class _SQLite(_Backend):
    _ROW = "(" + ", ".join("?" * len(COLUMNS)) + ")"
    _EXISTING = text(
        "SELECT id_number_index, id FROM person WHERE id_number_index IN (SELECT value FROM json_each(:ids))"
    ).columns(TABLE.c.id_number_index, TABLE.c.id)
    # CROSS JOIN keeps the keys as the outer loop: one seek of ix_person_lookalike per key (the
    # row-value form "(name, birth_date) IN (VALUES …)" scans the whole index instead).
    _LOOKALIKES = text(
        "WITH k(name_index, birth_date) AS "
        "(SELECT json_extract(value, '$[0]'), json_extract(value, '$[1]') FROM json_each(:keys)) "
        "SELECT p.id, p.name_index, p.birth_date, p.sex FROM k CROSS JOIN person AS p "
        "ON p.name_index = k.name_index AND p.birth_date = k.birth_date WHERE p.merged_into IS NULL"
    ).columns(TABLE.c.id, TABLE.c.name_index, TABLE.c.birth_date, TABLE.c.sex)

    def insert(self, session: Session, rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, int]]:
        connection = session.connection()
        found: list[tuple[str, int]] = []
        for start in range(0, len(rows), SQLITE_ROWS_PER_INSERT):
            page = rows[start : start + SQLITE_ROWS_PER_INSERT]
            values = tuple(chain.from_iterable(page))
            result = connection.exec_driver_sql(self._insert(len(page)), values)
            found += [(number, pid) for number, pid in result]
        return found

    @staticmethod
    @lru_cache(maxsize=4)  # the full page, mostly; a chunk's last page has its own length
    def _insert(rows: int) -> str:
        return (
            f"INSERT INTO person ({', '.join(COLUMNS)}) VALUES {', '.join([_SQLite._ROW] * rows)} "
            "ON CONFLICT (id_number_index) DO NOTHING RETURNING id_number_index, id"
        )

    def existing(self, session: Session, id_numbers: Sequence[str]) -> list[tuple[str, int]]:
        return list(session.execute(self._EXISTING, {"ids": dumps(list(id_numbers))}).all())

    def lookalikes(self, session: Session, keys: list[list[Any]]) -> list[tuple[int, str, date, Any]]:
        return list(session.execute(self._LOOKALIKES, {"keys": dumps(keys)}).all())


class _PostgreSQL(_Backend):
    # COPY is PostgreSQL's bulk path (the rows are buffered into multi-row heap inserts): about half
    # the server's time of an INSERT … SELECT FROM json_to_recordset(…) here, and psycopg's COPY
    # costs the client next to nothing. It has no ON CONFLICT: the numbers registered already are
    # looked up first in the same transaction, and a number a concurrent import registered in
    # between fails the chunk with ``Conflict`` (the caller runs the chunk again).
    _COPY = f"COPY person ({', '.join(COLUMNS)}) FROM STDIN"
    _IDS = text(
        "SELECT id_number_index, id FROM person "
        "WHERE id_number_index IN (SELECT json_array_elements_text(CAST(:ids AS json)))"
    ).columns(TABLE.c.id_number_index, TABLE.c.id)
    _LOOKALIKES = text(
        "SELECT p.id, p.name_index, p.birth_date, p.sex "
        "FROM json_to_recordset(CAST(:keys AS json)) AS k(name_index text, birth_date date) "
        "JOIN person AS p ON p.name_index = k.name_index AND p.birth_date = k.birth_date "
        "WHERE p.merged_into IS NULL"
    ).columns(TABLE.c.id, TABLE.c.name_index, TABLE.c.birth_date, TABLE.c.sex)

    def insert(self, session: Session, rows: Sequence[tuple[Any, ...]]) -> list[tuple[str, int]]:
        import psycopg  # the PostgreSQL driver, there only when PostgreSQL is used

        driver = session.connection().connection.driver_connection  # in the session's transaction
        assert driver is not None
        try:
            with driver.cursor() as cursor, cursor.copy(self._COPY) as copy:
                for row in rows:
                    copy.write_row(row)
        except psycopg.errors.UniqueViolation:
            # Its message names the number (personal data): not passed on.
            raise Conflict("a number of this chunk was registered meanwhile") from None
        except psycopg.Error as exc:  # its message may quote a row (personal data)
            raise RuntimeError(f"copying the chunk failed (SQLSTATE {exc.sqlstate})") from None
        return self.existing(session, [row[ID_NUMBER_INDEX] for row in rows])

    def existing(self, session: Session, id_numbers: Sequence[str]) -> list[tuple[str, int]]:
        return list(session.execute(self._IDS, {"ids": dumps(list(id_numbers))}).all())

    def lookalikes(self, session: Session, keys: list[list[Any]]) -> list[tuple[int, str, date, Any]]:
        payload = dumps([{"name_index": name, "birth_date": birth} for name, birth in keys])
        return list(session.execute(self._LOOKALIKES, {"keys": payload}).all())


class Conflict(Exception):
    """A concurrent import registered one of the chunk's numbers after it was checked (PostgreSQL)."""


class Encoder:
    """Records → the values of ``COLUMNS`` as the database stores them, and the statements."""

    def __init__(self, dialect: Dialect) -> None:
        if dialect.name == "sqlite":
            self.backend: _Backend = _SQLite()
        elif dialect.name == "postgresql":
            self.backend = _PostgreSQL()
        else:
            raise ValueError(f"the register import supports SQLite and PostgreSQL, not {dialect.name}")
        self._processors: dict[int, Callable[[Any], Any]] = {}
        for i, name in enumerate(COLUMNS):
            processor = TABLE.c[name].type.dialect_impl(dialect).bind_processor(dialect)
            if processor is not None:
                self._processors[i] = processor
        # The stored form of each value seen, by column (dates and enum members: few distinct ones);
        # never an encrypted column's (each value has its own nonce).
        self._encrypted = [
            i for i in self._processors if isinstance(TABLE.c[COLUMNS[i]].type, pii.ENCRYPTED_TYPES)
        ]
        self._memos = [
            (i, dict[Any, Any]()) for i in self._processors if i < len(DATA) and i not in self._encrypted
        ]
        self._get = operator.attrgetter(*DATA)

    def meta(self, now: datetime, staff_username: str) -> tuple[Any, ...]:
        """The stored ``META`` columns of a chunk: its time stamps and who imported it."""
        values = (now, now, staff_username)
        processors = [self._processors.get(len(DATA) + j) for j in range(len(META))]
        return tuple(v if p is None else p(v) for p, v in zip(processors, values, strict=True))

    def encode(self, record: PersonCreate, meta: tuple[Any, ...]) -> tuple[Any, ...]:
        """The stored ``COLUMNS`` of a record: plain values only (a tuple the garbage collector skips)."""
        values = list(self._get(record))
        if values[ORIGIN] is None:  # the number's first 6 digits
            values[ORIGIN] = record.id_number[:6]
        indexes = (pii.blind_index(record.id_number, pii.ID_NUMBER), pii.blind_index(record.name, pii.NAME))
        for i, memo in self._memos:
            value = values[i]
            if value is not None:
                stored = memo.get(value)
                if stored is None:
                    stored = memo[value] = self._processors[i](value)
                values[i] = stored
        for i in self._encrypted:
            if values[i] is not None:
                values[i] = self._processors[i](values[i])
        return (*values, *meta, *indexes)


def insert(
    session: Session, encoder: Encoder, rows: Sequence[tuple[Any, ...]], id_numbers: Sequence[str]
) -> dict[str, int]:
    """Insert ``rows`` (encoded; ``id_numbers`` their numbers, in order); ID number → new record id
    for those inserted. A number that is registered already (by a concurrent import on PostgreSQL)
    is skipped, not an error."""
    if session.info.get(READ_ONLY):  # a textual INSERT is not seen by the read session's own guard
        raise WriteInReadSession("the import stores in `with transaction() as session:`")
    if not rows:
        return {}
    number_of = {row[ID_NUMBER_INDEX]: number for row, number in zip(rows, id_numbers, strict=True)}
    return {number_of[index]: pid for index, pid in encoder.backend.insert(session, rows)}


def existing(session: Session, encoder: Encoder, number_of: dict[str, str]) -> dict[str, int]:
    """ID number → record id, for the numbers already registered, given by blind index → number
    (one query, by blind index)."""
    if not number_of:
        return {}
    return {number_of[index]: pid for index, pid in encoder.backend.existing(session, list(number_of))}


def lookalikes(
    session: Session, encoder: Encoder, rows: Iterable[tuple[Any, ...]]
) -> dict[LookalikeKey, list[int]]:
    """(name index, birth_date, sex) → ids (ascending) of unmerged records with the name and birth
    date of one of ``rows`` (encoded, as ``Encoder.encode`` gives them; one query)."""
    wanted = sorted({(row[NAME_INDEX], row[BIRTH_DATE]) for row in rows})
    if not wanted:
        return {}
    found: dict[LookalikeKey, list[int]] = {}
    for pid, name, birth, sex in encoder.backend.lookalikes(session, [list(key) for key in wanted]):
        found.setdefault((name, birth, str(sex)), []).append(pid)
    for ids in found.values():
        ids.sort()
    return found
