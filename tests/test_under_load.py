"""A burst at one real node: 256 signed peer requests, 40 wrong staff tokens and 40 bad signatures.

Issue 8's "done means": every request is answered without a 5xx, the node stores exactly one
inbox row for each 202 it answered (and nothing for what it refused), and a valid staff request
made in the middle of the burst is answered. How fast is the bench's business (bench/), not this
test's: it checks what happened, never how long it took.
"""

from __future__ import annotations

import asyncio
from collections import Counter

import httpx
import uuid6
from sqlalchemy import text

from service.clock import utcnow
from service.db import make_engine, read_session
from service.exchange.envelope import envelope_body
from service.localnet import LocalNode
from service.models import Priority, Topic
from service.signing.http import sign_request
from service.signing.node import NodeSigner, load_signer
from service.subjects import Subject
from service.verification.schemas import RequestPayload
from service.verification.service import REQUEST
from tests.conftest import NetworkFactory

PATH = "/peer/v1/verification-requests"
PEER_REQUESTS = 256
WRONG_TOKENS = 40
BAD_SIGNATURES = 40
PAYLOAD = RequestPayload(
    subject=Subject(id_number="411627199503080024", name="王秀英", sex="F", birth_date="1995-03-08"),  # type: ignore[arg-type]
    topic=Topic.marital_status,
    priority=Priority.normal,
    key_target=False,
    question="请核实该对象婚育情况。",
)


def _signer(node: LocalNode) -> NodeSigner:
    engine = make_engine(node.database_url)
    try:
        with read_session(engine) as session:
            return load_signer(session, node.data_dir / "keys")
    finally:
        engine.dispose()


def _signed(signer: NodeSigner, recipient: str) -> tuple[str, bytes, dict[str, str]]:
    message_id = uuid6.uuid7()
    body = envelope_body(
        message_id=message_id,
        type=REQUEST,
        sender=signer.node_id,
        recipient=recipient,
        sent_at=utcnow(),
        correlation_id=None,
        payload=PAYLOAD,
    )
    headers = sign_request(
        method="POST", path=PATH, body=body, key=signer.private_key, keyid=signer.keyid, created=utcnow()
    )
    return str(message_id), body, headers


def _inbox_rows(node: LocalNode, message_ids: list[str]) -> int:
    engine = make_engine(node.database_url)
    try:
        with read_session(engine) as session:
            rows = session.execute(text("SELECT message_id FROM inbox_message")).scalars().all()
    finally:
        engine.dispose()
    return len(set(rows) & set(message_ids))


def _forged(signer: NodeSigner, recipient: str) -> tuple[str, bytes, dict[str, str]]:
    """Signed, then changed: the signature no longer covers the body's digest."""
    message_id, body, headers = _signed(signer, recipient)
    signature = headers["Signature"]  # yp=:<base64 of 64 bytes>:
    middle = len(signature) // 2
    flipped = "A" if signature[middle] != "A" else "B"
    forged = signature[:middle] + flipped + signature[middle + 1 :]
    return message_id, body, {**headers, "Signature": forged}


async def _burst(
    host: LocalNode, requests: list[tuple[str, bytes, dict[str, str]]], wrong_token: str
) -> tuple[list[tuple[str, int]], list[int], int]:
    total = len(requests) + WRONG_TOKENS + 1
    limits = httpx.Limits(max_connections=total, max_keepalive_connections=0)
    async with httpx.AsyncClient(base_url=host.url, limits=limits, timeout=120) as client:

        async def peer(message_id: str, body: bytes, headers: dict[str, str]) -> tuple[str, int]:
            response = await client.post(PATH, content=body, headers=headers)
            return message_id, response.status_code

        async def wrong() -> int:
            headers = {"Authorization": wrong_token}
            response = await client.get("/api/v1/verification-requests", headers=headers)
            return response.status_code

        async def valid() -> int:
            await asyncio.sleep(0)  # let the burst start first
            response = await client.get(
                "/api/v1/verification-requests", headers={"Authorization": f"Bearer {host.token}"}
            )
            return response.status_code

        peer_tasks = [asyncio.create_task(peer(*r)) for r in requests]
        wrong_tasks = [asyncio.create_task(wrong()) for _ in range(WRONG_TOKENS)]
        valid_status = await valid()
        return (
            list(await asyncio.gather(*peer_tasks)),
            list(await asyncio.gather(*wrong_tasks)),
            valid_status,
        )


def test_a_burst_is_answered_without_5xx_and_stored_exactly_once(network: NetworkFactory) -> None:
    asker, host = network()
    asker.stop()  # only its key is needed: the requests are made here
    signer = _signer(asker)
    requests = [_signed(signer, host.node_id) for _ in range(PEER_REQUESTS)]
    requests.append(requests[0])  # one retry of the same request: a replay, refused, stored once
    forged = [_forged(signer, host.node_id) for _ in range(BAD_SIGNATURES)]
    requests += forged
    # The operator has signed in before the flood (the office is at work); the flood names the
    # operator's own account, so that account's failures pass their limit: the known token still works.
    assert host.api("GET", "/api/v1/verification-requests").status_code == 200
    account = host.token.split("_")[1]
    wrong_token = f"Bearer yp_{account}_{'x' * 43}"

    peers, wrongs, valid = asyncio.run(_burst(host, requests, wrong_token))

    statuses = Counter(status for _, status in peers)
    assert all(status < 500 for status in statuses), statuses
    assert all(status < 500 for status in wrongs), Counter(wrongs)
    assert set(wrongs) <= {401, 429}, Counter(wrongs)
    assert valid == 200, valid
    accepted = {message_id for message_id, status in peers if status == 202}
    assert statuses[202] == PEER_REQUESTS, statuses
    assert statuses[409] == 1, statuses  # the copy is a replay
    assert statuses[401] == BAD_SIGNATURES, statuses
    assert _inbox_rows(host, [m for m, _, _ in requests]) == len(accepted)
