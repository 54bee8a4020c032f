"""A real node process: it fetches its signed directory on schedule, and reports a lapsed one."""

from __future__ import annotations

import json
from datetime import timedelta

import httpx
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from service.clock import utcnow
from service.localnet import wait_for
from tests.conftest import NetworkFactory, clock_offset
from tests.directory.conftest import Authority, Publisher, peer_entry


def test_the_node_fetches_the_directory_and_degrades_when_it_lapses(
    sqlite_network: NetworkFactory, publisher: Publisher
) -> None:
    (node,) = sqlite_network([("410105", "金水区")], start=False)
    authority = Authority()
    keyid, public_key = node.public_key.split("=", 1)
    own = {
        "node_id": "410105",
        "name": "金水区",
        "url": node.url,
        "keys": [{"keyid": keyid, "public_key": public_key}],
    }
    taikang = peer_entry("411627", "太康县", ("k1", Ed25519PrivateKey.generate(), None, None))
    publisher.body = authority.sign(
        1, [own, taikang], issued_at=utcnow() - timedelta(hours=1), valid=timedelta(days=10)
    )
    node.env_extra.update(
        YIPANQI_DIRECTORY_URL=publisher.url,
        YIPANQI_DIRECTORY_AUTHORITY_KEYS=json.dumps([authority.trusted]),
    )
    node.start()

    def readiness() -> dict[str, object]:
        response = httpx.get(f"{node.url}/readyz", timeout=10)
        assert response.status_code == 200  # degraded or not, the node keeps serving
        body: dict[str, object] = response.json()
        return body

    ready = wait_for(lambda: (r := readiness())["checks"]["directory"].startswith("ok") and r)  # type: ignore[union-attr]
    assert ready["status"] == "ready"
    assert ready["checks"]["directory"] == "ok: version 1"  # type: ignore[index]
    listed = node.cli("peers", "list")
    assert "411627" in listed
    assert "太康县" in listed
    node.stop()

    # Eleven days on, the authority has published nothing newer: the node keeps the last valid
    # directory, says so, and refuses the stale document its fetch brings back.
    node.env_extra["YIPANQI_CLOCK_OFFSET_SECONDS"] = clock_offset(timedelta(days=11))
    node.start()
    lapsed = readiness()
    assert lapsed["status"] == "degraded"
    assert str(lapsed["checks"]["directory"]).startswith("expired: version 1 expired at")  # type: ignore[index]
    assert node.log_path is not None
    log_path = node.log_path
    wait_for(lambda: "signed directory fetched and refused" in log_path.read_text(encoding="utf-8"))
    assert "411627" in node.cli("peers", "list")
