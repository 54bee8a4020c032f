"""The directory fetched from a URL (a local HTTP server on 127.0.0.1), and the scheduler's job."""

from __future__ import annotations

import logging

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import select

from service.config import Settings
from service.db import read_session
from service.directory import signed
from service.models import DirectoryDocument, Peer
from service.scheduler import build_scheduler
from tests.directory.conftest import Authority, Publisher, peer_entry

K1 = Ed25519PrivateKey.generate()


def _versions(engine: Engine) -> list[int]:
    with read_session(engine) as session:
        return sorted(d.version for d in session.exec(select(DirectoryDocument)))


def test_the_node_fetches_and_imports_each_new_version(
    engine: Engine,
    settings: Settings,
    authority: Authority,
    publisher: Publisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings = settings.model_copy(update={"directory_url": publisher.url})
    caplog.set_level(logging.INFO, "yipanqi.directory")
    publisher.body = authority.sign(1, [peer_entry("411627", "太康县", ("k1", K1, None, None))])
    first = signed.fetch_and_import(settings, engine=engine)
    assert first is not None
    assert (first.outcome, first.version) == ("imported", 1)
    again = signed.fetch_and_import(settings, engine=engine)
    assert again is not None
    assert again.outcome == "unchanged"
    with read_session(engine) as session:
        doc = signed.current_document(session)
        assert doc is not None
        assert doc.source == publisher.url
        assert session.get(Peer, "411627") is not None

    # A tampered or older answer is refused and logged; the one in force stays.
    publisher.body = publisher.body.replace(b"yipanqi.411627.example", b"attacker.example.org1")
    assert signed.fetch_and_import(settings, engine=engine) is None
    assert "refused: the signature by authority key henan/2026 does not verify" in caplog.text
    publisher.body = authority.sign(3, [peer_entry("411627", "太康县", ("k1", K1, None, None))])
    assert signed.fetch_and_import(settings, engine=engine) is not None
    publisher.body = authority.sign(2, [])
    assert signed.fetch_and_import(settings, engine=engine) is None
    assert "older than version 3" in caplog.text
    assert _versions(engine) == [1, 3]
    assert publisher.requests == 5


def test_a_failing_or_oversized_answer_is_logged_and_changes_nothing(
    engine: Engine,
    settings: Settings,
    authority: Authority,
    publisher: Publisher,
    caplog: pytest.LogCaptureFixture,
) -> None:
    publisher.body = authority.sign(1, [peer_entry("411627", "太康县", ("k1", K1, None, None))])
    small = settings.model_copy(update={"directory_url": publisher.url, "directory_max_bytes": 100})
    assert signed.fetch_and_import(small, engine=engine) is None
    assert "not fetched: the document is larger than 100 bytes" in caplog.text
    publisher.status = 503
    normal = settings.model_copy(update={"directory_url": publisher.url})
    assert signed.fetch_and_import(normal, engine=engine) is None
    assert "not fetched: HTTP 503" in caplog.text
    nowhere = settings.model_copy(update={"directory_url": "http://127.0.0.1:9/directory.json"})
    assert signed.fetch_and_import(nowhere, engine=engine) is None
    assert "not fetched: ConnectError" in caplog.text
    assert _versions(engine) == []


def test_the_job_is_scheduled_only_for_a_node_that_uses_a_signed_directory(
    settings: Settings, publisher: Publisher
) -> None:
    def jobs(s: Settings) -> set[str]:
        scheduler = build_scheduler(s)
        return {job.id for job in scheduler.get_jobs()}

    assert "directory" not in jobs(Settings(data_dir=settings.data_dir))
    assert "directory" in jobs(settings)  # trusts an authority: the expiry is watched
    fetching = settings.model_copy(
        update={"directory_url": publisher.url, "directory_fetch_interval_seconds": 60}
    )
    scheduler = build_scheduler(fetching)
    job = scheduler.get_job("directory")
    assert job is not None
    assert job.trigger.interval.total_seconds() == 60


def test_the_job_warns_even_when_the_fetch_fails(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []

    def failing(_settings: Settings) -> None:
        calls.append("fetch")
        raise RuntimeError("boom")

    monkeypatch.setattr(signed, "warn_expiry", lambda *_args: calls.append("warn"))
    with pytest.raises(RuntimeError):
        signed.directory_job(settings, failing)
    assert calls == ["fetch", "warn"]
