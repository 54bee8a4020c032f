"""Scheduled work of the evidence log: seal new messages, sign a checkpoint, purge old bodies."""

from __future__ import annotations

import logging
from datetime import timedelta

from service.clock import utcnow
from service.config import get_settings
from service.db import read_session
from service.evidence.seal import checkpoint, purge_bodies, seal
from service.signing.node import load_signer

log = logging.getLogger(__name__)


def seal_job() -> None:
    settings = get_settings()
    added = seal(
        chunk=settings.evidence_seal_chunk,
        margin=timedelta(seconds=settings.evidence_seal_margin_seconds),
    )
    if added:
        log.info("evidence sealed count=%d", added)


def checkpoint_job() -> None:
    settings = get_settings()
    seal_job()  # the checkpoint covers everything stored until now
    with read_session() as session:
        signer = load_signer(session, settings.keys_dir)
    signed = checkpoint(None, signer)
    if signed is not None:
        log.info("evidence checkpoint signed seq=%d", signed.seq)


def purge_job() -> None:
    settings = get_settings()
    days = settings.message_body_retention_days
    if days is None:
        return
    emptied = purge_bodies(None, retention_days=days, now=utcnow(), chunk=settings.evidence_seal_chunk)
    if emptied:
        log.info("message bodies past retention emptied count=%d", emptied)
