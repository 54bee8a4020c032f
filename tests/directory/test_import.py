"""Importing a signed directory into a node's database: replace, never roll back, expiry, rotation."""

from __future__ import annotations

import json
import logging
from datetime import timedelta

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.engine import Engine
from sqlmodel import select

from service.clock import clock, utcnow
from service.config import Settings
from service.db import read_session, transaction
from service.directory import signed
from service.directory.document import DirectoryRefused
from service.directory.service import (
    KeySpec,
    PeerKeys,
    add_peer,
    list_peers,
    remove_peer,
    resolve_key,
    retire_key,
)
from service.errors import Conflict, UnknownKey
from service.models import DirectoryDocument, Peer, PeerKey
from service.signing.http import sign_request, verify_request
from service.signing.keys import public_key_text
from tests.directory.conftest import NOW, SELF, Authority, peer_entry

TAIKANG_K1 = Ed25519PrivateKey.generate()
TAIKANG_K2 = Ed25519PrivateKey.generate()
YANGPU_K1 = Ed25519PrivateKey.generate()
SELF_KEY = Ed25519PrivateKey.generate()


def taikang(*keys: tuple[str, Ed25519PrivateKey, object, object]) -> dict[str, object]:
    return peer_entry("411627", "太康县", *(keys or (("k1", TAIKANG_K1, None, None),)))  # type: ignore[arg-type]


def yangpu() -> dict[str, object]:
    return peer_entry("310110", "杨浦区", ("k1", YANGPU_K1, None, None))


def snapshot_of(engine: Engine) -> dict[str, list[str]]:
    with read_session(engine) as session:
        return {p.node_id: [k.keyid for k in keys] for p, keys in list_peers(session)}


def test_import_replaces_the_local_directory_and_the_keys_in_memory(
    engine: Engine, settings: Settings, authority: Authority
) -> None:
    stale = Ed25519PrivateKey.generate()
    with transaction(engine) as tx:  # a hand-kept directory before the authority's
        add_peer(
            tx, node_id="411627", name="旧名", url="http://old.example", keys=[_spec("411627/old", stale)]
        )
        add_peer(
            tx, node_id="500101", name="万州区", url="http://127.0.0.1:9", keys=[_spec("500101/k1", stale)]
        )
    keys = PeerKeys(lambda: engine, refresh_seconds=300)  # no periodic reload: only the change mark
    assert keys.resolve("411627/old", NOW) is not None
    # This node itself in the document is skipped (a node never trusts itself).
    own = peer_entry(SELF, "金水区", ("k1", SELF_KEY, None, None))
    result = signed.import_document(authority.sign(1, [taikang(), yangpu(), own]), settings, engine=engine)
    assert (result.outcome, result.version, result.peers, result.keys, result.removed_peers) == (
        "imported",
        1,
        2,
        2,
        1,
    )
    assert snapshot_of(engine) == {"310110": ["310110/k1"], "411627": ["411627/k1"]}
    with read_session(engine) as session:
        peer = session.get(Peer, "411627")
        assert peer is not None
        assert (peer.name, peer.url) == ("太康县", "https://yipanqi.411627.example")
    assert keys.resolve("411627/old", NOW) is None  # reloaded at once after the commit
    assert keys.resolve("411627/k1", NOW) is not None
    assert keys.resolve(f"{SELF}/k1", NOW) is None


def _spec(keyid: str, key: Ed25519PrivateKey) -> KeySpec:
    return KeySpec(keyid, public_key_text(key.public_key()))


def test_local_edits_are_refused_once_a_signed_directory_is_in_force(
    engine: Engine, settings: Settings, authority: Authority
) -> None:
    with transaction(engine) as tx:  # allowed before: the small set-up's way
        add_peer(
            tx, node_id="310110", name="杨浦区", url="http://127.0.0.1:9", keys=[_spec("310110/x", YANGPU_K1)]
        )
    signed.import_document(authority.sign(1, [taikang()]), settings, engine=engine)
    for edit in (
        lambda tx: add_peer(tx, node_id="310110", name="杨浦区", url="http://x.example", keys=[]),
        lambda tx: remove_peer(tx, "411627"),
        lambda tx: retire_key(tx, "411627/k1", NOW),
    ):
        with pytest.raises(Conflict, match="signed one \\(version 1"), transaction(engine) as tx:
            edit(tx)
    assert snapshot_of(engine) == {"411627": ["411627/k1"]}


def test_an_older_version_is_never_imported(engine: Engine, settings: Settings, authority: Authority) -> None:
    v1 = authority.sign(1, [taikang(), yangpu()])
    v2 = authority.sign(2, [taikang()])
    assert signed.import_document(v2, settings, engine=engine).outcome == "imported"
    with pytest.raises(Conflict, match="older than version 2"):
        signed.import_document(v1, settings, engine=engine)
    assert snapshot_of(engine) == {"411627": ["411627/k1"]}  # still version 2's
    # The same version again: a no-op; the same number with other content: refused.
    assert signed.import_document(v2, settings, engine=engine).outcome == "unchanged"
    with pytest.raises(Conflict, match="already in force with other content"):
        signed.import_document(authority.sign(2, [yangpu()]), settings, engine=engine)
    with read_session(engine) as session:
        assert [d.version for d in session.exec(select(DirectoryDocument))] == [2]
        doc = signed.current_document(session)
    assert doc is not None
    assert doc.authority_keyid == authority.keyid
    assert json.loads(doc.document)["directory"]["version"] == 2  # the signed file, kept
    assert (
        signed.import_document(authority.sign(3, [yangpu()]), settings, engine=engine).outcome == "imported"
    )
    assert snapshot_of(engine) == {"310110": ["310110/k1"]}


def test_a_tampered_document_changes_nothing(
    engine: Engine, settings: Settings, authority: Authority
) -> None:
    signed.import_document(authority.sign(1, [taikang()]), settings, engine=engine)
    doc = json.loads(authority.sign(2, [taikang(), yangpu()]))
    doc["directory"]["peers"][0]["url"] = "https://attacker.example"
    with pytest.raises(DirectoryRefused, match="does not verify"):
        signed.import_document(rfc8785.dumps(doc), settings, engine=engine)
    assert snapshot_of(engine) == {"411627": ["411627/k1"]}
    with read_session(engine) as session:
        assert [d.version for d in session.exec(select(DirectoryDocument))] == [1]


def test_an_expired_document_is_not_imported(
    engine: Engine, settings: Settings, authority: Authority
) -> None:
    old = authority.sign(1, [taikang()], issued_at=NOW - timedelta(days=40))
    with pytest.raises(DirectoryRefused, match="expired"):
        signed.import_document(old, settings, engine=engine)
    assert snapshot_of(engine) == {}


# --- expiry policy ---------------------------------------------------------------------------------


def test_expiry_warns_first_then_degrades_and_no_new_key_becomes_valid(
    engine: Engine, settings: Settings, authority: Authority, caplog: pytest.LogCaptureFixture
) -> None:
    """Policy: a lapsed directory stays in use (peers keep working with the keys valid at its
    expiry), /readyz says degraded, and a key due to start after the expiry is never trusted."""
    expires = NOW + timedelta(days=10)
    doc = authority.sign(
        1,
        [
            taikang(
                ("k1", TAIKANG_K1, None, None),
                ("k2", TAIKANG_K2, expires + timedelta(days=5), None),  # pre-published for after the expiry
            )
        ],
        issued_at=NOW,
        valid=timedelta(days=10),
    )
    signed.import_document(doc, settings, engine=engine)
    keys = PeerKeys(lambda: engine, refresh_seconds=300)

    def state() -> signed.DirectoryStatus:
        with read_session(engine) as session:
            return signed.status(session, settings, utcnow())

    assert state().state == "ok"
    caplog.set_level(logging.WARNING, "yipanqi.directory")
    assert signed.warn_expiry(settings, utcnow(), engine).state == "ok"
    assert not caplog.records

    clock.freeze(expires - timedelta(days=6))  # within directory_warn_days (7)
    assert state().state == "expiring"
    assert not state().degraded
    assert signed.warn_expiry(settings, utcnow(), engine).state == "expiring"
    assert "expiring: version 1" in caplog.text

    clock.freeze(expires + timedelta(days=1))
    lapsed = state()
    assert (lapsed.state, lapsed.degraded) == ("expired", True)
    assert "expired: version 1 expired at" in lapsed.detail
    assert keys.resolve("411627/k1", utcnow()) is not None  # still in use
    clock.freeze(expires + timedelta(days=6))  # k2's not_before has passed, but the directory lapsed first
    assert keys.resolve("411627/k2", utcnow()) is None
    with read_session(engine) as session:
        assert resolve_key(session, "411627/k2", utcnow()) is None  # the relay's read path agrees
        assert resolve_key(session, "411627/k1", utcnow()) is not None

    # A newer document that lists k2 again makes it valid.
    renewed = authority.sign(2, [taikang(("k1", TAIKANG_K1, None, None), ("k2", TAIKANG_K2, expires, None))])
    signed.import_document(renewed, settings, engine=engine)
    assert keys.resolve("411627/k2", utcnow()) is not None
    assert state().state == "ok"


def test_a_node_that_trusts_an_authority_but_has_no_document_is_degraded(
    engine: Engine, settings: Settings
) -> None:
    with read_session(engine) as session:
        missing = signed.status(session, settings, NOW)
        local = signed.status(session, Settings(data_dir=settings.data_dir), NOW)
    assert (missing.state, missing.degraded) == ("missing", True)
    assert (local.state, local.degraded) == ("local", False)


# --- key rotation with overlap ---------------------------------------------------------------------


def _signed_at(key: Ed25519PrivateKey, keyid: str, at: object) -> dict[str, str]:
    return sign_request(method="POST", path="/peer/v1/x", body=b"{}", key=key, keyid=keyid, created=at)  # type: ignore[arg-type]


def test_during_the_overlap_both_keys_verify_and_after_it_only_the_new(
    engine: Engine, settings: Settings, authority: Authority
) -> None:
    """411627 rotates k1 → k2: k2 from T1, k1 until T2 > T1. The receiver's check (rules 3-5, with
    the keys from memory as service/exchange/security.py does) follows the injected clock."""
    t1, t2 = NOW + timedelta(days=1), NOW + timedelta(days=3)
    doc = authority.sign(1, [taikang(("k1", TAIKANG_K1, None, t2), ("k2", TAIKANG_K2, t1, None))])
    signed.import_document(doc, settings, engine=engine)
    keys = PeerKeys(lambda: engine, refresh_seconds=300)

    def accepted(key: Ed25519PrivateKey, keyid: str) -> bool:
        now = utcnow()
        headers = _signed_at(key, keyid, now)
        try:
            verify_request(
                method="POST",
                path="/peer/v1/x",
                headers=headers.items(),
                body=b"{}",
                resolve_key=lambda k: keys.resolve(k, now),
                now=now,
            )
        except UnknownKey:
            return False
        return True

    def both() -> tuple[bool, bool]:
        return accepted(TAIKANG_K1, "411627/k1"), accepted(TAIKANG_K2, "411627/k2")

    assert both() == (True, False)  # before the overlap: only the old key
    clock.freeze(t1)
    assert both() == (True, True)  # the overlap begins at not_before
    clock.freeze(t2 - timedelta(seconds=1))
    assert both() == (True, True)
    clock.freeze(t2)
    assert both() == (False, True)  # not_after ends it: only the new key
    # A key of one peer never signs for another: k2's keyid is 411627's alone.
    with read_session(engine) as session:
        assert {k.keyid for k in session.exec(select(PeerKey))} == {"411627/k1", "411627/k2"}
