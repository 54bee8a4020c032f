"""A migrated database holding one node's identity, and a frozen clock."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import datetime
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.clock import clock
from service.db import make_engine
from service.migrations import upgrade
from service.models import LocalNode
from service.sla.deadlines import SHANGHAI


def node_engine(url: str, node_id: str) -> Engine:
    engine = make_engine(url)
    upgrade(engine)
    with Session(engine) as session:
        session.add(LocalNode(node_id=node_id, name="测试县", active_keyid=f"{node_id}/k1"))
        session.commit()
    return engine


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'node.db'}"
    server = request.getfixturevalue("postgres")
    url: str = server.new_database()
    return url


@pytest.fixture
def origin(db_url: str) -> Iterator[Engine]:
    """The database of node 411627 (太康县), an origin."""
    engine = node_engine(db_url, "411627")
    yield engine
    engine.dispose()


@pytest.fixture
def host(db_url: str) -> Iterator[Engine]:
    """The database of node 410105 (金水区), a host."""
    engine = node_engine(db_url, "410105")
    yield engine
    engine.dispose()


@pytest.fixture
def at() -> Iterator[Callable[[str], None]]:
    """``at("2026-03-01 10:00")`` freezes the clock at that Asia/Shanghai time."""

    def freeze(text: str) -> None:
        clock.freeze(datetime.fromisoformat(text).replace(tzinfo=SHANGHAI))

    clock.freeze(datetime(2026, 6, 1, 10, 0, tzinfo=SHANGHAI))
    yield freeze
    clock.reset()
