"""Scheduled work of the exchange: thin wrappers over plain functions that tests call directly."""

from __future__ import annotations

import logging

from service.clock import utcnow
from service.db import new_session
from service.exchange.inbox import sweep_nonces
from service.exchange.relay import Relay

log = logging.getLogger(__name__)


def relay_job(relay: Relay) -> None:
    try:
        relay.run_once()
    except Exception:  # keep the schedule alive; the next tick retries
        log.exception("relay sweep failed")


def nonce_sweep_job() -> None:
    with new_session() as session:
        removed = sweep_nonces(session, utcnow())
        session.commit()
    if removed:
        log.info("forgot expired nonces count=%d", removed)
