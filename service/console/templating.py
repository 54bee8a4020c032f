"""Jinja2 for the console: autoescaped templates, Chinese dates in Asia/Shanghai, masked ID numbers."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from fastapi import Request
from fastapi.responses import HTMLResponse
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, select_autoescape

from service import names
from service.console.auth import CSRF_FIELD, ConsoleUser, security_headers
from service.idnumbers import mask
from service.models import Role
from service.staff.reveal import REVEAL_REASONS

HERE = Path(__file__).parent
SHANGHAI = ZoneInfo("Asia/Shanghai")
ROLE_NAMES = names.ROLES


def local_time(value: datetime | None, fmt: str = "%Y-%m-%d %H:%M") -> str:
    """A stored UTC time as Beijing time (the console's only time zone)."""
    if value is None:
        return ""
    return value.astimezone(SHANGHAI).strftime(fmt)


def local_date(value: datetime | None) -> str:
    return local_time(value, "%Y-%m-%d")


@dataclass(frozen=True)
class NavItem:
    order: int
    label: str
    href: str
    hint: str
    roles: frozenset[Role]


NAV: list[NavItem] = []


def add_nav(order: int, label: str, href: str, hint: str, roles: tuple[Role, ...]) -> None:
    """A main-menu entry, shown to ``roles`` (the page itself checks the role again on every request)."""
    NAV.append(NavItem(order, label, href, hint, frozenset(roles)))
    NAV.sort(key=lambda item: item.order)


def nav(user: ConsoleUser | None) -> list[NavItem]:
    return [item for item in NAV if user is not None and not user.roles.isdisjoint(item.roles)]


_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["local_time"] = local_time
_env.filters["local_date"] = local_date
_env.filters["mask_id"] = mask
_env.globals["ROLE_NAMES"] = ROLE_NAMES
_env.globals["nav"] = nav
_env.globals["REVEAL_REASONS"] = REVEAL_REASONS
_env.globals["CSRF_FIELD"] = CSRF_FIELD
templates = Jinja2Templates(env=_env)


def csrf_token(request: Request) -> str:
    """The form token of asgi-csrf (a function in the scope; calling it sets the cookie if missing)."""
    get = request.scope.get("csrftoken")
    return str(get()) if callable(get) else ""


def render(
    request: Request,
    name: str,
    context: dict[str, Any] | None = None,
    *,
    user: ConsoleUser | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    """A page with the layout's context: the user, the CSRF token, the current path for the menu."""
    ctx = {"user": user, "csrf_token": csrf_token(request), "path": request.url.path, **(context or {})}
    response = templates.TemplateResponse(request, name, ctx, status_code=status_code)
    for key, value in security_headers():
        response.headers[key.decode()] = value.decode()
    return response


def error_page_bytes(title: str, message: str) -> bytes:
    """A stand-alone error page (no request at hand: the CSRF middleware's refusal)."""
    return _env.get_template("error.html").render(title=title, message=message, user=None).encode()
