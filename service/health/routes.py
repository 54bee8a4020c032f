"""/healthz (the process is alive) and /readyz (it can do its job) for monitoring."""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Literal

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field
from sqlalchemy import text

from service.clock import utcnow
from service.db import read_session
from service.directory.signed import DirectoryStatus
from service.directory.signed import status as directory_status
from service.scheduler import stale_after_seconds

router = APIRouter(tags=["health"])


class Readiness(BaseModel):
    status: Literal["ready", "degraded", "not_ready"] = Field(
        description="degraded (still 200): the node works on a lapsed signed directory, or has none yet"
    )
    checks: dict[str, str] = Field(
        description="database, signing_key, relay, scheduler: ok or what is wrong (error: …, stalled); "
        "directory: local, ok: …, expiring: …, expired: …, missing: …"
    )


@router.get("/healthz")
def healthz() -> dict[str, str]:
    return {"status": "ok"}


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "not ready: ``checks`` says which part is not"}},
)
def readyz(request: Request) -> JSONResponse:
    state = request.app.state
    checks: dict[str, str] = {}
    try:
        with read_session() as session:
            session.exec(text("SELECT 1"))  # type: ignore[call-overload]
        checks["database"] = "ok"
    except Exception as exc:  # any failure means not ready; say which kind
        checks["database"] = f"error: {type(exc).__name__}"
    checks["signing_key"] = "ok" if getattr(state, "signer", None) is not None else "missing"
    worker = getattr(state, "relay_worker", None)
    if worker is None or not state.settings.relay_enabled:
        checks["relay"] = "disabled"
    else:
        # The relay's loop beats every interval whatever its deliveries do (each has its own
        # deadline), so a live relay beats well within this.
        stale_after = timedelta(
            seconds=max(
                30.0, 3 * state.settings.peer_timeout_seconds, 10 * state.settings.relay_interval_seconds
            )
        )
        beat = worker.relay.heartbeat
        fresh = worker.alive and beat is not None and utcnow() - beat < stale_after
        checks["relay"] = "ok" if fresh else "stalled"
    checks["scheduler"] = _scheduler_check(state)
    directory = _directory_check(state)
    checks["directory"] = directory.detail
    ready = (
        checks["database"] == "ok"
        and checks["signing_key"] == "ok"
        and checks["relay"] != "stalled"
        and checks["scheduler"] == "ok"
    )
    status = ("degraded" if directory.degraded else "ready") if ready else "not_ready"
    body = {"status": status, "checks": checks}
    return JSONResponse(body, status_code=200 if ready else 503)


def _directory_check(state: Any) -> DirectoryStatus:
    """The signed directory's expiry (service/directory/signed.py): a lapsed one degrades, never fails."""
    try:
        with read_session() as session:
            return directory_status(session, state.settings, utcnow())
    except Exception as exc:  # the database check above says what is wrong
        return DirectoryStatus("local", detail=f"error: {type(exc).__name__}")


def _scheduler_check(state: Any) -> str:
    """ok while the scheduler runs and the SLA sweep finished recently (service/scheduler.py)."""
    scheduler, heartbeat = getattr(state, "scheduler", None), getattr(state, "sla_heartbeat", None)
    if scheduler is None or heartbeat is None:
        return "stalled"  # not started (the lifespan did not run)
    fresh = scheduler.running and heartbeat.fresh(stale_after_seconds(state.settings))
    return "ok" if fresh else "stalled"
