"""Production defaults (service/production.py): https:// peers only, the real clock, /docs and
/metrics only when enabled; development keeps what the tests and the demo need."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from pydantic import ValidationError
from sqlmodel import Session
from typer.testing import CliRunner

from service import production
from service.cli import app as cli_app
from service.clock import OFFSET_ENV
from service.config import Settings, get_settings
from service.db import make_engine
from service.directory import signed
from service.errors import ValidationFailed
from service.main import create_app
from service.migrations import upgrade
from service.models import Peer
from tests.conftest import NetworkFactory
from tests.directory.conftest import Authority, peer_entry

PG = "postgresql+psycopg://postgres@127.0.0.1:5432/none"  # never connected to by these tests


def get(settings: Settings, path: str) -> httpx.Response:
    """A GET to the app itself, without its lifespan (nothing is read from a database)."""

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=create_app(settings))
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            return await client.get(path)

    return asyncio.run(go())


def prod(**kwargs: object) -> Settings:
    return Settings(environment="production", database_url=PG, **kwargs)  # type: ignore[arg-type]


def test_production_refuses_a_clock_offset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(OFFSET_ENV, "3600")
    with pytest.raises(ValidationError, match=f"{OFFSET_ENV} is for tests and demos"):
        prod()
    assert Settings(environment="development").environment == "development"  # tests and demos
    monkeypatch.setenv(OFFSET_ENV, "0")
    assert prod().environment == "production"


def test_production_refuses_http_peer_urls() -> None:
    with pytest.raises(ValidationFailed, match="must be https://"):
        production.check_peer_url(prod(), "http://yipanqi.411627.example")
    production.check_peer_url(prod(), "https://yipanqi.411627.example")
    production.check_peer_url(Settings(), "http://127.0.0.1:8101")  # development: local networks


def test_peers_add_refuses_http_in_production(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("YIPANQI_ENVIRONMENT", "production")
    monkeypatch.setenv("YIPANQI_DATABASE_URL", PG)
    monkeypatch.setenv("YIPANQI_DATA_DIR", str(tmp_path))
    monkeypatch.delenv(OFFSET_ENV, raising=False)
    get_settings.cache_clear()
    try:
        key = f"411627/k1={'A' * 43}"
        result = CliRunner().invoke(
            cli_app,
            [
                "peers",
                "add",
                "--node-id",
                "411627",
                "--name",
                "太康县",
                "--url",
                "http://x.example",
                "--key",
                key,
            ],
        )
    finally:
        get_settings.cache_clear()
    assert result.exit_code != 0
    assert "must be https://" in result.output


def test_a_signed_directory_with_an_http_peer_is_refused_in_production(tmp_path: Path) -> None:
    authority = Authority()
    entry = peer_entry("411627", "太康县", ("k1", Ed25519PrivateKey.generate(), None, None))
    entry["url"] = "http://yipanqi.411627.example"
    from service.clock import utcnow

    raw = authority.sign(1, [entry], issued_at=utcnow())
    settings = prod(directory_authority_keys=[authority.trusted], data_dir=tmp_path)
    with pytest.raises(ValidationFailed, match="must be https://"):
        signed.check(raw, settings, utcnow())
    development = Settings(directory_authority_keys=[authority.trusted], data_dir=tmp_path)
    assert signed.check(raw, development, utcnow()).directory.peers[0].url == entry["url"]


def test_stored_http_peers_stop_a_production_node_from_starting(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    try:
        with Session(engine) as session:
            session.add(Peer(node_id="411627", name="太康县", url="http://yipanqi.411627.example"))
            session.add(Peer(node_id="310110", name="杨浦区", url="https://yipanqi.310110.example"))
            session.commit()
            with pytest.raises(RuntimeError, match=r"refuses plain http:// peer URLs.*: 411627$"):
                production.check_stored_peers(session, prod())
            production.check_stored_peers(session, Settings())
    finally:
        engine.dispose()


@pytest.mark.parametrize("path", ["/docs", "/openapi.json", "/redoc", "/metrics"])
def test_docs_and_metrics_are_not_served_in_production(path: str) -> None:
    answer = get(prod(), path)
    assert answer.status_code == 404
    assert answer.headers["content-type"] == "application/problem+json"


def test_docs_are_served_in_development_or_when_enabled() -> None:
    for settings in (Settings(), prod(docs_enabled=True)):
        assert get(settings, "/openapi.json").status_code == 200
        assert get(settings, "/docs").status_code == 200
    assert get(Settings(docs_enabled=False), "/docs").status_code == 404


@pytest.mark.slow
def test_metrics_can_ask_for_a_token(sqlite_network: NetworkFactory) -> None:
    (node,) = sqlite_network([("410105", "金水区")], env={"YIPANQI_METRICS_TOKEN": "scrape-me-1"})
    assert httpx.get(f"{node.url}/metrics", timeout=30).status_code == 401
    wrong = httpx.get(f"{node.url}/metrics", headers={"Authorization": "Bearer nope"}, timeout=30)
    assert wrong.status_code == 401
    right = httpx.get(f"{node.url}/metrics", headers={"Authorization": "Bearer scrape-me-1"}, timeout=30)
    assert right.status_code == 200
    assert "yipanqi" in right.text
