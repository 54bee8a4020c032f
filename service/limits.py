"""Request bodies bounded at the edge: a size limit and a total read deadline, before anything else.

A pure ASGI middleware, outermost in the app (before admission, the console's CSRF check, the
routes and their authentication). FastAPI reads a route's body before it solves its dependencies
(the bearer token among them), and asgi-csrf reads a console form before the app: so a limit
checked in a route comes too late. Here:

- a ``Content-Length`` above the route's limit is answered ``413`` at once, none of the body read;
- a body without one (chunked) is counted as it arrives and cut at the limit: ``413``;
- a body must arrive whole within the route's deadline from the start of the request, however
  it is dripped (one byte a second keeps each read short, not the whole): ``408``.

Both answers carry ``Connection: close`` (the rest of the body is never read) and are rendered
like every other error: problem+json, signed under ``/peer/v1``, a page in the console.
The limits per route are settings (``BodyLimits.for_settings``).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from service.config import Settings
from service.errors import DomainError, PayloadTooLarge

log = logging.getLogger("yipanqi.security")

PEER_PREFIX = "/peer/v1/"
# Register uploads: the staff API's and the console's form.
CONSOLE_IMPORT = "/console/people/import"
IMPORT_PATHS = frozenset({"/api/v1/people/import", CONSOLE_IMPORT})
# The multipart envelope around an uploaded file: boundaries, part headers, the CSRF field, a checkbox.
FORM_OVERHEAD = 64 * 1024


class BodyTimeout(DomainError):
    status_code = 408
    code = "request_timeout"
    title = "The request body did not arrive in time"


@dataclass(frozen=True)
class Limit:
    max_bytes: int
    seconds: float


class _Refused(Exception):
    """Raised to the app from ``receive`` once the body broke its limit (the app's answer is dropped)."""


def content_length(scope: Scope) -> int | None:
    """The declared length; None when absent. An unreadable one is the server's to refuse (h11 does)."""
    for name, value in scope.get("headers", ()):
        if name == b"content-length":
            text = value.decode("latin-1").strip()
            return int(text) if text.isdigit() else None
    return None


class BodyLimits:
    def __init__(
        self,
        app: ASGIApp,
        *,
        limit_for: Callable[[str], Limit],
        refuse: Callable[[Request, DomainError], Response],
    ) -> None:
        self.app = app
        self.limit_for = limit_for
        self.refuse = refuse

    @staticmethod
    def for_settings(settings: Settings) -> Callable[[str], Limit]:
        peer = Limit(settings.max_body_bytes, settings.request_body_seconds)
        upload = Limit(settings.people_import_max_bytes + FORM_OVERHEAD, settings.people_import_body_seconds)
        staff = Limit(settings.staff_max_body_bytes, settings.request_body_seconds)

        def limit_for(path: str) -> Limit:
            if path.startswith(PEER_PREFIX):
                return peer
            if path in IMPORT_PATHS:
                return upload
            return staff

        return limit_for

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self.limit_for(scope["path"])
        declared = content_length(scope)
        if declared is not None and declared > limit.max_bytes:
            too_large = PayloadTooLarge(f"the body is larger than {limit.max_bytes} bytes")
            await self._refuse(scope, send, too_large)
            return
        deadline = asyncio.get_running_loop().time() + limit.seconds
        size = 0
        done = declared == 0
        error: DomainError | None = None
        started = False

        async def limited_receive() -> Message:
            nonlocal size, done, error
            if error is not None:
                raise _Refused
            if done:  # the body is in: what follows (a disconnect) has no deadline
                return await receive()
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                error = BodyTimeout(f"the body did not arrive within {limit.seconds:g} seconds")
                raise _Refused from None
            if message["type"] == "http.request":
                size += len(message.get("body", b""))
                if size > limit.max_bytes:
                    error = PayloadTooLarge(f"the body is larger than {limit.max_bytes} bytes")
                    raise _Refused
                done = not message.get("more_body", False)
            else:
                done = True
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if error is not None and not started:
                return  # the app's answer to a body it could not read: ours goes out instead
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if error is None or started:
                raise
        if error is not None and not started:
            await self._refuse(scope, send, error)

    async def _refuse(self, scope: Scope, send: Send, error: DomainError) -> None:
        async def no_body() -> Message:  # never read: the rest of the body is left unread
            return {"type": "http.disconnect"}

        client = scope.get("client")
        # As the peer routes log a rejection (exchange/routes.py); the path is not logged (a staff
        # path may carry an id), only which API it is.
        log.warning(
            "%s request rejected code=%s status=%d endpoint=%s client=%s",
            "peer" if scope["path"].startswith(PEER_PREFIX) else "staff",
            error.code,
            error.status_code,
            "body",
            client[0] if client else "-",
        )

        response = self.refuse(Request(scope, no_body), error)
        response.headers["Connection"] = "close"
        await response(scope, no_body, send)
