"""Fixtures for the register's service-level tests: a throwaway database per test (SQLite; the
import's tests also on PostgreSQL when ``YIPANQI_TEST_DATABASE_URL`` is set)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.signing.node import NodeSigner
from tests.people import factories


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    yield from factories.database(tmp_path)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def any_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A fresh register on SQLite, then on PostgreSQL (skipped without a server)."""
    url = request.getfixturevalue("postgres").new_database() if request.param == "postgres" else None
    yield from factories.database(tmp_path, url)


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture
def signer() -> NodeSigner:
    return factories.signer()
