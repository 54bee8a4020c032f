"""The signed directory in the node: import (from a file or a URL), the one in force, its expiry.

Policy (the operators' page, docs/security/directory.md):

- Import verifies the signature and the form first, with no transaction open; then, in one short
  transaction, refuses a version lower than the one in force (never a rollback), takes the same
  version with the same digest as a no-op and refuses it with another digest, and replaces every
  peer and key with the document's (this node's own entry is skipped: a node never trusts itself).
- Once a signed directory is in force, local edits (``peers add|remove``, retiring a key in the
  console) are refused: the authority's document is the one source of trust.
- Expiry: from ``directory_warn_days`` before ``expires_at`` the node warns (log, /readyz detail);
  after it the node keeps using the last valid directory, /readyz says ``degraded``, and no key
  becomes valid any more: a key whose ``not_before`` is at or after the expiry is not trusted
  until a newer document lists it again (service/directory/service.py, ``_lapsed``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

import httpx
from sqlalchemy import func
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service import production
from service.clock import utcnow
from service.config import Settings
from service.db import read_session, transaction
from service.directory.authority import parse_authority_keys
from service.directory.document import (
    DirectoryRefused,
    VerifiedDirectory,
    check_times,
    time_text,
    verify_document,
)
from service.errors import Conflict
from service.models import DirectoryDocument, LocalNode, Peer, PeerKey
from service.snapshots import mark_changed

log = logging.getLogger("yipanqi.directory")

DIRECTORY = "directory"  # the snapshot topic of peers and their keys (as service.directory.service)


@dataclass(frozen=True)
class ImportResult:
    version: int
    outcome: Literal["imported", "unchanged"]
    peers: int
    keys: int
    removed_peers: int  # peers this node had that the document does not list


def current_document(session: Session) -> DirectoryDocument | None:
    """The signed directory in force (the highest version imported), or None: the local one."""
    return session.exec(select(DirectoryDocument).order_by(DirectoryDocument.version.desc())).first()  # type: ignore[attr-defined]


@dataclass(frozen=True)
class InForce:
    """The directory in force without its (possibly large) document text."""

    version: int
    issuer: str
    expires_at: datetime


def in_force(session: Session) -> InForce | None:
    """What the hot paths need (key snapshot, /readyz, local-edit refusal): one small row."""
    row = session.exec(
        select(DirectoryDocument.version, DirectoryDocument.issuer, DirectoryDocument.expires_at)
        .order_by(DirectoryDocument.version.desc())  # type: ignore[attr-defined]
        .limit(1)
    ).first()
    return InForce(int(row[0]), str(row[1]), row[2]) if row is not None else None


def check(raw: bytes, settings: Settings, now: datetime) -> VerifiedDirectory:
    """Verify a document for import (CPU only): signature, form, times."""
    verified = verify_document(
        raw, parse_authority_keys(settings.directory_authority_keys), max_bytes=settings.directory_max_bytes
    )
    check_times(verified.directory, now, timedelta(seconds=settings.clock_skew_seconds))
    for peer in verified.directory.peers:  # https:// only, in production (service/production.py)
        production.check_peer_url(settings, peer.url, field=f"peers.{peer.node_id}.url")
    return verified


def import_document(
    raw: bytes, settings: Settings, *, source: str = "file", engine: Engine | None = None
) -> ImportResult:
    """Verify ``raw`` and make it the directory in force (DirectoryRefused or Conflict if not)."""
    now = utcnow()
    verified = check(raw, settings, now)  # before the transaction: no signature check inside it
    with transaction(engine) as tx:
        return store(tx, verified, now=now, source=source)


def store(tx: Session, verified: VerifiedDirectory, *, now: datetime, source: str) -> ImportResult:
    """Inside the caller's transaction: the version rule, then the peers and keys replaced."""
    doc = verified.directory
    in_force = tx.exec(select(func.max(DirectoryDocument.version))).one()
    if in_force is not None and doc.version <= in_force:
        if doc.version == in_force:
            stored = tx.get(DirectoryDocument, in_force)
            if stored is not None and stored.digest == verified.digest:
                return ImportResult(doc.version, "unchanged", 0, 0, 0)
            raise Conflict(
                f"directory version {doc.version} is already in force with other content: the authority "
                "must issue a higher version"
            )
        raise Conflict(
            f"directory version {doc.version} is older than version {in_force} in force: never rolled back"
        )
    local = tx.exec(select(LocalNode)).first()
    own = local.node_id if local is not None else None
    peers = {p.node_id: p for p in doc.peers if p.node_id != own}
    removed = 0
    existing_keys = {k.keyid: k for k in tx.exec(select(PeerKey))}
    wanted_keys = {k.keyid: (p.node_id, k) for p in peers.values() for k in p.keys}
    # A keyid names its node (``410105/k1``), so a key never moves from one peer to another.
    for keyid, old_key in existing_keys.items():
        if keyid not in wanted_keys:
            tx.delete(old_key)
    tx.flush()  # keys first (see remove_peer): then the peers the document no longer lists
    for old_peer in tx.exec(select(Peer)):
        if old_peer.node_id not in peers:
            tx.delete(old_peer)
            removed += 1
    tx.flush()
    for node_id, entry in peers.items():
        peer = tx.get(Peer, node_id) or Peer(node_id=node_id, name=entry.name, url=entry.url)
        peer.name, peer.url = entry.name, entry.url.rstrip("/")
        tx.add(peer)
    tx.flush()
    for keyid, (node_id, key) in wanted_keys.items():
        key_row = existing_keys.get(keyid)
        if key_row is None:
            key_row = PeerKey(keyid=keyid, node_id=node_id, public_key=key.public_key)
        key_row.public_key, key_row.not_before, key_row.not_after = (
            key.public_key,
            key.not_before,
            key.not_after,
        )
        tx.add(key_row)
    tx.add(
        DirectoryDocument(
            version=doc.version,
            digest=verified.digest,
            issuer=doc.issuer,
            authority_keyid=verified.authority_keyid,
            issued_at=doc.issued_at,
            expires_at=doc.expires_at,
            imported_at=now,
            source=source[:512],
            document=verified.canonical_file,
        )
    )
    tx.flush()
    mark_changed(tx, DIRECTORY)
    return ImportResult(doc.version, "imported", len(peers), len(wanted_keys), removed)


def refuse_local_edit(session: Session) -> None:
    """Local edits of peers and keys are refused once a signed directory is in force."""
    doc = in_force(session)
    if doc is not None:
        raise Conflict(
            f"this node's directory is the signed one (version {doc.version} from {doc.issuer}): local "
            "changes to peers and keys are refused; the authority issues a new version"
        )


# --- expiry ------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DirectoryStatus:
    state: Literal["local", "missing", "ok", "expiring", "expired"]
    version: int | None = None
    expires_at: datetime | None = None
    detail: str = "local"

    @property
    def degraded(self) -> bool:
        return self.state in ("expired", "missing")


def status(session: Session, settings: Settings, now: datetime) -> DirectoryStatus:
    """What /readyz and the expiry job say of the directory in force."""
    doc = in_force(session)
    if doc is None:
        if settings.directory_authority_keys:
            return DirectoryStatus("missing", detail="missing: no signed directory imported yet")
        return DirectoryStatus("local", detail="local")  # kept by hand: nothing expires
    left = doc.expires_at - now
    if left <= timedelta(0):
        detail = f"expired: version {doc.version} expired at {time_text(doc.expires_at)}"
        return DirectoryStatus("expired", doc.version, doc.expires_at, detail)
    if left <= timedelta(days=settings.directory_warn_days):
        days = left.total_seconds() / 86_400
        detail = (
            f"expiring: version {doc.version} expires at {time_text(doc.expires_at)} (in {days:.1f} days)"
        )
        return DirectoryStatus("expiring", doc.version, doc.expires_at, detail)
    return DirectoryStatus("ok", doc.version, doc.expires_at, f"ok: version {doc.version}")


def warn_expiry(settings: Settings, now: datetime, engine: Engine | None = None) -> DirectoryStatus:
    with read_session(engine) as session:
        current = status(session, settings, now)
    if current.state in ("expiring", "expired", "missing"):
        log.warning("signed directory %s", current.detail)
    return current


# --- fetching ------------------------------------------------------------------------------------------


class FetchFailed(Exception):
    pass


def fetch(url: str, settings: Settings, client: httpx.Client | None = None) -> bytes:
    """GET the document: at most ``directory_max_bytes``, all of it within the fetch deadline."""
    deadline = time.monotonic() + settings.directory_fetch_deadline_seconds
    limit = settings.directory_max_bytes
    http = client or httpx.Client(
        timeout=min(settings.peer_timeout_seconds, settings.directory_fetch_deadline_seconds)
    )
    try:
        with http.stream("GET", url, headers={"Accept": "application/json"}) as response:
            if response.status_code != 200:
                raise FetchFailed(f"HTTP {response.status_code}")
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > limit:
                raise FetchFailed(f"the document is larger than {limit} bytes")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > limit:
                    raise FetchFailed(f"the document is larger than {limit} bytes")
                if time.monotonic() > deadline:
                    raise FetchFailed(f"not read within {settings.directory_fetch_deadline_seconds:g} s")
                chunks.append(chunk)
            return b"".join(chunks)
    except httpx.HTTPError as exc:
        raise FetchFailed(type(exc).__name__) from None
    finally:
        if client is None:
            http.close()


def fetch_and_import(
    settings: Settings, client: httpx.Client | None = None, engine: Engine | None = None
) -> ImportResult | None:
    """One scheduled run: fetch from ``directory_url`` and import; a failure is logged, not raised."""
    url = settings.directory_url
    if not url:
        return None
    try:
        raw = fetch(url, settings, client)
        result = import_document(raw, settings, source=url, engine=engine)
    except FetchFailed as exc:
        log.warning("signed directory not fetched: %s", exc)
        return None
    except (DirectoryRefused, Conflict) as exc:
        log.warning("signed directory fetched and refused: %s", exc.detail)
        return None
    if result.outcome == "imported":
        log.info(
            "signed directory version %d imported: %d peers, %d keys, %d peers removed",
            result.version,
            result.peers,
            result.keys,
            result.removed_peers,
        )
    return result


def directory_job(settings: Settings, fetcher: Callable[[Settings], Any] = fetch_and_import) -> None:
    """The scheduler's job: fetch (when a URL is set), then warn if the directory nears its expiry."""
    try:
        fetcher(settings)
    finally:
        warn_expiry(settings, utcnow())
