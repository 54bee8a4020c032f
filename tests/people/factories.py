"""Test data for the register: valid ID numbers and rows, a throwaway database, a signer."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from service import idnumbers
from service.db import make_engine
from service.models import Peer
from service.signing.node import NodeSigner

HERE = "410105"  # 金水区, the host in these tests
ORIGIN = "411627"  # 太康县


def id_number(region: str, birth: date, seq: int, sex: str) -> str:
    """A valid 18-character number; ``seq`` 0..49 gives distinct numbers for the same birth date."""
    order = 2 * seq + (1 if sex == "M" else 0)
    first17 = f"{region}{birth:%Y%m%d}{order:03d}"
    return first17 + idnumbers.check_character(first17)


def person(
    *, region: str = ORIGIN, birth: date = date(1995, 3, 8), seq: int = 1, sex: str = "F", **extra: Any
) -> dict[str, Any]:
    """A staff API body for a valid record (a woman from 太康县 living here unless told otherwise)."""
    body: dict[str, Any] = {
        "id_number": id_number(region, birth, seq, sex),
        "name": "王秀英" if sex == "F" else "李建国",
        "sex": sex,
        "birth_date": birth.isoformat(),
        "host_node": HERE,
    }
    body.update(extra)
    return body


def signer(node_id: str = HERE) -> NodeSigner:
    return NodeSigner(
        node_id=node_id, name="金水区", keyid=f"{node_id}/k1", private_key=Ed25519PrivateKey.generate()
    )


def database(tmp_path: Path, url: str | None = None) -> Iterator[Engine]:
    """A fresh register (SQLite in ``tmp_path`` unless ``url`` names another database) that
    knows 太康县 as a peer."""
    engine = make_engine(url or f"sqlite:///{tmp_path / 'register.db'}")
    SQLModel.metadata.create_all(engine)
    with Session(engine) as session:
        session.add(Peer(node_id=ORIGIN, name="太康县", url="http://127.0.0.1:1"))
        session.commit()
    yield engine
    engine.dispose()
