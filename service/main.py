"""create_app(): routers, lifespan (relay, scheduler), error handlers."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from service.births import routes as births
from service.certificates import routes as certificates
from service.certificates.peer import ENDPOINTS as CERTIFICATE_ENDPOINTS
from service.config import Settings, get_settings
from service.db import new_session
from service.errors import PROBLEM_JSON, DomainError, Problem, ValidationFailed, problem_body
from service.exchange import admin as exchange_admin
from service.exchange.envelope import canonical_json
from service.exchange.inbox import PeerEndpoint
from service.exchange.relay import Relay, RelayWorker
from service.exchange.routes import build_peer_router, envelope_schema_name, problem_response
from service.health import metrics
from service.health import routes as health
from service.health.metrics import NodeMetrics
from service.notices import routes as notices
from service.notifications import routes as notifications
from service.notifications.peer import ENDPOINTS as NOTIFICATION_ENDPOINTS
from service.people import routes as people
from service.scheduler import Heartbeat, build_scheduler
from service.signing.node import load_signer
from service.sla import routes as reports
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
    with new_session() as session:
        app.state.signer = load_signer(session, settings.keys_dir)
    hooks = {e.message_type: e.on_receipt for e in PEER_ENDPOINTS if e.on_receipt is not None}
    app.state.relay = Relay(settings, new_session, app.state.signer, hooks, metrics=app.state.metrics)
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


def _validation_problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, RequestValidationError)
    # Field and reason only: never echo the rejected value (it may be an ID number).
    errors = [
        {"field": ".".join(str(p) for p in e["loc"] if p != "body"), "reason": e["msg"]} for e in exc.errors()
    ]
    return problem_response(ValidationFailed("the request does not validate", errors=errors))


def _http_problem(_request: Request, exc: Exception) -> Response:
    """Unknown paths, wrong methods: problem+json like every other error."""
    assert isinstance(exc, StarletteHTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    title = HTTPStatus(exc.status_code).phrase
    body = canonical_json(problem_body(exc.status_code, code, title, str(exc.detail)))
    return Response(body, status_code=exc.status_code, media_type=PROBLEM_JSON, headers=exc.headers)


def _domain_problem(_request: Request, exc: Exception) -> Response:
    assert isinstance(exc, DomainError)
    return problem_response(exc)


def create_app(settings: Settings | None = None) -> FastAPI:
    app = FastAPI(
        title="yipanqi node",
        version="1.0.0",
        summary="一盘棋: signed 协查, 婚育证明 and 通报 exchange between county nodes",
        lifespan=lifespan,
    )
    app.state.settings = settings or get_settings()
    app.state.metrics = NodeMetrics()
    app.include_router(build_peer_router(PEER_ENDPOINTS))
    app.include_router(verification.router)
    app.include_router(notifications.router)
    app.include_router(births.router)
    app.include_router(certificates.router)
    app.include_router(exchange_admin.router)
    app.include_router(people.router)
    app.include_router(reports.router)
    app.include_router(notices.router)
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.add_exception_handler(DomainError, _domain_problem)
    app.add_exception_handler(RequestValidationError, _validation_problem)
    app.add_exception_handler(StarletteHTTPException, _http_problem)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    """FastAPI's schema plus the envelopes the peer routes read from the raw (signed) body."""
    if app.openapi_schema:
        return app.openapi_schema
    from fastapi.openapi.utils import get_openapi

    schema = get_openapi(title=app.title, version=app.version, summary=app.summary, routes=app.routes)
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
