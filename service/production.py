"""What a node in production (``YIPANQI_ENVIRONMENT=production``) refuses that development allows.

- A peer URL that is not ``https://``: at ``yipanqi peers add``, in an imported signed directory,
  and at start for the peers already stored (the node does not start: fix or remove them first).
  Messages are signed either way, but over plain HTTP the personal data in them (names, ID
  numbers, a certificate) crosses the network readable by anyone on the path.
- ``YIPANQI_CLOCK_OFFSET_SECONDS`` other than 0 (for tests and demos): signatures, deadlines and
  the evidence log's times must be the real ones (Settings refuses it, service/config.py).

``/docs`` and ``/metrics`` are served only when enabled: ``Settings.docs_served`` and
``Settings.metrics_served`` (by default on in development, off in production).
"""

from __future__ import annotations

from sqlmodel import Session, col, select

from service.config import Settings
from service.errors import ValidationFailed
from service.models import Peer

SECURE_SCHEME = "https://"


def check_peer_url(settings: Settings, url: str, field: str = "url") -> None:
    """Refuse a peer URL that is not https:// in production (a 422 naming ``field``)."""
    if settings.environment == "production" and not url.lower().startswith(SECURE_SCHEME):
        raise ValidationFailed(
            "in production a peer's URL must be https:// (plain http:// carries personal data in clear)",
            field=field,
        )


def insecure_peers(session: Session, settings: Settings) -> list[str]:
    """The node ids of stored peers whose URL production refuses (none outside production)."""
    if settings.environment != "production":
        return []
    peers = session.exec(select(Peer).order_by(col(Peer.node_id))).all()
    return [p.node_id for p in peers if not p.url.lower().startswith(SECURE_SCHEME)]


def check_stored_peers(session: Session, settings: Settings) -> None:
    """At start: a production node with an http:// peer does not start (RuntimeError naming them)."""
    bad = insecure_peers(session, settings)
    if bad:
        raise RuntimeError(
            "production refuses plain http:// peer URLs; give these peers https:// URLs "
            f"(yipanqi peers add) or remove them: {', '.join(bad)}"
        )
