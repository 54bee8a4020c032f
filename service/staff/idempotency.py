"""``Idempotency-Key`` on the staff API's writes that create something (IETF httpapi draft).

A client that did not get an answer (a lost connection, a node killed, a 5xx, a 503) sends the
same request again with the same key; the node answers what it answered the first time and does
nothing a second time. A route uses it in three lines::

    @router.post("", status_code=201, response_model=CaseRead, responses=_errors(409, 422))
    def create(data: ..., staff: Actor, write: IdempotentWriteDep) -> Response:
        with write.transaction() as tx:          # the key row is written in this transaction
            case = service.create_outgoing(tx, ...)
            write.answer(service.get_case(tx, case.id))   # serialised and stored before the commit
        write.after_commit(audit, staff, "verification.create", f"case:{case.id}")
        return write.response                    # bytes made before the commit: nothing can fail

Semantics (per staff account; keys are the account's own):

- no key: as before, one write per request;
- a new key: the write and the key row (the answer's status and JSON body, the request's
  SHA-256 fingerprint) commit together, or neither does: there is never a key without its effect
  or an effect without its key; an error answer (4xx, 5xx) stores nothing, so a retry runs again;
- the same key and the same request (method, path with query, body bytes): the stored answer,
  same status and body, with ``Idempotent-Replayed: true``; nothing is written;
- the same key with another request: ``422 idempotency_key_reused``;
- the same key while the first request is still in its transaction: the second waits for it (on
  SQLite for the writer lock, on PostgreSQL on the unique index) and then answers the first's
  answer; it never runs the write twice. ``409 idempotency_key_in_use`` only if the first
  answer cannot be read back (a key swept at that instant): try again.
- keys are kept ``YIPANQI_IDEMPOTENCY_KEY_HOURS`` (24 h) and then swept; an expired key is new;
- the database gone during the write (a connection refused or broken, the commit's answer
  lost): ``503 database_unavailable`` with ``Retry-After``, not a 500: whether it committed is
  not known to the node, and the retry with the same key answers either way.

After the commit a route does nothing that can fail: the answer's bytes were made inside the
transaction (a failure there rolls the write back), and ``after_commit`` runs the audit line and
any other step so that an exception in it is logged, never answered as a 5xx.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Annotated, ParamSpec

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from sqlalchemy import delete
from sqlalchemy.exc import DBAPIError, IntegrityError, OperationalError
from sqlmodel import Session, col, select

from service.clock import utcnow
from service.config import get_settings
from service.db import read_session, transaction
from service.errors import DatabaseUnavailable, DomainError, ValidationFailed
from service.models import IdempotencyKey
from service.staff.dependencies import CurrentStaff

log = logging.getLogger(__name__)
P = ParamSpec("P")

HEADER = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"  # on a replayed answer (as Stripe and others name it)
KEY_MAX = 255
# sf-string characters (RFC 8941 §3.3.3): printable ASCII; a bare key: token-like characters.
_BARE = frozenset("!#$%&'*+-.^_`|~:/=0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz")

HEADER_DESCRIPTION = (
    "A key unique to this request (a UUID), so that it can be retried safely: the same key with "
    "the same request answers the first answer again (`Idempotent-Replayed: true`) and does "
    'nothing twice. An RFC 8941 sf-string (`"…"`) or a bare token, at most 255 characters; kept '
    "24 hours per account. The same key with another request: 422 idempotency_key_reused."
)


class IdempotencyKeyReused(DomainError):
    status_code = 422
    code = "idempotency_key_reused"
    title = "Idempotency-Key already used for another request"


class IdempotencyKeyInUse(DomainError):
    status_code = 409
    code = "idempotency_key_in_use"
    title = "A request with this Idempotency-Key is in progress"


class Replay(Exception):
    """The key's first answer, raised before the write so that the route does not run again."""

    def __init__(self, status: int, body: bytes) -> None:
        super().__init__(status)
        self.status = status
        self.body = body

    def response(self) -> Response:
        return Response(
            self.body, status_code=self.status, media_type="application/json", headers={REPLAYED: "true"}
        )


def replay_response(_request: Request, exc: Exception) -> Response:
    """The exception handler (service/main.py) that answers a replay."""
    assert isinstance(exc, Replay)
    return exc.response()


def parse_key(raw: str) -> str:
    """An RFC 8941 sf-string (``"8e03978e-…"``, as the draft writes it) or a bare token."""
    value = raw.strip(" \t")
    if value.startswith('"'):
        if len(value) < 2 or not value.endswith('"'):
            raise _invalid()
        chars: list[str] = []
        inner, i = value[1:-1], 0
        while i < len(inner):
            char = inner[i]
            if char == "\\":
                i += 1
                if i == len(inner) or inner[i] not in '"\\':
                    raise _invalid()
                char = inner[i]
            elif char == '"' or not " " <= char <= "~":
                raise _invalid()
            chars.append(char)
            i += 1
        key = "".join(chars)
    else:
        key = value
        if not set(key) <= _BARE:
            raise _invalid()
    if not 1 <= len(key) <= KEY_MAX:
        raise _invalid()
    return key


def _invalid() -> DomainError:
    return ValidationFailed(
        f'{HEADER} must be an sf-string ("…") or a token of 1-{KEY_MAX} printable ASCII characters',
        errors=[{"field": HEADER, "reason": "not a valid key"}],
    )


def fingerprint(method: str, target: str, body: bytes) -> str:
    """SHA-256 of the method, the path with its query and the body's bytes."""
    digest = hashlib.sha256(f"{method.upper()} {target}\n".encode())
    digest.update(body)
    return digest.hexdigest()


class _Taken(Exception):
    """The key was committed by another request meanwhile (the unique index said so)."""


@dataclass
class IdempotentWrite:
    """One staff write and its (optional) key; made per request by ``idempotent_write``."""

    staff_id: int
    key: str | None
    route: str  # "POST /api/v1/verification-requests"
    fingerprint: str
    status_code: int
    hours: int
    _response: Response | None = field(default=None, init=False)
    _row: IdempotencyKey | None = field(default=None, init=False)

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        """``service.db.transaction()`` with the key's row in it; replays instead when the key is known.

        The database gone (a connection refused or broken, the commit's answer lost): ``503`` with
        ``Retry-After``, never a 500: the write may have committed, and the same request with the
        same key answers what it did."""
        try:
            if self.key is None:
                with transaction() as tx:
                    yield tx
                    self._check_answered()
                return
            self._replay_if_known()  # a plain read first: a retry takes no write lock
            try:
                with transaction() as tx:
                    self._claim(tx)
                    yield tx
                    self._check_answered()
            except _Taken:
                self._replay_if_known()
                raise IdempotencyKeyInUse("a request with this key is in progress; try again") from None
        except DBAPIError as exc:
            if isinstance(exc, IntegrityError) or not (
                isinstance(exc, OperationalError) or exc.connection_invalidated
            ):
                raise
            raise DatabaseUnavailable(
                f"the database did not answer; whether this write was stored is not known: send it again "
                f"with the same {HEADER} (without one, look for it first)",
                retry_after=2,
            ) from exc

    def answer(self, result: BaseModel) -> None:
        """Inside the transaction: the answer's bytes, stored with the key, committed with the write."""
        body = bytes(JSONResponse(result.model_dump(mode="json", by_alias=True)).body)
        self._response = Response(body, status_code=self.status_code, media_type="application/json")
        if self._row is not None:
            session = Session.object_session(self._row)
            assert session is not None
            self._row.response_status, self._row.response_body = self.status_code, body
            session.add(self._row)
            session.flush()

    @property
    def response(self) -> Response:
        """The answer made in the transaction (no serialisation after the commit)."""
        assert self._response is not None, "answer() was not called in the transaction"
        return self._response

    def after_commit(self, step: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
        """Run a step after the commit (the audit line) that can never fail the answer."""
        after_commit(step, *args, **kwargs)

    # --- inside --------------------------------------------------------------------------------

    def _check_answered(self) -> None:
        if self._response is None:
            raise RuntimeError("an idempotent write must call answer() inside its transaction")

    def _cutoff(self) -> datetime:
        return utcnow() - timedelta(hours=self.hours)

    def _replay_if_known(self) -> None:
        with read_session() as session:
            row = session.exec(
                select(IdempotencyKey).where(
                    IdempotencyKey.staff_id == self.staff_id,
                    IdempotencyKey.key == self.key,
                    col(IdempotencyKey.created_at) >= self._cutoff(),
                )
            ).first()
            if row is None:
                return
            if row.fingerprint != self.fingerprint:
                raise IdempotencyKeyReused(
                    f"this {HEADER} was used for another request ({row.route}, or another body); "
                    "use a new key for a new request"
                )
            status, body = row.response_status, bytes(row.response_body)
        log.info("idempotent replay route=%s staff_id=%s", self.route, self.staff_id)
        raise Replay(status, body)

    def _claim(self, tx: Session) -> None:
        """The key's row, first in the transaction: a concurrent request with the same key waits
        here on the unique index (PostgreSQL) until this one commits or rolls back."""
        now = utcnow()
        tx.execute(
            delete(IdempotencyKey).where(
                col(IdempotencyKey.staff_id) == self.staff_id,
                col(IdempotencyKey.key) == self.key,
                col(IdempotencyKey.created_at) < self._cutoff(),
            )
        )
        assert self.key is not None
        row = IdempotencyKey(
            staff_id=self.staff_id,
            key=self.key,
            route=self.route,
            fingerprint=self.fingerprint,
            response_status=0,  # set by answer() before the commit
            response_body=b"",
            created_at=now,
        )
        tx.add(row)
        try:
            tx.flush()
        except IntegrityError as exc:
            raise _Taken from exc
        self._row = row


async def idempotent_write(
    request: Request,
    staff: CurrentStaff,
    idempotency_key: Annotated[str | None, Header(alias=HEADER, description=HEADER_DESCRIPTION)] = None,
) -> IdempotentWrite:
    """The route's write and its key (the body is already read by FastAPI: it is hashed here)."""
    route = request.scope.get("route")
    template = getattr(route, "path", request.url.path)
    status_code = getattr(route, "status_code", None) or 200
    key = parse_key(idempotency_key) if idempotency_key is not None else None
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    body = await request.body() if key is not None else b""
    assert staff.id is not None
    return IdempotentWrite(
        staff_id=staff.id,
        key=key,
        route=f"{request.method} {template}",
        fingerprint=fingerprint(request.method, target, body) if key is not None else "",
        status_code=status_code,
        hours=get_settings().idempotency_key_hours,
    )


IdempotentWriteDep = Annotated[IdempotentWrite, Depends(idempotent_write)]


def after_commit(step: Callable[P, object], *args: P.args, **kwargs: P.kwargs) -> None:
    """Run a step after a write's commit (the audit line, for the API and the console alike): if
    it fails, the committed write still answers what it did; the failure is logged (its type only:
    a message may carry data)."""
    try:
        step(*args, **kwargs)
    except Exception as exc:
        with contextlib.suppress(Exception):  # a broken log handler: nothing more to do
            log.error(
                "a step after the commit failed; the write stands step=%s error=%s",
                _name(step),
                type(exc).__name__,
            )


def _name(step: Callable[..., object]) -> str:
    return str(getattr(step, "__qualname__", type(step).__name__))


# --- expiry --------------------------------------------------------------------------------------


def sweep_keys(session: Session, now: datetime, hours: int) -> int:
    """Forget keys older than ``hours``; returns how many."""
    result = session.execute(
        delete(IdempotencyKey).where(col(IdempotencyKey.created_at) < now - timedelta(hours=hours))
    )
    return int(getattr(result, "rowcount", 0) or 0)


def idempotency_sweep_job() -> None:
    with transaction() as session:
        removed = sweep_keys(session, utcnow(), get_settings().idempotency_key_hours)
    if removed:
        log.info("forgot expired idempotency keys count=%d", removed)
