"""The /peer/v1 routes: every response signed, every request authenticated and stored once."""

from __future__ import annotations

import json
import logging
import re
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel, Field
from sqlalchemy.exc import IntegrityError, OperationalError
from starlette.concurrency import run_in_threadpool

from service.clock import utcnow
from service.db import SessionDep, transaction
from service.errors import PROBLEM_JSON, DomainError, InvalidMessage, NotFound, Replayed, problem_responses
from service.evidence.record import ANSWER_STATE, keep_answer
from service.exchange import batch
from service.exchange.batch import BatchInfo, BatchResponse
from service.exchange.envelope import Receipt, canonical_json
from service.exchange.inbox import (
    Accepted,
    BatchBody,
    CheckedItem,
    PeerEndpoint,
    accept,
    accept_batch,
    answer,
    check_envelope,
    nonce_seen,
)
from service.exchange.security import PeerRequest, SettingsDep, SignerDep, VerifiedPeer
from service.signing.http import RequestBinding, content_digest, sign_response
from service.signing.node import NodeSigner, node_keys

log = logging.getLogger("yipanqi.security")

PEER_ERRORS = problem_responses(
    {
        400: "digest_mismatch",
        401: "signature_missing, signature_invalid, unknown_key, signature_expired",
        403: "sender_mismatch, recipient_mismatch, forbidden",
        404: "unknown_request",
        409: "conflict, replayed",
        413: "payload_too_large",
        415: "unsupported_media_type",
        422: "invalid_message",
    }
)


# A synchronous endpoint's (a certificate look-up's) own refusals, beside PEER_ERRORS.
ANSWER_ERRORS = problem_responses(
    {
        403: "sender_mismatch, recipient_mismatch, forbidden, no_standing (the asking node has no "
        "standing for the person and purpose: the same answer whether she is registered or not)",
        429: "rate_limited (more look-ups from this node than its rate or number at once; Retry-After)",
    }
)


DUPLICATE: dict[int | str, dict[str, Any]] = {
    200: {"description": "duplicate of a message already received", "model": Receipt}
}


def request_binding(request: Request | None) -> RequestBinding | None:
    """What an answer to ``request`` is bound to (RFC 9421 ``req``, docs/protocol.md section 6.1):
    its path, Content-Digest and ``yp`` signature as received; None for a request without them."""
    if request is None:
        return None
    raw_path = request.scope.get("raw_path")
    path = raw_path.decode("latin-1") if raw_path else request.url.path
    return RequestBinding.of_request(path, request.headers.items())


def signed(response: Response, signer: NodeSigner, request: Request | None = None) -> Response:
    """``response`` signed with the node's key, bound to ``request`` when it carries a signature.

    Needs no database (the key is in memory): an outage's 500 is signed like any answer."""
    headers = sign_response(
        status=response.status_code,
        body=bytes(response.body),
        key=signer.private_key,
        keyid=signer.keyid,
        created=utcnow(),
        content_type=response.headers["content-type"],
        request=request_binding(request),
    )
    for name, value in headers.items():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def problem_response(error: DomainError) -> Response:
    body = canonical_json(error.problem())
    return Response(body, status_code=error.status_code, media_type=PROBLEM_JSON, headers=error.headers())


def _outcome(route_status: int | None, status: int) -> str:
    """accepted (stored, 202), duplicate (a retry, 200), answered (a synchronous 200) or rejected."""
    if status == 202:
        return "accepted"
    if status == 200:
        return "answered" if route_status == 200 else "duplicate"
    return "rejected"


class SignedPeerRoute(APIRoute):
    """Renders errors as problem+json and signs every response, errors included."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        original = super().get_route_handler()

        async def handler(request: Request) -> Response:
            outcome = "rejected"
            try:
                response = await original(request)
                outcome = _outcome(self.status_code, response.status_code)
            except (DomainError, RequestValidationError) as exc:
                bad_path = InvalidMessage("path parameter does not validate")
                error = exc if isinstance(exc, DomainError) else bad_path
                log.warning(
                    "peer request rejected code=%s status=%d endpoint=%s client=%s",
                    error.code,
                    error.status_code,
                    self.path_format,  # the template, not the path: a peer may put anything there
                    request.client.host if request.client else "-",
                )
                response = problem_response(error)
            metrics = getattr(request.app.state, "metrics", None)
            if metrics is not None:  # the route's name is its message type (build_peer_router)
                metrics.incoming(self.name, outcome)
            response = signed(response, request.app.state.signer, request)
            answered = getattr(request.state, ANSWER_STATE, None)
            if answered is not None:  # a look-up answered as origin: its answer's signature, kept
                await run_in_threadpool(keep_answer, None, answered, list(response.headers.items()))
            return response

        return handler


class NodeKeyInfo(BaseModel):
    keyid: str
    public_key: str
    not_before: str | None
    not_after: str | None


class NodeInfo(BaseModel):
    node_id: str
    name: str
    keys: list[NodeKeyInfo]
    protocol: str = "yipanqi/1"
    capabilities: list[str] = Field(
        default_factory=list, description='optional endpoints this node serves: "batch" (POST /peer/v1/batch)'
    )
    batch: BatchInfo | None = Field(
        default=None, description='the batch limits, when "batch" is a capability'
    )


def _accept_once(
    endpoint: PeerEndpoint,
    peer: PeerRequest,
    settings: Any,
    local_node: str,
    path_id: str | None,
) -> Accepted:
    """Check the message, then store it in one short transaction, committed before the receipt
    leaves (a receipt is a promise). A concurrent copy of the same message loses the race on the
    primary key and becomes a duplicate; a rejected request stores nothing (not even its nonce)."""
    try:
        envelope = check_envelope(
            endpoint, peer.body, peer.signature, local_node=local_node, path_request_id=path_id
        )
    except DomainError:
        if nonce_seen(peer.signature):  # rule 7 comes before rule 8: a replay is a replay
            raise Replayed("this (keyid, nonce) was already used") from None
        raise
    expires = peer.signature.expires or utcnow()
    keep_until = expires + timedelta(seconds=settings.clock_skew_seconds)
    for attempt in range(2):
        try:
            with transaction() as session:
                if endpoint.synchronous:
                    return answer(
                        session,
                        endpoint,
                        envelope,
                        signature=peer.signature,
                        now=utcnow(),
                        nonce_keep_until=keep_until,
                    )
                return accept(
                    session,
                    endpoint,
                    envelope,
                    body=peer.body,
                    signature=peer.signature,
                    now=utcnow(),
                    nonce_keep_until=keep_until,
                )
        except IntegrityError:
            if attempt:
                raise
    raise AssertionError("unreachable")


def _answered(accepted: Accepted) -> Response:
    return Response(accepted.body, status_code=accepted.status_code, media_type=accepted.media_type)


def _route(endpoint: PeerEndpoint) -> Callable[..., Response]:
    if endpoint.admit is not None:
        admit = endpoint.admit

        # Admitted (a per-peer limit) after the signature and before any transaction or parsing.
        def limited(
            request: Request, peer: VerifiedPeer, settings: SettingsDep, signer: SignerDep
        ) -> Response:
            with admit(request, peer.node_id):
                return _answered(_accept_once(endpoint, peer, settings, signer.node_id, None))

        return limited

    if endpoint.correlated:

        def correlated(
            request_id: UUID, peer: VerifiedPeer, settings: SettingsDep, signer: SignerDep
        ) -> Response:
            accepted = _accept_once(endpoint, peer, settings, signer.node_id, str(request_id))
            return Response(accepted.body, status_code=accepted.status_code, media_type="application/json")

        # The path names its id as PROTOCOL.md does ({request_id}, {notification_id}, ...).
        (name,) = re.findall(r"\{(\w+)\}", endpoint.path)
        correlated.__annotations__["request_id"] = Annotated[UUID, Path(alias=name)]
        return correlated

    def plain(peer: VerifiedPeer, settings: SettingsDep, signer: SignerDep) -> Response:
        return _answered(_accept_once(endpoint, peer, settings, signer.node_id, None))

    return plain


def build_peer_router(endpoints: Sequence[PeerEndpoint]) -> APIRouter:
    router = APIRouter(prefix="/peer/v1", tags=["peer"])

    @router.get(
        "/node",
        response_model=NodeInfo,
        summary="This node's identity and public keys (signed, but its keys are trusted only out of band)",
    )
    def node_info(
        request: Request, session: SessionDep, signer: SignerDep, settings: SettingsDep
    ) -> Response:
        keys = [
            NodeKeyInfo(
                keyid=k.keyid,
                public_key=k.public_key,
                not_before=k.not_before.isoformat() if k.not_before else None,
                not_after=k.not_after.isoformat() if k.not_after else None,
            )
            for k in node_keys(session)
        ]
        info = NodeInfo(node_id=signer.node_id, name=signer.name, keys=keys)
        if settings.peer_batch_enabled:
            limits = BatchInfo(
                max_items=settings.peer_batch_max_items, max_body_bytes=settings.max_body_bytes
            )
            info = NodeInfo(
                node_id=signer.node_id,
                name=signer.name,
                keys=keys,
                capabilities=[batch.CAPABILITY],
                batch=limits,
            )
        body = canonical_json(info.model_dump(mode="json"))
        return signed(Response(body, media_type="application/json"), signer, request)  # like every answer

    signed_router = APIRouter(route_class=SignedPeerRoute)
    for endpoint in endpoints:
        signed_router.add_api_route(
            endpoint.path,
            _route(endpoint),
            methods=["POST"],
            status_code=200 if endpoint.synchronous else 202,
            summary=endpoint.summary or endpoint.message_type,
            operation_id=endpoint.message_type.replace(".", "_"),
            name=endpoint.message_type,
            response_model=endpoint.response_model if endpoint.synchronous else Receipt,
            responses=(
                {**PEER_ERRORS, **ANSWER_ERRORS} if endpoint.synchronous else {**DUPLICATE, **PEER_ERRORS}
            ),
            openapi_extra={
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {"$ref": f"#/components/schemas/{envelope_schema_name(endpoint)}"}
                        }
                    },
                }
            },
        )
    asynchronous = {e.message_type: e for e in endpoints if not e.synchronous}
    signed_router.add_api_route(
        batch.PATH,
        _batch_route(asynchronous),
        methods=["POST"],
        status_code=200,
        summary="Many asynchronous messages in one request, each answered on its own (section 18)",
        operation_id="batch",
        name="batch",
        response_model=BatchResponse,
        responses={
            200: {"description": "one signed result per item, in order"},
            **BATCH_ERRORS,
        },
        openapi_extra={
            "requestBody": {
                "required": True,
                "content": {
                    "application/json": {
                        "schema": batch.request_schema(
                            list(asynchronous),
                            lambda t: f"#/components/schemas/{envelope_schema_name(asynchronous[t])}",
                        )
                    }
                },
            }
        },
    )
    router.include_router(signed_router)
    return router


BATCH_ERRORS = problem_responses(
    {
        400: "digest_mismatch",
        401: "signature_missing, signature_invalid, unknown_key, signature_expired",
        404: "not_found (the node does not serve batches: it does not advertise the capability)",
        409: "replayed",
        413: "payload_too_large (the body, or more items than the node's max_items)",
        415: "unsupported_media_type",
        422: 'invalid_message (not a batch: not JSON, not {"items": [string, …]}, or no items)',
    }
)


def _batch_route(endpoints: dict[str, PeerEndpoint]) -> Callable[..., Response]:
    def batch_of_messages(
        request: Request, peer: VerifiedPeer, settings: SettingsDep, signer: SignerDep
    ) -> Response:
        if not settings.peer_batch_enabled:
            raise NotFound("no such path")
        answers = _accept_batch(endpoints, peer, settings, signer.node_id)
        metrics = getattr(request.app.state, "metrics", None)
        if metrics is not None:  # each item as its own endpoint counts it (the batch counts too)
            for answer in answers:
                metrics.incoming(answer.message_type or "unknown", answer.outcome)
        refused = Counter(problem_code(a.body) for a in answers if a.status not in (200, 202))
        if refused:
            log.warning(
                "peer batch items rejected count=%d codes=%s endpoint=%s client=%s",
                sum(refused.values()),
                ",".join(f"{code}:{n}" for code, n in sorted(refused.items())),
                "/peer/v1" + batch.PATH,
                request.client.host if request.client else "-",
            )
        body = batch.response_body(
            answers,
            key=signer.private_key,
            keyid=signer.keyid,
            created=utcnow(),
            request=request_binding(request),
        )
        return Response(body, status_code=200, media_type="application/json")

    return batch_of_messages


# deadlock_detected, serialization_failure: the transaction lost to a concurrent one, nothing else.
RETRY_SQLSTATES = {"40P01", "40001"}


def problem_code(body: bytes) -> str:
    try:
        code = json.loads(body).get("code")
    except (ValueError, AttributeError):
        return "unknown"
    return code if isinstance(code, str) else "unknown"


def _accept_batch(
    endpoints: dict[str, PeerEndpoint], peer: PeerRequest, settings: Any, local_node: str
) -> list[batch.Answer]:
    """Check every item first (no transaction), then store the good ones in one short transaction,
    committed before the answer leaves; the answers in the items' order."""
    try:
        texts = batch.read_items(peer.body, settings.peer_batch_max_items)
    except DomainError:
        if nonce_seen(peer.signature):  # rule 7 comes before the batch's own checks, as before rule 8
            raise Replayed("this (keyid, nonce) was already used") from None
        raise
    checked = [batch.check_item(text, endpoints, peer.signature, local_node=local_node) for text in texts]
    good = [item for item in checked if isinstance(item, CheckedItem)]
    # The batch's body is kept with its accepted items (evidence of who sent them): its digest is
    # taken here, before the transaction.
    kept = BatchBody(peer.body, content_digest(peer.body)) if good else None
    expires = peer.signature.expires or utcnow()
    keep_until = expires + timedelta(seconds=settings.clock_skew_seconds)
    for attempt in range(2):
        try:
            with transaction() as session:
                outcomes = accept_batch(
                    session,
                    good,
                    signature=peer.signature,
                    now=utcnow(),
                    nonce_keep_until=keep_until,
                    kept=kept,
                )
            break
        except IntegrityError:  # a concurrent request stored one of them first: now a duplicate
            if attempt:
                raise
        except OperationalError as exc:  # PostgreSQL chose this batch to break a deadlock: once more
            if attempt or getattr(exc.orig, "sqlstate", None) not in RETRY_SQLSTATES:
                raise
    stored = iter(outcomes)
    answers = []
    for item in checked:
        if isinstance(item, CheckedItem):
            message_id, message_type = item.message_id, item.endpoint.message_type
            answers.append(batch.answer_of(next(stored), message_id, message_type))
        else:
            answers.append(batch.answer_of(item.error, item.message_id, item.message_type))
    return answers


def envelope_schema_name(endpoint: PeerEndpoint) -> str:
    return "Envelope_" + endpoint.message_type.replace(".", "_")
