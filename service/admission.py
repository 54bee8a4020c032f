"""Bounded admission: at most N requests in the app at once, a bounded line, then 503 + Retry-After.

Under a burst the node keeps serving at the speed it can instead of letting every request in at
once (threads, pool connections and the SQLite writer lock then thrash, and latency grows without
bound). A request waits for a slot at most ``wait_seconds``; with ``queue`` requests already
waiting, or after the wait, it is answered at once with ``503`` and ``Retry-After``. Health checks
and metrics are never held back. docs/storage.md says how the limit, the threadpool and the
database pool are sized together.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from service.errors import ServiceBusy

EXEMPT = ("/livez", "/readyz", "/metrics")


class Admission:
    def __init__(
        self,
        app: ASGIApp,
        *,
        concurrency: int,
        queue: int,
        wait_seconds: float,
        refuse: Callable[[Request, ServiceBusy], Response],
    ) -> None:
        self.app = app
        self.concurrency = concurrency
        self.queue = queue
        self.wait_seconds = wait_seconds
        self.refuse = refuse
        self._slots: asyncio.Semaphore | None = None  # made on the server's event loop
        self.waiting = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"].startswith(EXEMPT):
            await self.app(scope, receive, send)
            return
        if self._slots is None:
            self._slots = asyncio.Semaphore(self.concurrency)
        slots = self._slots
        if slots.locked():  # every slot taken (or others already waiting): get in line
            if self.waiting >= self.queue:
                await self._refuse(scope, receive, send, "the node is at capacity")
                return
            self.waiting += 1
            try:
                await asyncio.wait_for(slots.acquire(), self.wait_seconds)
            except TimeoutError:
                await self._refuse(scope, receive, send, "the node is at capacity; the wait was too long")
                return
            finally:
                self.waiting -= 1
        else:
            await slots.acquire()  # a free slot: taken at once, without yielding
        try:
            await self.app(scope, receive, send)
        finally:
            slots.release()

    async def _refuse(self, scope: Scope, receive: Receive, send: Send, detail: str) -> None:
        app = scope.get("app")
        metrics = getattr(app.state, "metrics", None) if app is not None else None
        if metrics is not None:
            metrics.busy.inc()
        response = self.refuse(Request(scope, receive), ServiceBusy(detail, retry_after=1))
        await response(scope, receive, send)
