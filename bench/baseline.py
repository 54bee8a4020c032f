"""The load bench's baseline: a plain FastAPI endpoint that parses the same JSON and inserts one row.

    python bench/baseline.py --port 8200 --database-url sqlite:////tmp/bench/baseline.db

What a node's peer endpoint cannot do without, and nothing else: read the body, ``json.loads`` it,
insert one row (the message id, type, sender, recipient, the time and the body bytes) in a
transaction of its own, and answer ``202`` with a small JSON body that names the message. No
signature is checked, no schema validated, nothing signed. It runs as the node does in ``yipanqi
serve``: ``uvicorn.run`` of the app, one worker, ``log_config=None``, no access log; a synchronous
endpoint in Starlette's thread pool; and the node's own engine factory (``service.db.make_engine``:
on SQLite the same pragmas — WAL, synchronous=NORMAL, busy_timeout — and ``BEGIN IMMEDIATE``; on
PostgreSQL the same pool). ``POST /peer/v1/batch`` takes ``{"items": ["<envelope>", …]}``
(docs/protocol.md §18) and inserts one row per message in one transaction, for the batch mode of
bench/load.py.
"""

# No ``from __future__ import annotations``: FastAPI reads the dependencies' Annotated aliases,
# defined inside create_app(), from the signatures at run time.
import argparse
import json
from collections.abc import Iterator
from typing import Annotated, Any

import uvicorn
from fastapi import Depends, FastAPI, Request, Response
from sqlalchemy import Column, LargeBinary, MetaData, String, Table, insert
from sqlalchemy.engine import Engine
from sqlmodel import Session

from service.clock import utcnow
from service.db import UTCDateTime, make_engine
from service.exchange.envelope import canonical_json, utc_text

metadata = MetaData()
bench_message = Table(
    "bench_message",
    metadata,
    Column("message_id", String(36), primary_key=True),
    Column("type", String(64), nullable=False),
    Column("sender", String(6), nullable=False),
    Column("recipient", String(6), nullable=False),
    Column("received_at", UTCDateTime(), nullable=False),
    Column("body", LargeBinary, nullable=False),
)


async def raw_body(request: Request) -> bytes:
    return await request.body()


def create_app(engine: Engine) -> FastAPI:
    metadata.create_all(engine)
    app = FastAPI(title="yipanqi load bench baseline", openapi_url=None, docs_url=None, redoc_url=None)

    def get_session() -> Iterator[Session]:  # as service.db.get_session: commit on success
        with Session(engine) as session:
            try:
                yield session
                session.commit()
            except Exception:
                session.rollback()
                raise

    SessionDep = Annotated[Session, Depends(get_session)]
    BodyDep = Annotated[bytes, Depends(raw_body)]

    def row(message: dict[str, Any], body: bytes, now: Any) -> dict[str, Any]:
        return {
            "message_id": message["message_id"],
            "type": message["type"],
            "sender": message["sender"],
            "recipient": message["recipient"],
            "received_at": now,
            "body": body,
        }

    def answer(message_id: str, now: Any, **extra: Any) -> Response:
        content = canonical_json(
            {"message_id": message_id, "status": "accepted", "received_at": utc_text(now), **extra}
        )
        return Response(content, status_code=202, media_type="application/json")

    @app.post("/peer/v1/verification-requests")
    def single(body: BodyDep, session: SessionDep) -> Response:
        message, now = json.loads(body.decode("utf-8")), utcnow()
        session.execute(insert(bench_message), [row(message, body, now)])
        return answer(message["message_id"], now)

    @app.post("/peer/v1/batch")
    def batch(body: BodyDep, session: SessionDep) -> Response:
        items, now = json.loads(body.decode("utf-8"))["items"], utcnow()
        messages = [json.loads(item) for item in items]
        rows = [row(m, item.encode("utf-8"), now) for m, item in zip(messages, items, strict=True)]
        session.execute(insert(bench_message), rows)
        return answer(messages[0]["message_id"], now, count=len(rows))

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--database-url", required=True)
    args = parser.parse_args()
    engine = make_engine(args.database_url)
    uvicorn.run(create_app(engine), host="127.0.0.1", port=args.port, log_config=None, access_log=False)


if __name__ == "__main__":
    main()
