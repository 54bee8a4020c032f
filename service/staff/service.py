"""Staff accounts and bearer tokens (``yp_<id>_<secret>``; only an argon2 hash is stored)."""

from __future__ import annotations

import hashlib
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from limits import RateLimitItemPerMinute
from limits.storage import MemoryStorage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service.errors import DomainError, NotAuthenticated, NotFound, TooManyRequests, ValidationFailed
from service.models import Role, Staff
from service.schemas import DB_ID_MAX
from service.snapshots import Snapshot, mark_changed

_hasher = PasswordHasher()
_audit = logging.getLogger("yipanqi.audit")
# The account id is a database id (1 … 2^31-1): at most 10 digits, checked against DB_ID_MAX below.
_TOKEN = re.compile(r"^yp_([1-9][0-9]{0,9})_([A-Za-z0-9_-]{20,100})$")
USERNAME = re.compile(r"^[A-Za-z0-9._-]{2,64}$")
STAFF = "staff"  # the snapshot topic of staff accounts
# An unknown account is checked against this hash, so that it costs what a wrong secret costs.
_NO_ACCOUNT_HASH = _hasher.hash(secrets.token_urlsafe(32))
_VERIFIED_MAX = 10_000  # verified tokens remembered (a few per account in practice)


def create_staff(session: Session, *, username: str, role: Role) -> tuple[Staff, str]:
    """Create an account and return it with its token (shown once, never stored)."""
    if not USERNAME.fullmatch(username):
        raise ValidationFailed("username must be 2-64 of A-Z a-z 0-9 . _ -", field="username")
    secret = secrets.token_urlsafe(32)
    token_hash = _hasher.hash(secret)  # before the first statement: no hashing inside a transaction
    if session.exec(select(Staff).where(Staff.username == username)).first() is not None:
        raise ValidationFailed(f"username {username!r} is taken", field="username")
    staff = Staff(username=username, role=role, token_hash=token_hash)
    session.add(staff)
    session.flush()
    mark_changed(session, STAFF)
    return staff, f"yp_{staff.id}_{secret}"


# --- account administration (the console's 管理 pages; hash before, store in one transaction) ----


class OwnAccount(DomainError):
    """An admin tried to deactivate or demote their own account (someone must stay admin)."""

    status_code = 409
    code = "own_account"
    title = "Own account"


@dataclass(frozen=True)
class NewToken:
    """A new bearer token's secret and its argon2 hash: made with ``new_token()`` before the
    transaction that stores it (docs/storage.md); the token is shown once, never stored."""

    secret: str
    token_hash: str

    def token(self, staff_id: int) -> str:
        return f"yp_{staff_id}_{self.secret}"


def new_token() -> NewToken:
    secret = secrets.token_urlsafe(32)
    return NewToken(secret, _hasher.hash(secret))


def list_staff(session: Session) -> list[Staff]:
    return list(session.exec(select(Staff).order_by(col(Staff.username))).all())


def get_staff(session: Session, staff_id: int) -> Staff:
    staff = session.get(Staff, staff_id)
    if staff is None:
        raise NotFound(f"no staff account {staff_id}")
    return staff


def replace_token(session: Session, staff_id: int, new: NewToken) -> str:
    """Revoke the account's bearer token: a new hash, so the old token stops working at once (in this
    process; within the snapshot's refresh in others). Returns the new token, to be shown once."""
    staff = get_staff(session, staff_id)
    staff.token_hash = new.token_hash
    session.add(staff)
    session.flush()
    mark_changed(session, STAFF)
    return new.token(staff_id)


def set_active(session: Session, staff_id: int, active: bool, *, by: int, now: datetime) -> Staff:
    """Deactivate (停用) or reactivate an account. Deactivation ends its console sessions; its
    bearer token stops working since ``StaffAccounts`` checks ``active``."""
    from service.staff.passwords import end_sessions  # passwords imports this module

    if staff_id == by and not active:
        raise OwnAccount("an admin cannot deactivate their own account")
    staff = get_staff(session, staff_id)
    staff.active = active
    session.add(staff)
    session.flush()
    if not active:
        end_sessions(session, staff_id, now)
    mark_changed(session, STAFF)
    return staff


def set_role(session: Session, staff_id: int, role: Role, *, by: int) -> Staff:
    staff = get_staff(session, staff_id)
    if staff_id == by and staff.role == Role.admin and role != Role.admin:
        raise OwnAccount("an admin cannot demote their own account")
    staff.role = role
    session.add(staff)
    session.flush()
    mark_changed(session, STAFF)
    return staff


def unlock(session: Session, staff_id: int) -> Staff:
    """Lift a lock-out after too many wrong passwords (the count starts again)."""
    staff = get_staff(session, staff_id)
    staff.failed_logins, staff.locked_until = 0, None
    session.add(staff)
    session.flush()
    mark_changed(session, STAFF)
    return staff


_PASSWORD_ALPHABETS = (
    "ABCDEFGHJKLMNPQRSTUVWXYZ",  # no I, O: read aloud or copied by hand
    "abcdefghijkmnpqrstuvwxyz",  # no l, o
    "23456789",  # no 0, 1
    "-_.!@#%+=",
)


def one_time_password(username: str, length: int = 16) -> str:
    """A random console password that meets the policy, for an admin to hand over; it must be
    changed at the first sign-in (``set_password(..., must_change=True)``)."""
    from service.staff.passwords import policy_problems

    every = "".join(_PASSWORD_ALPHABETS)
    while True:
        chars = [secrets.choice(alphabet) for alphabet in _PASSWORD_ALPHABETS]
        chars += [secrets.choice(every) for _ in range(length - len(chars))]
        secrets.SystemRandom().shuffle(chars)
        password = "".join(chars)
        if not policy_problems(password, username):
            return password


class StaffAccounts:
    """Bearer-token checks from memory: accounts in a snapshot, verified tokens remembered.

    argon2 is slow on purpose, so a token verified once is remembered (by its SHA-256, with the
    account's hash at that time) until the account's token hash changes or it is deactivated;
    the change takes effect at once in this process and within ``refresh_seconds`` in others.
    Failed checks are limited per source address and per account: past the limit the answer is a
    429 with Retry-After, before any hashing.
    """

    def __init__(
        self,
        engine: Callable[[], Engine],
        refresh_seconds: float,
        failures_per_minute: int,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self._accounts = Snapshot(
            STAFF, _load_accounts, engine=engine, refresh_seconds=refresh_seconds, monotonic=monotonic
        )
        self._verified: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._hashing = threading.Lock()
        self._limit = RateLimitItemPerMinute(failures_per_minute)
        self._failures = MovingWindowRateLimiter(MemoryStorage())

    def authenticate(self, token: str, source: str) -> Staff:
        match = _TOKEN.fullmatch(token)
        if match is None or int(match.group(1)) > DB_ID_MAX:
            raise NotAuthenticated("malformed bearer token")
        staff_id = int(match.group(1))
        staff = self._accounts.get().get(staff_id) or self._accounts.missed().get(staff_id)
        fingerprint = hashlib.sha256(token.encode()).hexdigest()
        with self._lock:
            verified = self._verified.get(fingerprint)
        if staff is not None and staff.active and verified == (staff_id, staff.token_hash):
            return staff
        keys = (f"source:{source}", f"account:{staff_id}")
        # One argon2 check at a time in the process: the limit is checked and counted under the
        # same lock, so a burst cannot slip past it, and a flood holds at most one core.
        with self._hashing:
            for key in keys:
                if not self._failures.test(self._limit, key):
                    wait = self._wait(key)
                    raise TooManyRequests("too many failed sign-ins; try again later", retry_after=wait)
            try:
                # The same work for an unknown or disabled account as for a wrong secret.
                _hasher.verify(staff.token_hash if staff else _NO_ACCOUNT_HASH, match.group(2))
                if staff is None or not staff.active:
                    raise VerificationError
            except (VerificationError, InvalidHashError) as exc:
                for key in keys:
                    self._failures.hit(self._limit, key)
                raise NotAuthenticated("unknown or disabled account, or invalid bearer token") from exc
        assert staff is not None
        with self._lock:
            if len(self._verified) >= _VERIFIED_MAX:
                self._verified.clear()
            self._verified[fingerprint] = (staff_id, staff.token_hash)
        return staff

    def _wait(self, key: str) -> int:
        # The limiter's windows are in epoch seconds.
        reset = self._failures.get_window_stats(self._limit, key).reset_time
        return max(1, math.ceil(reset - time.time()))  # real clock


def _load_accounts(session: Session) -> dict[int, Staff]:
    accounts = {}
    for row in session.exec(select(Staff)):
        session.expunge(row)  # handed to requests as plain values, never written back
        assert row.id is not None
        accounts[row.id] = row
    return accounts


def audit(staff: Staff, action: str, target: str) -> None:
    """Who did or read what, for the access log personal data needs (ids only, never the data)."""
    _audit.info("staff=%s role=%s action=%s target=%s", staff.username, staff.role.value, action, target)
