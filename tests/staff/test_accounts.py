"""Accounts and roles (issue 10 item 4), in-process: several roles, token expiry and revocation,
deactivation ending console sessions, every change audited once after its commit, and the 0013
upgrade of accounts made before it."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import Engine, text
from sqlmodel import select

from service.clock import utcnow
from service.db import make_engine, read_session, transaction
from service.errors import NotAuthenticated, ValidationFailed
from service.migrations import alembic_config, upgrade
from service.models import ConsoleSession, Role, Staff
from service.models.staff import principal_role
from service.staff import service as accounts
from service.staff.service import OwnAccount, StaffAccounts, create_staff

REFRESH = 3.0


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


class Clock:
    """The wall clock the accounts check expiry against, moved by the test."""

    def __init__(self) -> None:
        self.now = utcnow()

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def engine(tmp_path: Path) -> Iterator[Engine]:
    engine = make_engine(f"sqlite:///{tmp_path / 'node.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


@pytest.fixture
def monotonic() -> Monotonic:
    return Monotonic()


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _accounts(engine: Engine, monotonic: Monotonic, clock: Clock) -> StaffAccounts:
    return StaffAccounts(lambda: engine, REFRESH, 100, monotonic=monotonic, clock=clock)


def _staff(engine: Engine, username: str, *roles: Role, token_days: int | None = None) -> tuple[int, str]:
    with transaction(engine) as tx:
        staff, token = create_staff(
            tx, username=username, roles=roles or (Role.operator,), token_days=token_days
        )
    assert staff.id is not None
    return staff.id, token


def _row(engine: Engine, staff_id: int) -> Staff:
    with read_session(engine) as session:
        row = session.get(Staff, staff_id)
        assert row is not None
        session.expunge(row)
        return row


# --- several roles ----------------------------------------------------------------------------------


def test_an_account_holds_several_roles_and_its_principal_role_is_its_strongest_case_role(
    engine: Engine,
) -> None:
    staff_id, _ = _staff(engine, "li.admin", Role.admin, Role.operator)
    row = _row(engine, staff_id)
    assert row.role_set == {Role.admin, Role.operator}
    assert row.roles == "admin,operator"
    assert row.role == Role.operator  # what the one-role checks (notices, assignees) see
    assert row.holds(Role.admin)
    assert row.holds(Role.operator)
    assert not row.holds(Role.supervisor)
    assert principal_role(frozenset({Role.admin})) == Role.admin
    assert principal_role(frozenset({Role.auditor, Role.supervisor, Role.admin})) == Role.supervisor


@pytest.mark.parametrize("roles", [[], ["root"], ["operator", "superuser"]])
def test_roles_must_be_known_and_at_least_one(roles: list[str]) -> None:
    with pytest.raises(ValidationFailed):
        accounts.parse_roles(roles)


def test_set_roles_replaces_them_and_an_admin_cannot_change_their_own(engine: Engine) -> None:
    admin_id, _ = _staff(engine, "admin.one", Role.admin)
    other_id, _ = _staff(engine, "wang.li", Role.operator)
    with transaction(engine) as tx:
        accounts.set_roles(tx, other_id, [Role.auditor, Role.supervisor], by=admin_id)
    assert _row(engine, other_id).role_set == {Role.auditor, Role.supervisor}
    assert _row(engine, other_id).role == Role.supervisor
    for own in ([Role.operator], [Role.admin, Role.operator]):  # neither drop admin nor take case work
        with pytest.raises(OwnAccount), transaction(engine) as tx:
            accounts.set_roles(tx, admin_id, own, by=admin_id)
    assert _row(engine, admin_id).role_set == {Role.admin}


# --- token expiry and revocation ----------------------------------------------------------------


def test_a_token_expires_after_the_default_lifetime_or_its_own(
    engine: Engine, monotonic: Monotonic, clock: Clock
) -> None:
    issued = utcnow()
    default_id, default_token = _staff(engine, "default.life")
    short_id, short_token = _staff(engine, "short.life", token_days=2)
    default_expires, short_expires = (
        _row(engine, default_id).token_expires_at,
        _row(engine, short_id).token_expires_at,
    )
    assert default_expires is not None
    assert short_expires is not None
    assert default_expires - timedelta(days=90) >= issued  # 90 days from its issue (the clock runs on)
    assert short_expires - default_expires < timedelta(days=-87)
    issued = short_expires - timedelta(days=2)
    checks = _accounts(engine, monotonic, clock)
    checks.authenticate(short_token, "10.0.0.1")  # verified and remembered
    clock.now = issued + timedelta(days=2) - timedelta(seconds=1)
    assert checks.authenticate(short_token, "10.0.0.1").username == "short.life"
    clock.now = issued + timedelta(days=2)
    with pytest.raises(NotAuthenticated, match="expired"):
        checks.authenticate(short_token, "10.0.0.1")  # remembered, and still refused
    assert checks.authenticate(default_token, "10.0.0.1").username == "default.life"
    clock.now = default_expires
    with pytest.raises(NotAuthenticated, match="expired"):
        checks.authenticate(default_token, "10.0.0.1")


@pytest.mark.parametrize("days", [0, -1, 3651])
def test_a_lifetime_out_of_range_is_refused(engine: Engine, days: int) -> None:
    with pytest.raises(ValidationFailed):
        _staff(engine, "bad.life", token_days=days)


def test_revocation_through_the_node_takes_effect_at_once(
    engine: Engine, monotonic: Monotonic, clock: Clock
) -> None:
    staff_id, token = _staff(engine, "wang.li")
    checks = _accounts(engine, monotonic, clock)
    checks.authenticate(token, "10.0.0.1")
    with transaction(engine) as tx:
        accounts.revoke_token(tx, staff_id, now=utcnow())
    with pytest.raises(NotAuthenticated, match="revoked"):
        checks.authenticate(token, "10.0.0.1")
    assert accounts.token_state(_row(engine, staff_id), utcnow()) == "revoked"
    new = accounts.new_token()
    with transaction(engine) as tx:
        fresh = accounts.replace_token(tx, staff_id, new)
    assert checks.authenticate(fresh, "10.0.0.1").username == "wang.li"
    with pytest.raises(NotAuthenticated):
        checks.authenticate(token, "10.0.0.1")  # the old secret is not given back its life


def test_revocation_elsewhere_takes_effect_within_the_refresh_time(
    engine: Engine, monotonic: Monotonic, clock: Clock
) -> None:
    staff_id, token = _staff(engine, "wang.li")
    checks = _accounts(engine, monotonic, clock)
    checks.authenticate(token, "10.0.0.1")
    other = make_engine(str(engine.url))  # another replica or a CLI command: no mark_changed here
    try:
        with other.begin() as connection:
            connection.execute(
                text("UPDATE staff SET token_revoked_at = :at WHERE id = :id"),
                {"at": utcnow().replace(tzinfo=None).isoformat(sep=" "), "id": staff_id},
            )
    finally:
        other.dispose()
    monotonic.now += REFRESH / 2
    assert checks.authenticate(token, "10.0.0.1").username == "wang.li"  # the snapshot is still fresh
    monotonic.now += REFRESH
    with pytest.raises(NotAuthenticated, match="revoked"):
        checks.authenticate(token, "10.0.0.1")


def test_deactivation_ends_the_token_and_the_console_sessions(
    engine: Engine, monotonic: Monotonic, clock: Clock
) -> None:
    staff_id, token = _staff(engine, "wang.li")
    now = utcnow()
    with transaction(engine) as tx:
        for n in range(2):
            tx.add(ConsoleSession(id=f"{n}" * 64, staff_id=staff_id, created_at=now, last_seen_at=now))
    checks = _accounts(engine, monotonic, clock)
    checks.authenticate(token, "10.0.0.1")
    with transaction(engine) as tx:
        accounts.set_active(tx, staff_id, False, by=None, now=now)
    with pytest.raises(NotAuthenticated):
        checks.authenticate(token, "10.0.0.1")
    with read_session(engine) as session:
        ended = [
            s.ended_at
            for s in session.exec(select(ConsoleSession).where(ConsoleSession.staff_id == staff_id))
        ]
    assert ended == [now, now]


# --- audit -----------------------------------------------------------------------------------------


def test_every_account_change_is_audited_once_after_its_commit(
    engine: Engine, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="yipanqi.audit")
    staff_id, _ = _staff(engine, "wang.li")
    now = utcnow()
    new = accounts.new_token()
    with transaction(engine) as tx:
        accounts.set_roles(tx, staff_id, [Role.operator, Role.auditor], by=None, by_name="console:admin.one")
        accounts.revoke_token(tx, staff_id, by="console:admin.one", now=now)
        accounts.replace_token(tx, staff_id, new, by="console:admin.one", token_days=7)
        accounts.set_active(tx, staff_id, False, by=None, now=now, by_name="console:admin.one")
        accounts.set_active(tx, staff_id, True, by=None, now=now, by_name="console:admin.one")
        accounts.unlock(tx, staff_id, by="console:admin.one")
    lines = [r.getMessage() for r in caplog.records if r.name == "yipanqi.audit"]
    actions = [line.split(" action=")[1].split()[0] for line in lines]
    assert actions == [
        "staff_created",
        "staff_roles_set",
        "staff_token_revoked",
        "staff_token_issued",
        "staff_deactivated",
        "staff_reactivated",
        "staff_unlocked",
    ]
    assert all("target=staff:wang.li" in line for line in lines)
    assert "roles=auditor,operator before=operator" in lines[1]
    assert all(line.startswith("staff=console:admin.one ") for line in lines[1:])


def test_a_change_that_rolled_back_is_not_audited(engine: Engine, caplog: pytest.LogCaptureFixture) -> None:
    staff_id, _ = _staff(engine, "wang.li")
    caplog.set_level(logging.INFO, logger="yipanqi.audit")
    caplog.clear()

    def failing_change() -> None:
        with transaction(engine) as tx:
            accounts.set_roles(tx, staff_id, [Role.supervisor], by=None)
            raise RuntimeError("the transaction fails after the change")

    with pytest.raises(RuntimeError):
        failing_change()
    assert [r for r in caplog.records if r.name == "yipanqi.audit"] == []
    assert _row(engine, staff_id).role_set == {Role.operator}


# --- the upgrade ----------------------------------------------------------------------------------


def test_accounts_made_before_0013_keep_their_role_and_get_a_token_expiry(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'old.db'}"
    engine = make_engine(url)
    try:
        config = alembic_config(url)
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0012")
            connection.execute(
                text(
                    "INSERT INTO staff (username, role, token_hash, active, created_at, must_change_password,"
                    " failed_logins) VALUES ('old.admin', 'admin', 'x', 1, '2026-01-01 00:00:00', 0, 0)"
                )
            )
        upgrade(engine)
        with read_session(engine) as session:
            row = session.exec(select(Staff).where(Staff.username == "old.admin")).one()
            assert row.role_set == {Role.admin}
            assert row.roles == "admin"
            assert row.token_expires_at is not None
            assert row.token_expires_at > datetime.now(UTC) + timedelta(days=89)  # real clock: the upgrade's
            assert row.token_revoked_at is None
    finally:
        engine.dispose()
