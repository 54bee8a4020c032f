"""What a test's signed request binds its answer to (docs/protocol.md section 6.1)."""

from __future__ import annotations

import httpx
from sqlalchemy import text

from service.db import make_engine
from service.signing.http import RequestBinding


def binding_of(request: httpx.Request) -> RequestBinding | None:
    """The binding of the request ``request`` (as sent); None if it was not signed (its answer is
    then signed for itself alone)."""
    return RequestBinding.of_request(request.url.raw_path.decode("ascii"), request.headers.multi_items())


def stored_binding(database_url: str, message_id: str) -> RequestBinding | None:
    """The binding of the attempt that delivered outbox message ``message_id``, as the sender's
    evidence log keeps it (``evidence_sent_request``): what its stored receipt is bound to."""
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            row = conn.execute(
                text("SELECT path, digest, signature FROM evidence_sent_request WHERE message_id = :m"),
                {"m": message_id},
            ).first()
    finally:
        engine.dispose()
    if row is None:
        return None
    return RequestBinding.of_request(row.path, [("Content-Digest", row.digest), ("Signature", row.signature)])
