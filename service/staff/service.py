"""Staff accounts and bearer tokens (``yp_<id>_<secret>``; only an argon2 hash is stored).

Every change to an account (created, roles, token issued or revoked, deactivated, reactivated,
unlocked) is written to the ``yipanqi.audit`` log after its transaction commits (``_record``), by
whichever way it was made: the CLI, the staff API or the console. Tokens expire
(``YIPANQI_STAFF_TOKEN_DAYS`` unless given) and can be revoked; see docs/security/roles.md.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import math
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timedelta

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from limits import RateLimitItemPerMinute
from limits.errors import StorageError
from limits.storage import MemoryStorage, Storage
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy import event
from sqlalchemy.engine import Engine
from sqlalchemy.orm import Session as OrmSession
from sqlmodel import Session, col, select

from service.clock import utcnow
from service.config import get_settings
from service.errors import (
    DatabaseUnavailable,
    DomainError,
    NotAuthenticated,
    NotFound,
    TooManyRequests,
    ValidationFailed,
)
from service.models import Role, Staff
from service.models.staff import principal_role, roles_text
from service.schemas import DB_ID_MAX
from service.snapshots import Snapshot, mark_changed

_hasher = PasswordHasher()
_audit = logging.getLogger("yipanqi.audit")
# The account id is a database id (1 … 2^31-1): at most 10 digits, checked against DB_ID_MAX below.
_TOKEN = re.compile(r"^yp_([1-9][0-9]{0,9})_([A-Za-z0-9_-]{20,100})$")
USERNAME = re.compile(r"^[A-Za-z0-9._-]{2,64}$")
STAFF = "staff"  # the snapshot topic of staff accounts
_VERIFIED_MAX = 10_000  # verified tokens remembered (a few per account in practice)
_AUDIT = "yipanqi_staff_audit"  # session.info: account changes logged once the transaction commits


@functools.cache
def no_account_hash() -> str:
    """What an unknown account's token or password is checked against, so that it costs what a
    wrong secret costs. Made once, when the node starts (its lifespan) or at first use, not at
    import: every CLI command would pay an argon2 hash for it."""
    return _hasher.hash(secrets.token_urlsafe(32))


def _record(session: Session, by: str, action: str, account: Staff, **extra: object) -> None:
    """An account change, logged after the commit (never for a transaction that rolled back)."""
    more = "".join(f" {key}={value}" for key, value in extra.items())
    line = f"staff={by} action={action} target=staff:{account.username}{more}"
    session.info.setdefault(_AUDIT, []).append(line)


@event.listens_for(OrmSession, "after_commit")
def _log_changes(session: OrmSession) -> None:
    for line in session.info.pop(_AUDIT, ()):
        _audit.info("%s", line)


@event.listens_for(OrmSession, "after_rollback")
def _drop_changes(session: OrmSession) -> None:
    session.info.pop(_AUDIT, None)


def parse_roles(values: Iterable[str | Role]) -> frozenset[Role]:
    """One or more role names (``operator``, ``supervisor``, ``auditor``, ``admin``)."""
    names = [str(getattr(value, "value", value)).strip() for value in values]
    unknown = [name for name in names if name not in Role.__members__]
    if unknown or not names:
        choices = ", ".join(Role.__members__)
        raise ValidationFailed(f"roles must be one or more of {choices}", field="roles")
    return frozenset(Role(name) for name in names)


def token_expiry(now: datetime, days: int | None = None) -> datetime:
    """When a token issued ``now`` expires: after ``days``, or the setting's lifetime."""
    lifetime = days if days is not None else get_settings().staff_token_days
    if not 0 < lifetime <= 3650:
        raise ValidationFailed("a token's lifetime is 1-3650 days", field="token_days")
    return now + timedelta(days=lifetime)


def _set_roles(staff: Staff, roles: frozenset[Role]) -> None:
    staff.roles, staff.role = roles_text(roles), principal_role(roles)


def create_staff(
    session: Session,
    *,
    username: str,
    role: Role | None = None,
    roles: Iterable[Role] = (),
    token_days: int | None = None,
    by: str = "cli",
    new: NewToken | None = None,
) -> tuple[Staff, str]:
    """Create an account holding ``role`` and ``roles`` and return it with its token (shown once,
    never stored), which expires after ``token_days`` (default: the setting). ``new``: the token,
    made with ``new_token()`` before the transaction (otherwise hashed here, before any statement)."""
    if not USERNAME.fullmatch(username):
        raise ValidationFailed("username must be 2-64 of A-Z a-z 0-9 . _ -", field="username")
    held = parse_roles([*([role] if role is not None else []), *roles])
    expires = token_expiry(utcnow(), token_days)
    new = new or new_token()  # before the first statement: no hashing inside a transaction
    if session.exec(select(Staff).where(Staff.username == username)).first() is not None:
        raise ValidationFailed(f"username {username!r} is taken", field="username")
    staff = Staff(
        username=username, role=principal_role(held), token_hash=new.token_hash, token_expires_at=expires
    )
    _set_roles(staff, held)
    session.add(staff)
    session.flush()
    mark_changed(session, STAFF)
    _record(session, by, "staff_created", staff, roles=staff.roles, token_expires=expires.date().isoformat())
    assert staff.id is not None
    return staff, new.token(staff.id)


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


def find_staff(session: Session, username: str) -> Staff:
    staff = session.exec(select(Staff).where(Staff.username == username)).first()
    if staff is None:
        raise NotFound("no such staff account")
    return staff


def replace_token(
    session: Session, staff_id: int, new: NewToken, *, by: str = "cli", token_days: int | None = None
) -> str:
    """Revoke the account's bearer token: a new hash, so the old token stops working at once (in this
    process; within the snapshot's refresh in others). Returns the new token, to be shown once."""
    expires = token_expiry(utcnow(), token_days)
    staff = get_staff(session, staff_id)
    staff.token_hash, staff.token_expires_at, staff.token_revoked_at = new.token_hash, expires, None
    session.add(staff)
    session.flush()
    mark_changed(session, STAFF)
    _record(session, by, "staff_token_issued", staff, token_expires=expires.date().isoformat())
    return new.token(staff_id)


def revoke_token(session: Session, staff_id: int, *, by: str = "cli", now: datetime) -> Staff:
    """The account's bearer token stops working (at once here, within the snapshot's refresh in
    other processes) and no new one is issued; its console sign-in is not affected."""
    staff = get_staff(session, staff_id)
    if staff.token_revoked_at is None:
        staff.token_revoked_at = now
        session.add(staff)
        session.flush()
        mark_changed(session, STAFF)
    _record(session, by, "staff_token_revoked", staff)
    return staff


def set_active(
    session: Session, staff_id: int, active: bool, *, by: int | None, now: datetime, by_name: str = "cli"
) -> Staff:
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
    _record(session, by_name, "staff_deactivated" if not active else "staff_reactivated", staff)
    return staff


def set_roles(
    session: Session, staff_id: int, roles: Iterable[Role], *, by: int | None, by_name: str = "cli"
) -> Staff:
    """The roles the account holds from now on (one or more). An admin cannot change their own
    roles (``by``): neither drop admin nor grant themselves case work (separation of duties)."""
    held = parse_roles(roles)
    staff = get_staff(session, staff_id)
    if staff_id == by and held != staff.role_set:
        raise OwnAccount("an admin cannot change their own roles")
    before = roles_text(staff.role_set)
    _set_roles(staff, held)
    session.add(staff)
    session.flush()
    mark_changed(session, STAFF)
    _record(session, by_name, "staff_roles_set", staff, roles=staff.roles, before=before)
    return staff


def set_role(session: Session, staff_id: int, role: Role, *, by: int | None, by_name: str = "cli") -> Staff:
    """One role only (the console's former form): ``set_roles`` with one."""
    return set_roles(session, staff_id, [role], by=by, by_name=by_name)


def unlock(session: Session, staff_id: int, *, by: str = "cli") -> Staff:
    """Lift a lock-out after too many wrong passwords (the count starts again)."""
    staff = get_staff(session, staff_id)
    staff.failed_logins, staff.locked_until = 0, None
    session.add(staff)
    session.flush()
    mark_changed(session, STAFF)
    _record(session, by, "staff_unlocked", staff)
    return staff


def token_state(staff: Staff, now: datetime) -> str:
    """``active``, ``expired``, ``revoked`` or ``deactivated`` (the account's bearer token)."""
    if not staff.active:
        return "deactivated"
    if staff.token_revoked_at is not None:
        return "revoked"
    if staff.token_expires_at is not None and staff.token_expires_at <= now:
        return "expired"
    return "active"


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
    A revoked or expired token is refused on every request, remembered or not (``clock``).
    Failed checks are limited per source address and per account: past the limit the answer is a
    429 with Retry-After, before any hashing.
    """

    def __init__(
        self,
        engine: Callable[[], Engine],
        refresh_seconds: float,
        failures_per_minute: int,
        monotonic: Callable[[], float] = time.monotonic,
        clock: Callable[[], datetime] = utcnow,
        windows: Storage | None = None,
    ) -> None:
        self._accounts = Snapshot(
            STAFF, _load_accounts, engine=engine, refresh_seconds=refresh_seconds, monotonic=monotonic
        )
        self._clock = clock
        self._verified: dict[str, tuple[int, str]] = {}
        self._lock = threading.Lock()
        self._hashing = threading.Lock()
        self._limit = RateLimitItemPerMinute(failures_per_minute)
        # Shared by the replicas on PostgreSQL (service/rate_windows.py), else this process's memory.
        self._failures = MovingWindowRateLimiter(windows or MemoryStorage())

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
            return self._in_date(staff)
        keys = (f"source:{source}", f"account:{staff_id}")
        # One argon2 check at a time in the process: the limit is checked and counted under the
        # same lock, so a burst cannot slip past it, and a flood holds at most one core.
        with self._hashing, _windows_unavailable_is_503():
            for key in keys:
                if not self._failures.test(self._limit, key):
                    wait = self._wait(key)
                    raise TooManyRequests("too many failed sign-ins; try again later", retry_after=wait)
            try:
                # The same work for an unknown or disabled account as for a wrong secret.
                _hasher.verify(staff.token_hash if staff else no_account_hash(), match.group(2))
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
        return self._in_date(staff)

    def _in_date(self, staff: Staff) -> Staff:
        """A verified token of an active account, refused when revoked or past its expiry."""
        if staff.token_revoked_at is not None:
            raise NotAuthenticated("this bearer token was revoked; ask an admin for a new one")
        if staff.token_expires_at is not None and staff.token_expires_at <= self._clock():
            raise NotAuthenticated("this bearer token has expired; ask an admin for a new one")
        return staff

    def _wait(self, key: str) -> int:
        # The limiter's windows are in epoch seconds.
        reset = self._failures.get_window_stats(self._limit, key).reset_time
        return max(1, math.ceil(reset - time.time()))  # real clock


@contextmanager
def _windows_unavailable_is_503() -> Iterator[None]:
    try:
        yield
    except StorageError as exc:  # the shared windows' database did not answer
        raise DatabaseUnavailable("the database did not answer; try again later", retry_after=5) from exc


def _load_accounts(session: Session) -> dict[int, Staff]:
    accounts = {}
    for row in session.exec(select(Staff)):
        session.expunge(row)  # handed to requests as plain values, never written back
        assert row.id is not None
        accounts[row.id] = row
    return accounts


def audit(staff: Staff, action: str, target: str) -> None:
    """Who did or read what, for the access log personal data needs (ids only, never the data)."""
    _audit.info(
        "staff=%s roles=%s action=%s target=%s", staff.username, roles_text(staff.role_set), action, target
    )
