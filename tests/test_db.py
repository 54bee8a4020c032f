"""Storage: migrations match the models, and datetimes come back timezone-aware UTC on both backends."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel

from service.db import make_engine
from service.migrations import upgrade
from service.models import SeenNonce
from tests.conftest import PostgresServer


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'test.db'}"
    else:
        server: PostgresServer = request.getfixturevalue("postgres")
        url = server.new_database()
    engine = make_engine(url)
    upgrade(engine)
    yield engine
    engine.dispose()


def test_migrations_build_exactly_the_models(engine: Engine) -> None:
    with engine.connect() as connection:
        diff = compare_metadata(MigrationContext.configure(connection), SQLModel.metadata)
    assert diff == []


def test_upgrade_twice_is_harmless(engine: Engine) -> None:
    upgrade(engine)


def test_datetimes_are_utc_aware(engine: Engine) -> None:
    shanghai = timezone(timedelta(hours=8))
    at = datetime(2026, 11, 22, 9, 30, 0, 123456, tzinfo=shanghai)
    with Session(engine) as session:
        session.add(SeenNonce(keyid="410105/k1", nonce="n" * 22, expires_at=at))
        session.commit()
    with Session(engine) as session:
        row = session.get(SeenNonce, ("410105/k1", "n" * 22))
        assert row is not None
        assert row.expires_at.tzinfo is not None
        assert row.expires_at.utcoffset() == timedelta(0)
        assert row.expires_at == datetime(2026, 11, 22, 1, 30, 0, 123456, tzinfo=UTC)


def test_naive_datetimes_are_refused(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(SeenNonce(keyid="410105/k1", nonce="m" * 22, expires_at=datetime(2026, 1, 1)))
        with pytest.raises(Exception, match="naive datetime"):
            session.commit()
