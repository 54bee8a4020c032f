"""Scheduled SLA work: thin wrappers over plain functions that tests call directly."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from service.clock import utcnow
from service.config import get_settings
from service.db import new_session, read_session
from service.sla.deadlines import SHANGHAI
from service.sla.report import ensure_report, previous_month
from service.sla.sweeps import sweep_all

log = logging.getLogger(__name__)


def monthly_report_job() -> None:
    """Store last month's report (Asia/Shanghai) if no replica has yet: safe to run any day, often."""
    month = f"{previous_month(utcnow().astimezone(SHANGHAI).date()):%Y-%m}"
    with read_session() as session:
        report, generated = ensure_report(session, month)
    if generated:
        log.info("monthly report stored month=%s below_target=%d", month, report.below_target)


def sla_sweep_job(beat: Callable[[], None] | None = None) -> None:
    """Reminders, overdue state and escalations (service/sla/sweeps.py); then a heartbeat for /readyz."""
    result = sweep_all(new_session, utcnow(), get_settings())
    if result.notices:
        counts = Counter(kind.value for kind, _ in result.notices)
        log.info("sla sweep notices %s", " ".join(f"{k}={n}" for k, n in sorted(counts.items())))
    if beat is not None:
        beat()
