"""Console sessions in-process: idle timeout, absolute lifetime, ending, deactivation."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import select

from service.config import Settings
from service.console.auth import end_session, find_session, start_session
from service.db import make_engine, read_session, transaction
from service.migrations import upgrade
from service.models import ConsoleSession, Role, Staff
from service.staff.passwords import (
    AccountLocked,
    LockoutPolicy,
    PasswordRejected,
    SignInFailed,
    check_password,
    policy_problems,
    set_password,
)
from service.staff.service import create_staff

T0 = datetime(2026, 6, 10, 2, 0, tzinfo=UTC)
SETTINGS = Settings(console_idle_minutes=30, console_session_hours=10)


@pytest.fixture
def engine(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Engine]:
    monkeypatch.setenv("YIPANQI_DATA_DIR", str(tmp_path))
    engine = make_engine(f"sqlite:///{tmp_path / 'console.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def _account(engine: Engine, password: str = "Abcdefgh-1234", role: Role = Role.operator) -> int:
    with transaction(engine) as tx:
        staff, _ = create_staff(tx, username="wang.fang", role=role)
        staff_id = staff.id
    assert staff_id is not None
    set_password(staff_id, password, must_change=False, now=T0, engine=engine)
    return staff_id


def test_a_session_ends_after_the_idle_timeout_and_the_absolute_lifetime(engine: Engine) -> None:
    staff_id = _account(engine)
    cookie = start_session(staff_id, T0, engine)
    assert find_session(cookie, T0 + timedelta(minutes=29), SETTINGS, engine) is not None
    # That request counted as activity: 29 more minutes are fine, 31 without one are not.
    assert find_session(cookie, T0 + timedelta(minutes=58), SETTINGS, engine) is not None
    assert find_session(cookie, T0 + timedelta(minutes=58 + 31), SETTINGS, engine) is None

    busy = start_session(staff_id, T0, engine)
    at = T0
    while at < T0 + timedelta(hours=9, minutes=50):  # active all day, a request every 20 minutes
        at += timedelta(minutes=20)
        assert find_session(busy, at, SETTINGS, engine) is not None
    assert find_session(busy, T0 + timedelta(hours=10, minutes=1), SETTINGS, engine) is None


def test_logout_a_password_change_and_deactivation_end_sessions(engine: Engine) -> None:
    staff_id = _account(engine)
    first, second = start_session(staff_id, T0, engine), start_session(staff_id, T0, engine)
    end_session(first, T0, engine)
    assert find_session(first, T0, SETTINGS, engine) is None
    assert find_session(second, T0, SETTINGS, engine) is not None
    with read_session(engine) as session:
        assert len(session.exec(select(ConsoleSession)).all()) == 2
    assert find_session("not-a-cookie", T0, SETTINGS, engine) is None
    set_password(staff_id, "Another-pass-99", must_change=False, now=T0, engine=engine)
    assert find_session(second, T0, SETTINGS, engine) is None  # a password change ends them all
    third = start_session(staff_id, T0, engine)
    with transaction(engine) as tx:
        staff = tx.get(Staff, staff_id)
        assert staff is not None
        staff.active = False
        tx.add(staff)
    assert find_session(third, T0, SETTINGS, engine) is None


def test_password_policy() -> None:
    assert policy_problems("Abcdefgh-1234", "wang") == []
    assert policy_problems("short-A1", "wang") == ["密码至少 12 位"]
    assert "密码须含大写字母、小写字母、数字、符号中的至少三类" in policy_problems("abcdefghijklmn", "wang")
    assert "密码不能包含用户名" in policy_problems("Xx-wang.fang-2026", "wang.fang")
    assert "密码不能含控制字符" in policy_problems("Abcdefgh-1234\x00", "wang")


def test_the_last_five_passwords_cannot_be_reused(engine: Engine) -> None:
    staff_id = _account(engine, "Password-no-0")
    for i in range(1, 5):
        set_password(staff_id, f"Password-no-{i}", must_change=False, now=T0, engine=engine)
    for i in range(5):
        with pytest.raises(PasswordRejected):
            set_password(staff_id, f"Password-no-{i}", must_change=False, now=T0, engine=engine)
    set_password(staff_id, "Password-no-5", must_change=False, now=T0, engine=engine)
    set_password(staff_id, "Password-no-0", must_change=False, now=T0, engine=engine)  # six back: allowed


def test_lock_out_after_repeated_failures(engine: Engine) -> None:
    _account(engine, "Right-password-1")
    policy = LockoutPolicy(failures=3, minutes=15)
    for _ in range(2):
        with pytest.raises(SignInFailed):
            check_password("wang.fang", "wrong", now=T0, policy=policy, engine=engine)
    with pytest.raises(AccountLocked) as locked:
        check_password("wang.fang", "wrong", now=T0, policy=policy, engine=engine)
    assert locked.value.until == T0 + timedelta(minutes=15)
    with pytest.raises(AccountLocked):  # the right password does not help while locked
        check_password(
            "wang.fang", "Right-password-1", now=T0 + timedelta(minutes=14), policy=policy, engine=engine
        )
    staff = check_password(
        "wang.fang", "Right-password-1", now=T0 + timedelta(minutes=16), policy=policy, engine=engine
    )
    assert staff.username == "wang.fang"
    with pytest.raises(SignInFailed):  # an unknown user: the same answer as a wrong password
        check_password("nobody", "Right-password-1", now=T0, policy=policy, engine=engine)
