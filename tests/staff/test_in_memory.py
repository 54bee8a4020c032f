"""Peer keys and staff accounts from memory (service/snapshots.py): when a change takes effect.

A change made through the node takes effect at once in its process; one made behind its back
(another replica, a CLI command: here, a plain UPDATE on another engine) within the refresh
time, measured on an injected monotonic clock.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy import Engine, text

from service.db import make_engine, transaction
from service.directory.service import KeySpec, PeerKeys, add_peer, remove_peer
from service.errors import NotAuthenticated, TooManyRequests
from service.migrations import upgrade
from service.models import Role, Staff
from service.signing.keys import public_key_text
from service.snapshots import MISS_RELOAD_SECONDS, mark_changed
from service.staff import service as staff_service
from service.staff.service import STAFF, StaffAccounts, create_staff

NOW = datetime(2026, 6, 10, 2, 0, tzinfo=UTC)
REFRESH = 3.0


class Spy:
    """The module's PasswordHasher, counting the hashes it checks against."""

    def __init__(self, real: object) -> None:
        self.real = real
        self.hashes: list[str] = []

    def verify(self, hash: str, secret: str) -> bool:
        self.hashes.append(hash)
        return self.real.verify(hash, secret)  # type: ignore[attr-defined, no-any-return]


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


def _staff(engine: Engine, username: str = "wang.li") -> tuple[int, str]:
    with transaction(engine) as tx:
        staff, token = create_staff(tx, username=username, role=Role.operator)
    assert staff.id is not None
    return staff.id, token


def _deactivate(engine: Engine, staff_id: int, *, through_node: bool) -> None:
    with transaction(engine) as tx:
        row = tx.get(Staff, staff_id)
        assert row is not None
        row.active = False
        tx.add(row)
        if through_node:
            mark_changed(tx, STAFF)


def _accounts(engine: Engine, clock: FakeClock, failures: int = 10) -> StaffAccounts:
    return StaffAccounts(lambda: engine, REFRESH, failures, monotonic=clock)


def test_a_verified_token_is_not_hashed_again(
    engine: Engine, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, token = _staff(engine)
    accounts = _accounts(engine, clock)
    spy = Spy(staff_service._hasher)
    monkeypatch.setattr(staff_service, "_hasher", spy)
    for _ in range(5):
        assert accounts.authenticate(token, "10.0.0.1").username == "wang.li"
    assert len(spy.hashes) == 1


def test_deactivation_through_the_node_takes_effect_at_once(engine: Engine, clock: FakeClock) -> None:
    staff_id, token = _staff(engine)
    accounts = _accounts(engine, clock)
    accounts.authenticate(token, "10.0.0.1")
    _deactivate(engine, staff_id, through_node=True)
    with pytest.raises(NotAuthenticated):
        accounts.authenticate(token, "10.0.0.1")


def test_deactivation_elsewhere_takes_effect_within_the_refresh_time(
    engine: Engine, clock: FakeClock
) -> None:
    staff_id, token = _staff(engine)
    accounts = _accounts(engine, clock)
    accounts.authenticate(token, "10.0.0.1")
    _deactivate(engine, staff_id, through_node=False)
    clock.now += REFRESH / 2
    assert accounts.authenticate(token, "10.0.0.1").active  # not seen yet: the snapshot is fresh
    clock.now += REFRESH  # the next call finds the snapshot stale and loads it again
    with pytest.raises(NotAuthenticated):
        accounts.authenticate(token, "10.0.0.1")


def test_an_unknown_account_costs_one_hash_like_a_wrong_secret(
    engine: Engine, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    staff_id, token = _staff(engine)
    accounts = _accounts(engine, clock)
    staff_service.no_account_hash()  # made when the node starts (its lifespan), not by the first stranger
    spy = Spy(staff_service._hasher)
    monkeypatch.setattr(staff_service, "_hasher", spy)
    secret = token.split("_", 2)[2]
    for candidate in (f"yp_{staff_id}_{'x' * 43}", f"yp_{staff_id + 999}_{secret}"):
        with pytest.raises(NotAuthenticated) as refused:
            accounts.authenticate(candidate, "10.0.0.1")
        assert "unknown or disabled account, or invalid bearer token" in str(refused.value)
    assert len(spy.hashes) == 2
    assert all(h.startswith("$argon2id$") for h in spy.hashes)


def test_failed_checks_are_limited_per_source_and_per_account(engine: Engine, clock: FakeClock) -> None:
    staff_id, token = _staff(engine)
    other_id, other_token = _staff(engine, "li.na")
    accounts = _accounts(engine, clock, failures=3)
    accounts.authenticate(token, "10.0.0.9")  # signed in before the flood
    wrong = f"yp_{staff_id}_{'x' * 43}"
    for _ in range(3):
        with pytest.raises(NotAuthenticated):
            accounts.authenticate(wrong, "10.0.0.66")
    with pytest.raises(TooManyRequests) as limited:
        accounts.authenticate(wrong, "10.0.0.66")
    assert 1 <= int(limited.value.headers()["Retry-After"]) <= 60
    with pytest.raises(TooManyRequests):  # the account's limit, from any address
        accounts.authenticate(wrong, "10.0.0.67")
    with pytest.raises(TooManyRequests):  # the source's limit, for any account
        accounts.authenticate(f"yp_{other_id}_{'x' * 43}", "10.0.0.66")
    assert accounts.authenticate(token, "10.0.0.9").id == staff_id  # known tokens keep working
    assert accounts.authenticate(other_token, "10.0.0.8").id == other_id


def _key() -> KeySpec:
    return KeySpec("411627/k1", public_key_text(Ed25519PrivateKey.generate().public_key()))


def test_a_key_added_or_removed_through_the_node_counts_at_once(engine: Engine, clock: FakeClock) -> None:
    keys = PeerKeys(lambda: engine, REFRESH, monotonic=clock)
    assert keys.resolve("411627/k1", NOW) is None
    with transaction(engine) as tx:
        add_peer(tx, node_id="411627", name="太康县", url="http://127.0.0.1:9", keys=[_key()])
    assert keys.resolve("411627/k1", NOW) is not None
    with transaction(engine) as tx:
        remove_peer(tx, "411627")
    assert keys.resolve("411627/k1", NOW) is None


def test_a_key_changed_elsewhere_counts_on_a_miss_or_within_the_refresh_time(
    engine: Engine, clock: FakeClock
) -> None:
    keys = PeerKeys(lambda: engine, REFRESH, monotonic=clock)
    assert keys.resolve("411627/k1", NOW) is None
    other = make_engine(engine.url.render_as_string(hide_password=False))  # another replica
    spec = _key()
    with other.begin() as conn:
        conn.execute(
            text("INSERT INTO peer (node_id, name, url, created_at) VALUES ('411627', '太康县', 'x', :t)"),
            {"t": NOW.replace(tzinfo=None)},
        )
        conn.execute(
            text("INSERT INTO peer_key (keyid, node_id, public_key) VALUES (:k, '411627', :p)"),
            {"k": spec.keyid, "p": spec.public_key},
        )
    assert keys.resolve("411627/k1", NOW) is None  # the miss right after a load is not reloaded
    clock.now += MISS_RELOAD_SECONDS
    assert keys.resolve("411627/k1", NOW) is not None  # a miss reloads
    with other.begin() as conn:
        conn.execute(text("DELETE FROM peer_key"))
    assert keys.resolve("411627/k1", NOW) is not None
    clock.now += REFRESH
    assert keys.resolve("411627/k1", NOW) is None
    other.dispose()


def test_a_database_outage_keeps_the_accounts_in_memory_until_it_ends(
    engine: Engine, clock: FakeClock, tmp_path: Path
) -> None:
    staff_id, token = _staff(engine)
    accounts = _accounts(engine, clock)
    accounts.authenticate(token, "10.0.0.1")
    db = tmp_path / "node.db"
    moved = tmp_path / "elsewhere.db"
    engine.dispose()
    db.rename(moved)  # the database is gone: a reload cannot connect
    db.mkdir()  # (a directory where the file was: SQLite cannot open it)
    clock.now += REFRESH * 2
    assert accounts.authenticate(token, "10.0.0.1").username == "wang.li"  # answered from memory
    db.rmdir()
    moved.rename(db)
    _deactivate(engine, staff_id, through_node=False)
    clock.now += REFRESH  # the database is back: the next refresh sees the change
    with pytest.raises(NotAuthenticated):
        accounts.authenticate(token, "10.0.0.1")
