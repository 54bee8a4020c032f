"""Console passwords (登录密码): the policy, setting one, and checking one at sign-in.

argon2id (argon2-cffi's defaults) like the bearer tokens. Every hash is made or checked before
the transaction that stores the outcome (docs/storage.md): a sign-in reads the account, checks the
password with no transaction open, then records success or failure in one short transaction.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service.db import read_session, transaction
from service.errors import DomainError, ValidationFailed
from service.models import ConsoleSession, PasswordHistory, Staff
from service.snapshots import mark_changed
from service.staff.service import STAFF, USERNAME, no_account_hash

_hasher = PasswordHasher()
_hashing = threading.Lock()  # one argon2 at a time in the process: a flood holds one core at most

MIN_LENGTH = 12
MAX_LENGTH = 128
HISTORY = 5  # a new password may not be any of the last five
_CLASSES = ("大写字母", "小写字母", "数字", "符号")


def _classes(password: str) -> set[str]:
    found = set()
    for ch in password:
        if ch.isascii() and ch.isupper():
            found.add("大写字母")
        elif ch.isascii() and ch.islower():
            found.add("小写字母")
        elif ch.isdigit():
            found.add("数字")
        elif not ch.isspace():
            found.add("符号")
    return found


def policy_problems(password: str, username: str) -> list[str]:
    """What is wrong with a new password under the policy, in Chinese (empty: it is acceptable).

    At least 12 characters and three of the four classes (upper case, lower case, digits,
    symbols), no control characters, not containing the user name; GB/T 22239-2019 level 3
    asks for "complexity" without fixing it, and this is the common reading of it."""
    problems = []
    if len(password) < MIN_LENGTH:
        problems.append(f"密码至少 {MIN_LENGTH} 位")
    if len(password) > MAX_LENGTH:
        problems.append(f"密码最多 {MAX_LENGTH} 位")
    if any(ord(ch) < 32 or ord(ch) == 127 for ch in password):
        problems.append("密码不能含控制字符")
    if len(_classes(password)) < 3:
        problems.append("密码须含大写字母、小写字母、数字、符号中的至少三类")
    if username and username.lower() in password.lower():
        problems.append("密码不能包含用户名")
    return problems


class PasswordRejected(DomainError):
    """A new password the policy or the history refuses (the reasons are in Chinese, joined by ；)."""

    status_code = 422
    code = "password_rejected"
    title = "Password rejected"


def _matches(password_hash: str, password: str) -> bool:
    try:
        return _hasher.verify(password_hash, password)
    except (VerificationError, InvalidHashError):
        return False


def set_password(
    staff_id: int, password: str, *, must_change: bool, now: datetime, engine: Engine | None = None
) -> None:
    """Check the policy and the history, hash, then store in one short transaction.

    ``must_change``: an admin's or the CLI's password, to be changed at the next sign-in. Every
    console session of the account ends (a stolen session does not outlive a password change)."""
    with read_session(engine) as session:
        staff = session.get(Staff, staff_id)
        if staff is None:
            raise ValidationFailed("no such staff account", field="staff_id")
        username = staff.username
        history = session.exec(
            select(PasswordHistory.password_hash)
            .where(PasswordHistory.staff_id == staff_id)
            .order_by(col(PasswordHistory.id).desc())
            .limit(HISTORY)
        ).all()
    problems = policy_problems(password, username)
    if problems:
        raise PasswordRejected("；".join(problems), field="password")
    with _hashing:
        if any(_matches(old, password) for old in history):
            raise PasswordRejected(f"不能使用最近 {HISTORY} 次用过的密码", field="password")
        new_hash = _hasher.hash(password)
    with transaction(engine) as tx:
        tx.exec(
            update(Staff)
            .where(col(Staff.id) == staff_id)
            .values(
                password_hash=new_hash,
                password_changed_at=now,
                must_change_password=must_change,
                failed_logins=0,
                locked_until=None,
            )
        )
        tx.add(PasswordHistory(staff_id=staff_id, password_hash=new_hash, created_at=now))
        end_sessions(tx, staff_id, now)
        mark_changed(tx, STAFF)


def end_sessions(session: Session, staff_id: int, now: datetime) -> None:
    """End every open console session of an account (password change, deactivation, revocation)."""
    session.exec(
        update(ConsoleSession)
        .where(col(ConsoleSession.staff_id) == staff_id, col(ConsoleSession.ended_at).is_(None))
        .values(ended_at=now)
    )


class SignInFailed(DomainError):
    status_code = 401
    code = "sign_in_failed"
    title = "Sign-in failed"


class AccountLocked(DomainError):
    status_code = 423
    code = "account_locked"
    title = "Account locked"

    def __init__(self, detail: str, *, until: datetime) -> None:
        super().__init__(detail)
        self.until = until


@dataclass(frozen=True)
class LockoutPolicy:
    failures: int  # wrong passwords in a row that lock the account
    minutes: int  # for how long


def check_password(
    username: str, password: str, *, now: datetime, policy: LockoutPolicy, engine: Engine | None = None
) -> Staff:
    """The account whose password this is, or SignInFailed / AccountLocked.

    An unknown user name, a disabled account and a wrong password take the same time and give
    the same answer. A locked account is refused before any hashing, with the time it unlocks."""
    name_ok = USERNAME.fullmatch(username) is not None and len(password) <= MAX_LENGTH
    staff = None
    if name_ok:
        with read_session(engine) as session:
            staff = session.exec(select(Staff).where(Staff.username == username)).first()
            if staff is not None:
                session.expunge(staff)
    if staff is not None and staff.locked_until is not None and staff.locked_until > now:
        raise AccountLocked("account locked", until=staff.locked_until)
    usable = staff is not None and staff.active and staff.password_hash is not None
    with _hashing:
        good = _matches(
            staff.password_hash if usable and staff and staff.password_hash else no_account_hash(),
            password if name_ok else "",
        )
    if usable and good:
        assert staff is not None
        if staff.failed_logins or staff.locked_until is not None:
            with transaction(engine) as tx:
                tx.exec(
                    update(Staff).where(col(Staff.id) == staff.id).values(failed_logins=0, locked_until=None)
                )
        return staff
    if staff is not None:
        _count_failure(staff.id, now=now, policy=policy, engine=engine)
    raise SignInFailed("unknown user name or wrong password")


def _count_failure(
    staff_id: int | None, *, now: datetime, policy: LockoutPolicy, engine: Engine | None
) -> None:
    with transaction(engine) as tx:
        staff = tx.get(Staff, staff_id)
        if staff is None:
            return
        staff.failed_logins += 1
        if staff.failed_logins >= policy.failures:
            staff.locked_until = now + timedelta(minutes=policy.minutes)
            staff.failed_logins = 0
            mark_changed(tx, STAFF)
        tx.add(staff)
        until = staff.locked_until if staff.failed_logins == 0 else None
    if until is not None:
        raise AccountLocked("account locked", until=until)
