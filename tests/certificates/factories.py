"""Test data for 婚育证明: valid ID numbers, register rows, a node database with its identity."""

from __future__ import annotations

from datetime import date
from typing import Any

from sqlalchemy.engine import Engine
from sqlmodel import Session

from service import idnumbers
from service.db import make_engine
from service.localnet import LocalNode
from service.models import Child, ContraceptionMethod, MaritalStatus, Person, Sex


def id_number(county: str, birth: date, serial: int, sex: str = "F") -> str:
    """A GB 11643-valid number: ``serial`` (0–499) picks the 3-digit sequence, its parity the sex."""
    sequence = serial * 2 + (1 if sex == "M" else 0)
    first17 = f"{county}{birth:%Y%m%d}{sequence:03d}"
    return first17 + idnumbers.check_character(first17)


def person(
    county: str,
    birth: date,
    serial: int,
    *,
    host: str,
    name: str = "王秀英",
    sex: str = "F",
    **fields: Any,
) -> Person:
    values: dict[str, Any] = {
        "marital_status": MaritalStatus.first_marriage,
        "marriage_date": date(birth.year + 24, 5, 1),
        "contraception_method": ContraceptionMethod.iud,
        "contraception_since": date(birth.year + 26, 3, 1),
        **fields,
    }
    return Person(
        id_number=id_number(county, birth, serial, sex),
        name=name,
        sex=Sex(sex),
        birth_date=birth,
        origin_node=county,
        host_node=host,
        **values,
    )


def add(engine: Engine, row: Person, children: int = 0) -> int:
    """Insert ``row`` (and ``children`` children born after the marriage); return its id."""
    with Session(engine) as session:
        session.add(row)
        session.flush()
        assert row.id is not None
        base = row.marriage_date or row.birth_date
        for order in range(1, children + 1):
            born = date(base.year + order, 6, 1)
            session.add(Child(person_id=row.id, birth_order=order, birth_date=born, sex=Sex.M))
        session.commit()
        return row.id


def add_to_node(node: LocalNode, row: Person, children: int = 0) -> int:
    engine = make_engine(node.database_url)
    try:
        return add(engine, row, children)
    finally:
        engine.dispose()
