"""APScheduler (3.x) inside every replica: the relay and housekeeping sweeps."""

from __future__ import annotations

from apscheduler.schedulers.background import BackgroundScheduler

from service.config import Settings
from service.exchange.jobs import nonce_sweep_job, relay_job
from service.exchange.relay import Relay


def build_scheduler(settings: Settings, relay: Relay) -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    if settings.relay_enabled:
        scheduler.add_job(
            relay_job,
            "interval",
            seconds=settings.relay_interval_seconds,
            args=[relay],
            id="relay",
            max_instances=1,
            coalesce=True,
        )
    scheduler.add_job(
        nonce_sweep_job, "interval", minutes=5, id="nonce_sweep", max_instances=1, coalesce=True
    )
    return scheduler
