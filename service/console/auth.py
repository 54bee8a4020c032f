"""Console sign-in: server-side sessions in a cookie, role checks, and the CSRF middleware.

The cookie carries a random secret; the database keeps only its SHA-256 (``ConsoleSession``), so a
session can be ended at once — logout, password change, an admin's deactivation — which a signed
cookie alone cannot do. A session ends after ``console_idle_minutes`` without a request and after
``console_session_hours`` whatever happens. Forms are protected by asgi-csrf (double-submit cookie,
signed) on top of ``SameSite=Strict``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import secrets
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

from asgi_csrf import asgi_csrf  # type: ignore[import-untyped]
from fastapi import Depends, Request
from fastapi.responses import RedirectResponse
from sqlalchemy import update
from sqlalchemy.engine import Engine
from sqlmodel import col
from starlette.concurrency import run_in_threadpool

from service.clock import utcnow
from service.config import Settings
from service.console import csrf_multipart
from service.db import read_session, transaction
from service.models import ConsoleSession, Role, Staff

COOKIE = "yp_console"
CSRF_COOKIE = "yp_csrf"
CSRF_FIELD = "csrftoken"  # asgi-csrf's form field name
PREFIX = "/console"
LOGIN_PATH = f"{PREFIX}/login"
PASSWORD_PATH = f"{PREFIX}/password"
_TOUCH_EVERY = timedelta(seconds=60)  # last_seen_at is written at most this often per session
_audit = logging.getLogger("yipanqi.audit")


def audit(event: str, username: str, source: str, **extra: object) -> None:
    """Sign-ins, failures, lock-outs and sign-outs (user names and addresses, never passwords)."""
    more = "".join(f" {k}={v}" for k, v in extra.items())
    _audit.info("console event=%s staff=%s source=%s%s", event, username, source, more)


def source(request: Request) -> str:
    """The client's address, for the audit log and the sign-in limits."""
    return request.client.host if request.client else "-"


def see_other(url: str) -> RedirectResponse:
    """After a form: 303 to the page that shows the outcome (POST-redirect-GET)."""
    return RedirectResponse(url, status_code=303)


def _digest(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


def start_session(staff_id: int, now: datetime, engine: Engine | None = None) -> str:
    """A new session for a signed-in account; returns the cookie value (shown to the browser only)."""
    cookie = secrets.token_urlsafe(32)
    with transaction(engine) as tx:
        tx.add(ConsoleSession(id=_digest(cookie), staff_id=staff_id, created_at=now, last_seen_at=now))
    return cookie


def end_session(cookie: str, now: datetime, engine: Engine | None = None) -> None:
    with transaction(engine) as tx:
        tx.exec(
            update(ConsoleSession)
            .where(col(ConsoleSession.id) == _digest(cookie), col(ConsoleSession.ended_at).is_(None))
            .values(ended_at=now)
        )


@dataclass(frozen=True)
class ConsoleUser:
    """The signed-in person, for one request."""

    staff: Staff
    session_id: str
    must_change_password: bool

    @property
    def role(self) -> Role:
        """The principal role (shown beside the name); permissions go by ``roles``."""
        return self.staff.role

    @property
    def roles(self) -> frozenset[Role]:
        return self.staff.role_set


def find_session(
    cookie: str, now: datetime, settings: Settings, engine: Engine | None = None
) -> ConsoleUser | None:
    """The session's user, or None when it is unknown, ended, idle too long or too old."""
    if not cookie or len(cookie) > 100:
        return None
    session_id = _digest(cookie)
    with read_session(engine) as session:
        row = session.get(ConsoleSession, session_id)
        if row is None or row.ended_at is not None:
            return None
        staff = session.get(Staff, row.staff_id)
        if staff is None:
            return None
        session.expunge(staff)
        created, last_seen = row.created_at, row.last_seen_at
    idle = timedelta(minutes=settings.console_idle_minutes)
    lifetime = timedelta(hours=settings.console_session_hours)
    if not staff.active or now - last_seen > idle or now - created > lifetime:
        return None
    if now - last_seen > _TOUCH_EVERY:
        with transaction(engine) as tx:
            tx.exec(
                update(ConsoleSession).where(col(ConsoleSession.id) == session_id).values(last_seen_at=now)
            )
    return ConsoleUser(staff, session_id, staff.must_change_password)


class LoginRequired(Exception):
    """Not signed in (or the session ended): the console answers with the sign-in page."""

    def __init__(self, next_path: str) -> None:
        self.next_path = next_path


class ConsoleForbidden(Exception):
    """Signed in, but this role may not open the page or send the form (403, in Chinese)."""


def login_url(next_path: str = "") -> str:
    if next_path and next_path.startswith(PREFIX) and not next_path.startswith(LOGIN_PATH):
        return f"{LOGIN_PATH}?next={quote(next_path, safe='/')}"
    return LOGIN_PATH


def safe_next(value: str | None) -> str:
    """Where to go after signing in: only a console path of this node (no open redirect)."""
    if value and value.startswith(PREFIX + "/") and not value.startswith("//") and "\\" not in value:
        return value
    return PREFIX + "/"


async def console_user(request: Request) -> ConsoleUser:
    settings: Settings = request.app.state.settings
    user = await run_in_threadpool(find_session, request.cookies.get(COOKIE, ""), utcnow(), settings)
    if user is None:
        raise LoginRequired(request.url.path)
    if user.must_change_password and request.url.path != PASSWORD_PATH:
        raise LoginRequired(PASSWORD_PATH)  # handled as a redirect to the change-password page
    return user


SignedIn = Annotated[ConsoleUser, Depends(console_user)]


def allow(*roles: Role) -> Callable[[ConsoleUser], Coroutine[Any, Any, ConsoleUser]]:
    """A dependency: the signed-in user, who must hold one of ``roles`` (checked on every request)."""

    async def check(user: SignedIn) -> ConsoleUser:
        if user.roles.isdisjoint(roles):
            raise ConsoleForbidden
        return user

    return check


# Separation of duties (as in service/staff/dependencies.py): admin handles no case unless the
# account holds a case role too.
READERS = (Role.operator, Role.supervisor, Role.auditor)
ACTORS = (Role.operator, Role.supervisor)
Reader = Annotated[ConsoleUser, Depends(allow(*READERS))]
Actor = Annotated[ConsoleUser, Depends(allow(*ACTORS))]
Supervisor = Annotated[ConsoleUser, Depends(allow(Role.supervisor))]
Admin = Annotated[ConsoleUser, Depends(allow(Role.admin))]


def can_act(user: ConsoleUser) -> bool:
    """Whether the user may act (not only read): the forms a page offers them."""
    return not user.roles.isdisjoint(ACTORS)


def csrf_secret(settings: Settings) -> str:
    """The CSRF signing secret: the setting, or a random one kept in the keys folder (0600).

    Replicas behind one address on several hosts must share it (``YIPANQI_CONSOLE_SECRET``)."""
    if settings.console_secret is not None:
        return settings.console_secret.get_secret_value()
    path: Path = settings.keys_dir / "console.secret"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        value = secrets.token_urlsafe(48)
        try:
            with open(path, "x", encoding="ascii", opener=lambda p, f: os.open(p, f, 0o600)) as fh:
                fh.write(value)
        except FileExistsError:
            pass  # another worker made it first
    return path.read_text(encoding="ascii").strip()


def csrf_middleware(settings: Settings) -> Callable[..., Any]:
    """asgi-csrf for the console's forms only (the staff API uses bearer tokens, the peers signatures)."""
    csrf_multipart.install()  # upload forms under python-multipart >= 0.0.26 (simonw/asgi-csrf#38)
    secret = csrf_secret(settings)

    def wrap(app: Any) -> Any:
        protected = asgi_csrf(
            app,
            cookie_name=CSRF_COOKIE,
            signing_secret=secret,
            always_protect={LOGIN_PATH},  # a form posted with no cookie at all is refused too
            cookie_path=PREFIX,
            cookie_secure=settings.console_cookies_secure,
            cookie_samesite="Strict",
            send_csrf_failed=_send_csrf_failed,
        )

        async def console_only(scope: dict[str, Any], receive: Any, send: Any) -> None:
            # Peer and staff API requests do not pass through it at all (no cookie parsing per request).
            path = scope.get("path", "") if scope["type"] == "http" else ""
            if path == PREFIX or path.startswith(PREFIX + "/"):
                await protected(scope, receive, send)
            else:
                await app(scope, receive, send)

        return console_only

    return wrap


async def _send_csrf_failed(scope: dict[str, Any], send: Callable[..., Any], message_id: int) -> None:  # noqa: ARG001
    from service.console.templating import error_page_bytes

    body = error_page_bytes(
        "表单已过期",
        "页面的安全校验未通过（可能页面打开太久，或已在另一个标签页中退出）。请返回，刷新页面后再提交。",
    )
    await send(
        {
            "type": "http.response.start",
            "status": 403,
            "headers": [(b"content-type", b"text/html; charset=utf-8"), *security_headers()],
        }
    )
    await send({"type": "http.response.body", "body": body})


CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "form-action 'self'; frame-ancestors 'none'; base-uri 'none'; object-src 'none'"
)


def security_headers() -> list[tuple[bytes, bytes]]:
    """Every console answer: a strict CSP (no inline script or style), no caching of personal data."""
    return [
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
        (b"cache-control", b"no-store"),
    ]
