"""APScheduler (3.x) inside every replica: housekeeping sweeps (the relay has its own thread)."""

from __future__ import annotations

from apscheduler.schedulers.background import BackgroundScheduler

from service.exchange.jobs import nonce_sweep_job


def build_scheduler() -> BackgroundScheduler:
    scheduler = BackgroundScheduler(timezone="UTC")
    scheduler.add_job(
        nonce_sweep_job, "interval", minutes=5, id="nonce_sweep", max_instances=1, coalesce=True
    )
    return scheduler
