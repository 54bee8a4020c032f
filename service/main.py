"""create_app(): routers, lifespan (relay, scheduler), error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from pathlib import Path
from typing import Any

import anyio
import fastapi_offline
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, Response
from sqlalchemy.exc import DBAPIError, OperationalError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service import console, production
from service.admission import Admission
from service.births import routes as births
from service.certificates import routes as certificates
from service.certificates.peer import ENDPOINTS as CERTIFICATE_ENDPOINTS
from service.config import Settings, get_settings
from service.console import people as console_people
from service.db import get_engine, new_session, read_session
from service.directory.service import PeerKeys
from service.errors import (
    PROBLEM_JSON,
    DatabaseUnavailable,
    DomainError,
    HTTPError,
    InternalError,
    MethodNotAllowed,
    NotFound,
    Problem,
    ValidationFailed,
    problem_body,
    problem_responses,
)
from service.exchange import admin as exchange_admin
from service.exchange.envelope import canonical_json
from service.exchange.inbox import PeerEndpoint
from service.exchange.relay import Relay, RelayWorker
from service.exchange.routes import build_peer_router, envelope_schema_name, problem_response, signed
from service.health import metrics
from service.health import routes as health
from service.health.metrics import NodeMetrics
from service.limits import CONSOLE_IMPORT, BodyLimits
from service.notices import routes as notices
from service.notifications import routes as notifications
from service.notifications.peer import ENDPOINTS as NOTIFICATION_ENDPOINTS
from service.people import routes as people
from service.rate_windows import window_storage
from service.scheduler import Heartbeat, build_scheduler
from service.signing.node import load_signer
from service.signing.pii_rotation import check_database as check_pii_key
from service.sla import routes as reports
from service.staff import idempotency
from service.staff import routes as staff_accounts
from service.staff.service import StaffAccounts, no_account_hash
from service.verification import routes as verification
from service.verification.peer import ENDPOINTS as VERIFICATION_ENDPOINTS

log = logging.getLogger(__name__)

PEER_ENDPOINTS: tuple[PeerEndpoint, ...] = (
    *VERIFICATION_ENDPOINTS,
    *NOTIFICATION_ENDPOINTS,
    *CERTIFICATE_ENDPOINTS,
)


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    settings: Settings = app.state.settings
    # Every admitted request can have a worker thread without waiting (docs/storage.md).
    limiter = anyio.to_thread.current_default_thread_limiter()
    limiter.total_tokens = max(limiter.total_tokens, settings.max_concurrent_requests + 8)
    check_pii_key()  # the PII key is there and decrypts what is stored, or the node does not start
    no_account_hash()  # made now: the first unknown account then costs what a wrong secret costs
    with read_session() as session:
        app.state.signer = load_signer(session, settings.keys_dir)
        production.check_stored_peers(session, settings)  # no http:// peer in production
    hooks = {e.message_type: e.on_receipt for e in PEER_ENDPOINTS if e.on_receipt is not None}
    app.state.relay = Relay(
        settings,
        new_session,
        app.state.signer,
        hooks,
        bulk_hooks={e.message_type: e.on_receipts for e in PEER_ENDPOINTS if e.on_receipts is not None},
        metrics=app.state.metrics,
        peer_keys=app.state.peer_keys,  # answers' signatures checked from memory, no database lock
    )
    worker = RelayWorker(app.state.relay, settings.relay_interval_seconds)
    app.state.relay_worker = worker
    if settings.relay_enabled:
        worker.start()
    app.state.sla_heartbeat = Heartbeat()
    scheduler = build_scheduler(settings, app.state.sla_heartbeat)
    app.state.scheduler = scheduler
    scheduler.start()
    log.info("node ready node_id=%s keyid=%s", app.state.signer.node_id, app.state.signer.keyid)
    try:
        yield
    finally:
        scheduler.shutdown(wait=True)
        worker.stop()
        app.state.relay.client.close()


PEER_PREFIX = "/peer/v1/"


def _answer(request: Request, response: Response, message: str | None = None) -> Response:
    """Every answer under /peer/v1 is signed (docs/protocol.md), unknown paths and methods included;
    the console answers an error with a page in Chinese instead of problem+json."""
    if console.is_console(request):
        return console.error_page(request, response.status_code, dict(response.headers), message)
    signer = getattr(request.app.state, "signer", None)  # None only before the lifespan has run
    if request.url.path.startswith(PEER_PREFIX) and signer is not None:
        return signed(response, signer, request)
    return response


def _refuse_body(request: Request, error: DomainError) -> Response:
    """A body refused by service/limits.py; a register upload in the console says how large it may be."""
    message = None
    if error.status_code == 413 and request.url.path == CONSOLE_IMPORT:
        message = console_people.too_large_message(request.app.state.settings.people_import_max_bytes)
    return _answer(request, problem_response(error), message)


def _field(loc: tuple[Any, ...]) -> str:
    """``body.subject.name`` → ``subject.name``; a path parameter by its name (``month``)."""
    parts = loc[1:] if loc and loc[0] in ("body", "path") else loc
    return ".".join(str(p) for p in parts)


def _validation_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Field and reason only: never echo the rejected value (it may be an ID number).
    errors = [
        {"field": "" if e["type"] == "json_invalid" else _field(tuple(e["loc"])), "reason": e["msg"]}
        for e in exc.errors()
    ]
    error = ValidationFailed("the request does not validate", errors=errors)
    return _answer(request, problem_response(error))


HTTP_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def _allowed_methods(request: Request) -> str:
    """Every method some route takes at this path (Starlette's 405 names only the first route's)."""
    routes = request.app.router.routes
    allowed = [
        method
        for method in HTTP_METHODS
        if any(route.matches({**request.scope, "method": method})[0] is Match.FULL for route in routes)
    ]
    return ", ".join(allowed)


def _http_problem(request: Request, exc: Exception) -> Response:
    """Unknown paths, wrong methods, unreadable bodies: problem+json like every other error."""
    assert isinstance(exc, StarletteHTTPException)
    if exc.status_code == 404:
        response = problem_response(NotFound("no such path"))
    elif exc.status_code == 405:
        response = problem_response(MethodNotAllowed(f"{request.method} is not allowed here"))
        response.headers["Allow"] = _allowed_methods(request)
    elif exc.status_code == 400:  # a body that is not JSON in UTF-8 (or not multipart): like invalid JSON
        errors = [{"field": "", "reason": str(exc.detail)}]
        response = problem_response(ValidationFailed("the request body could not be read", errors=errors))
    else:
        title = HTTPStatus(exc.status_code).phrase
        body = canonical_json(problem_body(exc.status_code, HTTPError.code, title, str(exc.detail)))
        response = Response(body, status_code=exc.status_code, media_type=PROBLEM_JSON, headers=exc.headers)
    return _answer(request, response)


def _domain_problem(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return _answer(request, problem_response(exc))


def _internal_problem(request: Request, exc: Exception) -> Response:
    """A bug: problem+json without the trace (the server logs it), signed under /peer/v1 like any answer.

    A database that does not answer (an outage, a cut connection, SQLite busy past its timeout) is
    not a bug of the request: ``503 database_unavailable`` with ``Retry-After``.
    """
    if isinstance(exc, DBAPIError) and (isinstance(exc, OperationalError) or exc.connection_invalidated):
        lost = DatabaseUnavailable("the database did not answer; try again later", retry_after=5)
        return _answer(request, problem_response(lost))
    return _answer(request, problem_response(InternalError("the node failed to answer; the error is logged")))


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    app = FastAPI(
        title="yipanqi node",
        version="1.0.0",
        summary="一盘棋: signed 协查, 婚育证明 and 通报 exchange between county nodes",
        lifespan=lifespan,
        docs_url=None,  # _add_docs(): Swagger UI from the package, never a CDN
        redoc_url=None,  # ReDoc's bundle loads its logo from the vendor's CDN: not offered
        # /docs and /openapi.json only when enabled (by default not in production: service/production.py)
        openapi_url="/openapi.json" if settings.docs_served else None,
    )
    app.state.settings = settings
    app.state.metrics = NodeMetrics()
    app.state.peer_keys = PeerKeys(get_engine, settings.directory_refresh_seconds)
    app.state.staff_accounts = StaffAccounts(
        get_engine,
        settings.directory_refresh_seconds,
        settings.auth_failures_per_minute,
        windows=window_storage(settings),  # failed sign-ins counted across replicas (PostgreSQL)
    )
    app.include_router(build_peer_router(PEER_ENDPOINTS))
    app.include_router(verification.router)
    app.include_router(notifications.router)
    app.include_router(births.router)
    app.include_router(certificates.router)
    app.include_router(exchange_admin.router)
    app.include_router(people.router)
    app.include_router(reports.router)
    app.include_router(notices.router)
    app.include_router(staff_accounts.router)
    app.include_router(health.router)
    if settings.metrics_served:  # YIPANQI_METRICS_ENABLED (and YIPANQI_METRICS_TOKEN)
        app.include_router(metrics.router)
    console.install(app)
    app.add_exception_handler(DomainError, _domain_problem)
    app.add_exception_handler(idempotency.Replay, idempotency.replay_response)  # a retried staff write
    app.add_exception_handler(RequestValidationError, _validation_problem)
    app.add_exception_handler(StarletteHTTPException, _http_problem)
    app.add_exception_handler(Exception, _internal_problem)
    app.user_middleware.insert(0, console.middleware(settings))
    app.add_middleware(
        Admission,
        concurrency=settings.max_concurrent_requests,
        queue=settings.admission_queue,
        wait_seconds=settings.admission_wait_seconds,
        refuse=lambda request, error: _answer(request, problem_response(error)),
    )
    # Outermost: a body too large or too slow is refused before admission, CSRF and authentication.
    app.add_middleware(
        BodyLimits,
        limit_for=BodyLimits.for_settings(settings),
        refuse=_refuse_body,
    )
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    if settings.docs_served:
        _add_docs(app)
    return app


# Swagger UI's files as the fastapi-offline package ships them: /docs works on a network without
# the internet (a county's government network). No file the node serves names another host.
DOCS_ASSETS = Path(fastapi_offline.__file__).parent / "static"
DOCS_FILES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon.png": "image/png",
}


def _add_docs(app: FastAPI) -> None:
    @app.get("/docs", include_in_schema=False)
    def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "").rstrip("/")
        return get_swagger_ui_html(
            openapi_url=f"{root}{app.openapi_url}",
            title=f"{app.title} - API",
            swagger_js_url=f"{root}/docs/assets/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/docs/assets/swagger-ui.css",
            swagger_favicon_url=f"{root}/docs/assets/favicon.png",
            # No "validate at validator.swagger.io" badge: it would send the contract outside.
            swagger_ui_parameters={"validatorUrl": None},
        )

    @app.get("/docs/assets/{name}", include_in_schema=False)
    def docs_asset(name: str) -> FileResponse:
        if name not in DOCS_FILES:
            raise NotFound("no such file")
        return FileResponse(DOCS_ASSETS / name, media_type=DOCS_FILES[name])


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the envelopes the peer routes read from the raw (signed) body."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
    _validation_errors_are_problems(schema)
    components = schema.setdefault("components", {}).setdefault("schemas", {})
    problem = Problem.model_json_schema(ref_template="#/components/schemas/{model}")
    components.update(problem.pop("$defs", {}))
    components["Problem"] = problem
    for endpoint in PEER_ENDPOINTS:
        envelope = endpoint.envelope_model().model_json_schema(ref_template="#/components/schemas/{model}")
        components.update(envelope.pop("$defs", {}))
        components[envelope_schema_name(endpoint)] = envelope
    app.openapi_schema = schema
    return schema


def _validation_errors_are_problems(schema: dict[str, Any]) -> None:
    """FastAPI documents its own 422 body; _validation_problem answers problem+json instead."""
    (problem,) = problem_responses({422: "validation_failed"}).values()
    for path_item in schema.get("paths", {}).values():
        for operation in path_item.values():
            content = operation.get("responses", {}).get("422", {}).get("content", {})
            if "application/json" in content:
                operation["responses"]["422"] = problem
    components = schema.get("components", {}).get("schemas", {})
    for name in ("HTTPValidationError", "ValidationError"):
        components.pop(name, None)
