"""Scheduled work of the exchange: thin wrappers over plain functions that tests call directly."""

from __future__ import annotations

import logging

from service.clock import utcnow
from service.db import transaction
from service.exchange.inbox import sweep_nonces
from service.rate_windows import sweep_windows

log = logging.getLogger(__name__)


def nonce_sweep_job() -> None:
    with transaction() as session:
        removed = sweep_nonces(session, utcnow())
    if removed:
        log.info("forgot expired nonces count=%d", removed)
    with transaction() as session:  # the rate windows' rows past their window (keys not hit again)
        removed = sweep_windows(session)
    if removed:
        log.info("forgot expired rate-limit hits count=%d", removed)
