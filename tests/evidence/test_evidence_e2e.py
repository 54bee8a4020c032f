"""A real exchange between two node processes leaves entries on both sides that verify (the origin's
side of a certificate look-up included); the CLI exports a bundle a third party checks offline, and
a deleted entry makes `audit verify` fail."""

from __future__ import annotations

import subprocess
import sys
from datetime import timedelta
from functools import partial

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

from service.clock import utcnow
from service.localnet import LocalNode, wait_for
from service.sla.deadlines import SHANGHAI
from tests.certificates.test_lookups_e2e import look, migrant
from tests.conftest import NetworkFactory
from tests.evidence.test_bundle import offline
from tests.notifications.test_notifications_e2e import find, send


def _start_patiently(node: LocalNode) -> None:
    ready = node.wait_ready
    node.wait_ready = partial(ready, timeout=120.0)  # type: ignore[method-assign]
    try:
        LocalNode.start(node)
    finally:
        node.wait_ready = ready  # type: ignore[method-assign]


def audit(node: LocalNode, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", "audit", *args],
        env=node.env,
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.slow
def test_an_exchange_is_evidence_on_both_sides(network: NetworkFactory) -> None:
    host, origin = network(start=False)
    for node in (host, origin):  # a node on a busy 2-core machine may take longer than 30 s to start
        node.start = partial(_start_patiently, node)  # type: ignore[method-assign]
        node.start()
    sent = send(host, origin, "arrival")
    number = migrant(host, origin, 7, 0, 0)
    assert look(host, number, "residence_check")["found"] is True  # the origin's signed answer
    wait_for(lambda: find(host, sent["message_id"], "delivered"))
    wait_for(lambda: find(origin, sent["message_id"], "received"))

    for node in (host, origin):
        signed = audit(node, "checkpoint")
        assert signed.returncode == 0, signed.stdout + signed.stderr
        assert "signed a checkpoint of entry" in signed.stdout
    checked = audit(host, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The host sent the 通报: its own signed request and the origin's receipt bound to it; and it
    # asked for the certificate: the origin's answer bound to that request.
    assert "2 entries (seq 1–2), 3 signatures verified, 1 signed checkpoints verified" in checked.stdout
    assert "evidence log verifies" in checked.stdout
    assert "note" not in checked.stdout
    checked = audit(origin, "verify")
    assert checked.returncode == 0, checked.stdout + checked.stderr
    # The host's 通报 request; and the look-up it answered: the host's signed request and its own
    # answer bound to it (the answer's signature kept once signed), digests only, no body.
    assert "2 entries (seq 1–2), 3 signatures verified, 1 signed checkpoints verified" in checked.stdout
    assert "note" not in checked.stdout
    engine = create_engine(origin.database_url, poolclass=NullPool)
    try:
        with engine.connect() as conn:
            query = text("SELECT * FROM evidence_entry WHERE kind = 'lookup_answered'")
            kept = conn.execute(query).mappings().one()
    finally:
        engine.dispose()
    assert (kept["kind"], kept["peer"], kept["answer_status"]) == ("lookup_answered", host.node_id, 200)
    assert str(kept["answer_keyid"]).startswith(f"{origin.node_id}/")
    assert number not in str(dict(kept))

    today = utcnow().astimezone(SHANGHAI).date()
    bundle = host.data_dir / "evidence.json"
    exported = audit(
        host, "export", "--from", str(today - timedelta(days=1)), "--to", str(today), "--out", str(bundle)
    )
    assert exported.returncode == 0, exported.stdout + exported.stderr
    assert "2 entries in range" in exported.stdout
    checked = audit(host, "verify", "--bundle", str(bundle))
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert offline(bundle).returncode == 0

    # Someone removes the origin's record of having received it.
    engine = create_engine(origin.database_url, poolclass=NullPool)
    try:
        with engine.begin() as conn:
            conn.execute(text("DELETE FROM evidence_entry"))
    finally:
        engine.dispose()
    checked = audit(origin, "verify")
    assert checked.returncode == 1
    assert "first broken entry: 1" in checked.stdout
