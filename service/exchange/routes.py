"""The /peer/v1 routes: every response signed, every request authenticated and stored once."""

from __future__ import annotations

import logging
import re
from collections.abc import Callable, Coroutine, Sequence
from datetime import timedelta
from typing import Annotated, Any
from uuid import UUID

from fastapi import APIRouter, Path, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from pydantic import BaseModel
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from service.clock import utcnow
from service.db import SessionDep
from service.errors import PROBLEM_JSON, DomainError, InvalidMessage, problem_responses
from service.exchange.envelope import Receipt, canonical_json
from service.exchange.inbox import Accepted, PeerEndpoint, accept, answer
from service.exchange.security import PeerRequest, SettingsDep, SignerDep, VerifiedPeer
from service.signing.http import sign_response
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


DUPLICATE: dict[int | str, dict[str, Any]] = {
    200: {"description": "duplicate of a message already received", "model": Receipt}
}


def signed(response: Response, signer: NodeSigner) -> Response:
    headers = sign_response(
        status=response.status_code,
        body=bytes(response.body),
        key=signer.private_key,
        keyid=signer.keyid,
        created=utcnow(),
        content_type=response.headers["content-type"],
    )
    for name, value in headers.items():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def problem_response(error: DomainError) -> Response:
    return Response(canonical_json(error.problem()), status_code=error.status_code, media_type=PROBLEM_JSON)


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
            return signed(response, request.app.state.signer)

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


def _accept_once(
    session: Session,
    endpoint: PeerEndpoint,
    peer: PeerRequest,
    settings: Any,
    local_node: str,
    path_id: str | None,
) -> Accepted:
    """Accept and commit; a concurrent copy of the same message loses the race and becomes a duplicate."""
    for attempt in range(2):
        now = utcnow()
        expires = peer.signature.expires or now
        keep_until = expires + timedelta(seconds=settings.clock_skew_seconds)
        try:
            if endpoint.synchronous:
                accepted = answer(
                    session,
                    endpoint,
                    body=peer.body,
                    signature=peer.signature,
                    local_node=local_node,
                    now=now,
                    nonce_keep_until=keep_until,
                )
            else:
                accepted = accept(
                    session,
                    endpoint,
                    body=peer.body,
                    signature=peer.signature,
                    local_node=local_node,
                    path_request_id=path_id,
                    now=now,
                    nonce_keep_until=keep_until,
                )
            session.commit()  # before the receipt leaves: a receipt is a promise
            return accepted
        except DomainError:
            # SignedPeerRoute turns the error into a response, so the session dependency sees no
            # exception and would commit what accept() flushed (the nonce): nothing of a rejected
            # request may be stored.
            session.rollback()
            raise
        except IntegrityError:
            session.rollback()
            if attempt:
                raise
    raise AssertionError("unreachable")


def _route(endpoint: PeerEndpoint) -> Callable[..., Response]:
    if endpoint.correlated:

        def correlated(
            request_id: UUID,
            peer: VerifiedPeer,
            session: SessionDep,
            settings: SettingsDep,
            signer: SignerDep,
        ) -> Response:
            accepted = _accept_once(session, endpoint, peer, settings, signer.node_id, str(request_id))
            return Response(accepted.body, status_code=accepted.status_code, media_type="application/json")

        # The path names its id as PROTOCOL.md does ({request_id}, {notification_id}, ...).
        (name,) = re.findall(r"\{(\w+)\}", endpoint.path)
        correlated.__annotations__["request_id"] = Annotated[UUID, Path(alias=name)]
        return correlated

    def plain(peer: VerifiedPeer, session: SessionDep, settings: SettingsDep, signer: SignerDep) -> Response:
        accepted = _accept_once(session, endpoint, peer, settings, signer.node_id, None)
        return Response(accepted.body, status_code=accepted.status_code, media_type="application/json")

    return plain


def build_peer_router(endpoints: Sequence[PeerEndpoint]) -> APIRouter:
    router = APIRouter(prefix="/peer/v1", tags=["peer"])

    @router.get("/node", response_model=NodeInfo, summary="This node's identity and public keys (unsigned)")
    def node_info(session: SessionDep, signer: SignerDep) -> NodeInfo:
        keys = [
            NodeKeyInfo(
                keyid=k.keyid,
                public_key=k.public_key,
                not_before=k.not_before.isoformat() if k.not_before else None,
                not_after=k.not_after.isoformat() if k.not_after else None,
            )
            for k in node_keys(session)
        ]
        return NodeInfo(node_id=signer.node_id, name=signer.name, keys=keys)

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
            responses=PEER_ERRORS if endpoint.synchronous else {**DUPLICATE, **PEER_ERRORS},
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
    router.include_router(signed_router)
    return router


def envelope_schema_name(endpoint: PeerEndpoint) -> str:
    return "Envelope_" + endpoint.message_type.replace(".", "_")
