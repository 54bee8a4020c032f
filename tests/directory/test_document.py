"""The signed document alone: a wrong signature or any change after signing is refused."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
import rfc8785
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from service.directory.authority import parse_authority_keys
from service.directory.document import DirectoryRefused, check_times, verify_document
from tests.directory.conftest import NOW, Authority, peer_entry

K1 = Ed25519PrivateKey.generate()
PEERS = [peer_entry("411627", "太康县", ("k1", K1, None, None))]


def trusted(*authorities: Authority) -> dict[str, Ed25519PublicKey]:
    return parse_authority_keys([a.trusted for a in authorities])


def test_a_document_signed_by_the_trusted_authority_verifies(authority: Authority) -> None:
    verified = verify_document(authority.sign(3, PEERS), trusted(authority))
    assert verified.directory.version == 3
    assert verified.authority_keyid == "henan/2026"
    assert [p.node_id for p in verified.directory.peers] == ["411627"]


def _edit(raw: bytes, change: object) -> bytes:
    doc = json.loads(raw)
    change(doc)  # type: ignore[operator]
    return rfc8785.dumps(doc)


@pytest.mark.parametrize(
    "change",
    [
        lambda d: d["directory"]["peers"][0].update(url="https://attacker.example"),
        lambda d: d["directory"]["peers"][0]["keys"][0].update(
            public_key="Kay64UG8yvCyLhqU000LxzYeUm0L_hLIl5S8kyKWbdc"
        ),
        lambda d: d["directory"].update(version=d["directory"]["version"] + 1),
        lambda d: d["directory"].update(expires_at="2099-01-01T00:00:00Z"),
        lambda d: d["directory"]["peers"].append(dict(d["directory"]["peers"][0], node_id="310110")),
        lambda d: d["directory"].update(peers=[]),
    ],
    ids=["url", "public_key", "version", "expires_at", "peer_added", "peers_removed"],
)
def test_any_change_after_signing_is_refused(authority: Authority, change: object) -> None:
    raw = authority.sign(3, PEERS)
    with pytest.raises(DirectoryRefused, match="does not verify"):
        verify_document(_edit(raw, change), trusted(authority))


def test_a_flipped_signature_byte_is_refused(authority: Authority) -> None:
    doc = json.loads(authority.sign(3, PEERS))
    sig = doc["signatures"][0]["signature"]
    doc["signatures"][0]["signature"] = ("A" if sig[0] != "A" else "B") + sig[1:]
    with pytest.raises(DirectoryRefused, match="does not verify"):
        verify_document(rfc8785.dumps(doc), trusted(authority))


def test_a_document_signed_by_another_key_under_the_trusted_keyid_is_refused(authority: Authority) -> None:
    impostor = Authority(keyid=authority.keyid)  # same name, another key
    with pytest.raises(DirectoryRefused, match="does not verify"):
        verify_document(impostor.sign(3, PEERS), trusted(authority))


def test_a_document_signed_by_an_authority_not_trusted_is_refused(authority: Authority) -> None:
    other = Authority(keyid="hubei/2026")
    with pytest.raises(DirectoryRefused, match="no authority key this node trusts"):
        verify_document(other.sign(3, PEERS), trusted(authority))


def test_without_a_configured_authority_key_nothing_verifies(authority: Authority) -> None:
    with pytest.raises(DirectoryRefused, match="no authority key is configured"):
        verify_document(authority.sign(3, PEERS), {})


def test_a_rotated_authority_key_is_trusted_alongside_the_old(authority: Authority) -> None:
    """A node may trust two authority keys at once: the authority rotates its own key."""
    new = Authority(keyid="henan/2027")
    both = trusted(authority, new)
    assert verify_document(authority.sign(3, PEERS), both).authority_keyid == "henan/2026"
    assert verify_document(new.sign(4, PEERS), both).authority_keyid == "henan/2027"


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[]", "not a signed directory"),
        (b'{"directory": {}, "signatures": []}', "not a signed directory"),
    ],
)
def test_garbage_is_refused_clearly(authority: Authority, raw: bytes, reason: str) -> None:
    with pytest.raises(DirectoryRefused, match=reason):
        verify_document(raw, trusted(authority))


def test_a_document_larger_than_the_limit_is_refused_before_parsing(authority: Authority) -> None:
    raw = authority.sign(3, PEERS)
    with pytest.raises(DirectoryRefused, match="larger than"):
        verify_document(raw, trusted(authority), max_bytes=len(raw) - 1)


def test_a_signed_but_invalid_directory_is_refused_after_the_signature() -> None:
    """The authority's own mistake (a key of another node) is caught on the node too."""
    from service.directory.document import sign_directory
    from service.signing.keys import public_key_text

    authority = Authority()
    directory = {
        "format": "yipanqi-directory/1",
        "version": 1,
        "issuer": "x",
        "issued_at": "2026-06-01T00:00:00Z",
        "expires_at": "2026-07-01T00:00:00Z",
        "peers": [
            {
                "node_id": "411627",
                "name": "太康县",
                "url": "https://a.example",
                "keys": [{"keyid": "310110/k1", "public_key": public_key_text(K1.public_key())}],
            }
        ],
    }
    raw = rfc8785.dumps(sign_directory(directory, authority.keyid, authority.key))
    with pytest.raises(DirectoryRefused, match="does not belong to node 411627"):
        verify_document(raw, trusted(authority))


def test_an_expired_or_future_document_is_refused_for_import(authority: Authority) -> None:
    keys = trusted(authority)
    expired = verify_document(authority.sign(3, PEERS, issued_at=NOW - timedelta(days=31)), keys)
    with pytest.raises(DirectoryRefused, match="expired"):
        check_times(expired.directory, NOW, timedelta(seconds=300))
    future = verify_document(authority.sign(3, PEERS, issued_at=NOW + timedelta(hours=1)), keys)
    with pytest.raises(DirectoryRefused, match="in the future"):
        check_times(future.directory, NOW, timedelta(seconds=300))
    check_times(future.directory, NOW + timedelta(hours=1), timedelta(seconds=300))  # fine once it is time
