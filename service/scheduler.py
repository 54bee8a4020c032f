"""APScheduler (3.x) inside every replica: housekeeping sweeps (the relay has its own thread)."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from functools import partial

from apscheduler.schedulers.background import BackgroundScheduler

from service.config import Settings, get_settings
from service.directory.signed import directory_job
from service.evidence.jobs import checkpoint_job, purge_job, seal_job
from service.exchange.jobs import nonce_sweep_job
from service.sla.jobs import monthly_report_job, sla_sweep_job
from service.sla.warnings import early_warning_job
from service.staff.idempotency import idempotency_sweep_job


class Heartbeat:
    """When the SLA sweep last finished, on the monotonic clock (a moved wall clock cannot fake it)."""

    def __init__(self) -> None:
        self.started = time.monotonic()
        self.last: float | None = None

    def beat(self) -> None:
        self.last = time.monotonic()

    def fresh(self, stale_after_seconds: float) -> bool:
        """A sweep finished within the window (or the scheduler started within it: the first runs now)."""
        reference = self.last if self.last is not None else self.started
        return time.monotonic() - reference < stale_after_seconds


def stale_after_seconds(settings: Settings) -> float:
    """How long /readyz waits for a sweep before it says the scheduler stalled."""
    return max(120.0, 3 * settings.sweep_interval_seconds)


def build_scheduler(
    settings: Settings | None = None, heartbeat: Heartbeat | None = None
) -> BackgroundScheduler:
    settings = settings or get_settings()
    scheduler = BackgroundScheduler(timezone="UTC")
    # Reminders, overdue and escalations; the first run at start, then every sweep_interval_seconds.
    scheduler.add_job(
        partial(sla_sweep_job, heartbeat.beat if heartbeat is not None else None),
        "interval",
        seconds=settings.sweep_interval_seconds,
        next_run_time=datetime.now(UTC),  # real clock: APScheduler runs on it, not on the moved one
        id="sla_sweep",
        max_instances=1,
        coalesce=True,
    )
    # 预警: open items likely to miss their deadline, recorded when first flagged (service/sla/warnings.py).
    scheduler.add_job(
        early_warning_job,
        "interval",
        minutes=10,
        next_run_time=datetime.now(UTC),  # real clock, as above
        id="early_warning",
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        nonce_sweep_job, "interval", minutes=5, id="nonce_sweep", max_instances=1, coalesce=True
    )
    # The evidence log (service/evidence/): seal new messages into the chain, sign its head, and
    # empty message bodies past YIPANQI_MESSAGE_BODY_RETENTION_DAYS (daily; nothing when unset).
    scheduler.add_job(
        seal_job,
        "interval",
        seconds=settings.evidence_seal_interval_seconds,
        id="evidence_seal",
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(
        checkpoint_job,
        "interval",
        seconds=settings.evidence_checkpoint_interval_seconds,
        id="evidence_checkpoint",
        max_instances=1,
        coalesce=True,
    )
    scheduler.add_job(purge_job, "interval", hours=24, id="evidence_purge", max_instances=1, coalesce=True)
    # Idempotency-Keys older than idempotency_key_hours are forgotten (service/staff/idempotency.py).
    scheduler.add_job(
        idempotency_sweep_job, "interval", minutes=10, id="idempotency_sweep", max_instances=1, coalesce=True
    )
    # 月报: last month's report on the 1st (Asia/Shanghai); hourly through the 4th in case every
    # replica was down on the 1st. Idempotent: a stored report is left as it is.
    scheduler.add_job(
        monthly_report_job,
        "cron",
        day="1-4",
        hour="*",
        minute=7,
        timezone="Asia/Shanghai",
        id="monthly_report",
        max_instances=1,
        coalesce=True,
    )
    # The signed directory (service/directory/signed.py): fetched from directory_url when one is
    # set, and its expiry checked (warnings in the log); the first run at start.
    if settings.directory_url or settings.directory_authority_keys:
        scheduler.add_job(
            partial(directory_job, settings),
            "interval",
            seconds=settings.directory_fetch_interval_seconds,
            next_run_time=datetime.now(UTC),  # real clock, as above
            id="directory",
            max_instances=1,
            coalesce=True,
        )
    return scheduler
