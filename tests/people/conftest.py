"""Fixtures for the register's service-level tests: a throwaway SQLite database per test."""

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


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with Session(engine, expire_on_commit=False) as session:
        yield session


@pytest.fixture
def signer() -> NodeSigner:
    return factories.signer()
