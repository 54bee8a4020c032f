"""Bounded admission (service/admission.py) on a small ASGI app: a line, then 503 + Retry-After."""

from __future__ import annotations

import asyncio

import httpx
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

from service.admission import Admission
from service.errors import ServiceBusy


def _app(release: asyncio.Event, *, queue: int, wait_seconds: float) -> Admission:
    async def slow(_request: Request) -> Response:
        await release.wait()
        return PlainTextResponse("done")

    async def live(_request: Request) -> Response:
        return PlainTextResponse("ok")

    inner = Starlette(routes=[Route("/work", slow), Route("/livez", live)])

    def refuse(_request: Request, error: ServiceBusy) -> Response:
        return JSONResponse(error.problem(), status_code=error.status_code, headers=error.headers())

    return Admission(inner, concurrency=1, queue=queue, wait_seconds=wait_seconds, refuse=refuse)


def test_a_full_line_is_refused_at_once_and_health_checks_pass() -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        app = _app(release, queue=1, wait_seconds=60)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            first = asyncio.create_task(client.get("/work"))  # runs, held until release
            while not (app._slots and app._slots.locked()):
                await asyncio.sleep(0)
            second = asyncio.create_task(client.get("/work"))  # waits in line
            while app.waiting < 1:
                await asyncio.sleep(0)
            third = await client.get("/work")  # the line is full
            assert third.status_code == 503
            assert third.headers["Retry-After"] == "1"
            assert third.json()["code"] == "busy"
            assert (await client.get("/livez")).status_code == 200  # never held back
            release.set()
            assert (await first).status_code == 200
            assert (await second).status_code == 200

    asyncio.run(scenario())


def test_a_request_that_waited_too_long_is_refused_and_frees_its_place() -> None:
    async def scenario() -> None:
        release = asyncio.Event()
        app = _app(release, queue=10, wait_seconds=0.05)
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://node") as client:
            first = asyncio.create_task(client.get("/work"))
            while not (app._slots and app._slots.locked()):
                await asyncio.sleep(0)
            late = await client.get("/work")
            assert late.status_code == 503
            assert app.waiting == 0
            release.set()
            assert (await first).status_code == 200
            assert (await client.get("/work")).status_code == 200  # the slot came back

    asyncio.run(scenario())
