"""Staff accounts and bearer tokens (``yp_<id>_<secret>``; only an argon2 hash is stored)."""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import threading
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlmodel import Session, select

from service.errors import NotAuthenticated, ValidationFailed
from service.models import Role, Staff
from service.schemas import DB_ID_MAX

_hasher = PasswordHasher()
_audit = logging.getLogger("yipanqi.audit")
# The account id is a database id (1 … 2^31-1): at most 10 digits, checked against DB_ID_MAX below.
_TOKEN = re.compile(r"^yp_([1-9][0-9]{0,9})_([A-Za-z0-9_-]{20,100})$")
USERNAME = re.compile(r"^[A-Za-z0-9._-]{2,64}$")
# argon2 is slow on purpose; remember a verified token briefly so each request does not pay for it.
_CACHE_SECONDS = 60.0
_cache: dict[str, tuple[float, int]] = {}
_cache_lock = threading.Lock()


def create_staff(session: Session, *, username: str, role: Role) -> tuple[Staff, str]:
    """Create an account and return it with its token (shown once, never stored)."""
    if not USERNAME.fullmatch(username):
        raise ValidationFailed("username must be 2-64 of A-Z a-z 0-9 . _ -", field="username")
    if session.exec(select(Staff).where(Staff.username == username)).first() is not None:
        raise ValidationFailed(f"username {username!r} is taken", field="username")
    secret = secrets.token_urlsafe(32)
    staff = Staff(username=username, role=role, token_hash=_hasher.hash(secret))
    session.add(staff)
    session.flush()
    return staff, f"yp_{staff.id}_{secret}"


def authenticate(session: Session, token: str) -> Staff:
    match = _TOKEN.fullmatch(token)
    if match is None or int(match.group(1)) > DB_ID_MAX:
        raise NotAuthenticated("malformed bearer token")
    staff = session.get(Staff, int(match.group(1)))
    if staff is None or not staff.active:
        raise NotAuthenticated("unknown or disabled account")
    fingerprint = hashlib.sha256(token.encode()).hexdigest()
    now = time.monotonic()
    with _cache_lock:
        cached = _cache.get(fingerprint)
    if cached is not None and cached[0] > now and cached[1] == staff.id:
        return staff
    try:
        _hasher.verify(staff.token_hash, match.group(2))
    except (VerificationError, InvalidHashError) as exc:
        raise NotAuthenticated("invalid bearer token") from exc
    with _cache_lock:
        _cache[fingerprint] = (now + _CACHE_SECONDS, staff.id or 0)
    return staff


def audit(staff: Staff, action: str, target: str) -> None:
    """Who did or read what, for the access log personal data needs (ids only, never the data)."""
    _audit.info("staff=%s role=%s action=%s target=%s", staff.username, staff.role.value, action, target)
