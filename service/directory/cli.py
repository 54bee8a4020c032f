"""``yipanqi directory sign|verify|import|show|keygen``: the signed directory (see signed.py)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlmodel import select

from service.clock import utcnow
from service.config import get_settings
from service.directory import signed
from service.directory.authority import check_authority_keyid, parse_authority_keys
from service.directory.document import (
    DirectoryRefused,
    build_directory,
    dump_signed,
    sign_directory,
    time_text,
    verify_document,
)
from service.errors import DomainError

directory_app = typer.Typer(
    help="The signed directory of peers: sign it (the authority), verify, import and show it (a node).",
    no_args_is_help=True,
)
console = Console()


def _fail(message: str, code: int = 2) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


def _require_node() -> None:
    from service.cli import _require_node as require  # the main CLI's check, imported late (no cycle)

    require()


def _read(file: Path) -> bytes:
    try:
        return file.read_bytes()
    except OSError as exc:
        _fail(f"cannot read {file}: {exc.strerror}")
        raise  # unreachable: _fail exits


@directory_app.command("keygen")
def keygen(
    keyid: Annotated[str, typer.Option(help="the authority key's name, e.g. henan/2026")],
    out: Annotated[
        Path, typer.Option(help="where to write the private key (PEM, mode 0600); must not exist")
    ],
) -> None:
    """Make an authority key pair (authority side); prints the line for YIPANQI_DIRECTORY_AUTHORITY_KEYS."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from service.signing.keys import public_key_text, write_private_key

    try:
        check_authority_keyid(keyid)
    except ValueError as exc:
        _fail(str(exc))
    if out.exists():
        _fail(f"{out} already exists: choose another --out")
    key = Ed25519PrivateKey.generate()
    write_private_key(out, key)
    console.print(f"authority private key written to {out} (keep it offline)")
    print(f"{keyid}={public_key_text(key.public_key())}")


def _local_peers(self_url: str | None) -> list[dict[str, Any]]:
    """The local directory (and, with ``self_url``, this node itself) as the document's peers."""
    from service.db import read_session
    from service.directory import service as directory
    from service.models import LocalNode, NodeKey

    def when(at: Any) -> str | None:
        return time_text(at) if at is not None else None

    peers = []
    with read_session() as session:
        for peer, keys in directory.list_peers(session):
            entries = [
                {
                    "keyid": k.keyid,
                    "public_key": k.public_key,
                    "not_before": when(k.not_before),
                    "not_after": when(k.not_after),
                }
                for k in keys
            ]
            peers.append({"node_id": peer.node_id, "name": peer.name, "url": peer.url, "keys": entries})
        local = session.exec(select(LocalNode)).first()
        if self_url is not None and local is not None:
            own = [
                {
                    "keyid": k.keyid,
                    "public_key": k.public_key,
                    "not_before": when(k.not_before),
                    "not_after": when(k.not_after),
                }
                for k in session.exec(select(NodeKey).order_by(NodeKey.keyid))
            ]
            peers.append(
                {"node_id": local.node_id, "name": local.name, "url": self_url.rstrip("/"), "keys": own}
            )
    return sorted(peers, key=lambda p: p["node_id"])


@directory_app.command("sign")
def sign(
    key: Annotated[Path, typer.Option(help="the authority's private key (PEM, from `directory keygen`)")],
    keyid: Annotated[str, typer.Option(help="the authority key's name, as the nodes trust it")],
    version: Annotated[int, typer.Option(min=1, help="higher than every version published before")],
    issuer: Annotated[str, typer.Option(help="the authority's name, e.g. 河南省卫生健康委员会")],
    output: Annotated[Path, typer.Option(help="where to write the signed directory")],
    source: Annotated[
        Path | None, typer.Option(help='a JSON file {"peers": [...]} (the document\'s peers, unsigned)')
    ] = None,
    from_local: Annotated[
        bool, typer.Option("--from-local", help="take the peers from this node's local directory")
    ] = False,
    include_self: Annotated[
        str | None, typer.Option(help="with --from-local: list this node too, at this base URL")
    ] = None,
    valid_days: Annotated[int, typer.Option(min=1, max=366, help="expires this many days after issue")] = 30,
) -> None:
    """Sign a directory (authority side): peers from --source or --from-local, with the authority key."""
    from service.signing.keys import read_private_key

    if (source is None) == (not from_local):
        _fail("give either --source FILE or --from-local")
    try:
        check_authority_keyid(keyid)
        private_key = read_private_key(key)
    except (OSError, ValueError, TypeError) as exc:
        _fail(f"cannot use the authority key {key}: {exc}")
        return
    if source is not None:
        try:
            content = json.loads(_read(source).decode("utf-8"))
            peers = content["peers"]
        except (ValueError, KeyError, TypeError):
            _fail(f'{source} is not a JSON object {{"peers": [...]}}')
            return
    else:
        _require_node()
        peers = _local_peers(include_self)
    issued_at = utcnow().replace(microsecond=0)
    try:
        directory = build_directory(
            version=version,
            issuer=issuer,
            issued_at=issued_at,
            expires_at=issued_at + timedelta(days=valid_days),
            peers=peers,
        )
        document = dump_signed(sign_directory(directory, keyid, private_key))
    except DomainError as exc:
        _fail(exc.detail)
        return
    output.write_bytes(document)
    console.print(
        f"directory version {version} signed by {keyid}: {len(peers)} peers, expires "
        f"{directory['expires_at']}; written to {output}"
    )


@directory_app.command("verify")
def verify(
    file: Annotated[Path, typer.Argument(help="a signed directory file")],
    authority_key: Annotated[
        list[str] | None,
        typer.Option(
            help="<keyid>=<public key> to trust (default: YIPANQI_DIRECTORY_AUTHORITY_KEYS); repeatable"
        ),
    ] = None,
) -> None:
    """Check a signed directory's signature, form and times without importing it (exit 1: refused)."""
    settings = get_settings()
    try:
        trusted = parse_authority_keys(authority_key or settings.directory_authority_keys)
    except ValueError as exc:
        _fail(str(exc))
        return
    try:
        verified = verify_document(_read(file), trusted, max_bytes=settings.directory_max_bytes)
    except DirectoryRefused as exc:
        _fail(f"refused: {exc.detail}", code=1)
        return
    doc = verified.directory
    now = utcnow()
    state = "expired" if doc.expires_at <= now else "valid"
    console.print(
        f"directory version {doc.version} from {doc.issuer}: signature by {verified.authority_keyid} "
        f"verifies; {len(doc.peers)} peers; issued {time_text(doc.issued_at)}, expires "
        f"{time_text(doc.expires_at)} ({state}); sha-256 {verified.digest}",
        soft_wrap=True,
    )
    if state == "expired":
        raise typer.Exit(1)


@directory_app.command("import")
def import_command(file: Annotated[Path, typer.Argument(help="a signed directory file")]) -> None:
    """Verify a signed directory and make it this node's directory (replaces every peer and key)."""
    _require_node()
    raw = _read(file)
    try:
        result = signed.import_document(raw, get_settings(), source="file")
    except DomainError as exc:
        _fail(f"refused: {exc.detail}", code=1)
        return
    if result.outcome == "unchanged":
        console.print(f"directory version {result.version} is already in force: nothing changed")
        return
    console.print(
        f"directory version {result.version} imported: {result.peers} peers, {result.keys} keys"
        + (f"; {result.removed_peers} peers not in it removed" if result.removed_peers else "")
    )


@directory_app.command("show")
def show(
    as_json: Annotated[
        bool, typer.Option("--json", help="print the signed document in force as it was imported")
    ] = False,
) -> None:
    """The directory in force: version, authority, expiry and peers (or that it is kept locally)."""
    from service.db import read_session
    from service.directory import service as directory

    _require_node()
    settings = get_settings()
    with read_session() as session:
        doc = signed.current_document(session)
        state = signed.status(session, settings, utcnow())
        peers = directory.list_peers(session)
    if as_json:
        if doc is None:
            _fail("no signed directory is in force (the directory is kept locally)", code=1)
            return
        print(doc.document)
        return
    if doc is None:
        console.print(f"no signed directory: kept locally with `yipanqi peers add` ({state.detail})")
    else:
        console.print(
            f"signed directory version {doc.version} from {doc.issuer} "
            f"(authority key {doc.authority_keyid}); issued {time_text(doc.issued_at)}, "
            f"expires {time_text(doc.expires_at)}; imported "
            f"{time_text(doc.imported_at)} from {doc.source}; sha-256 {doc.digest}",
            soft_wrap=True,
        )
        console.print(f"status: {state.detail}")
    table = Table("node_id", "name", "url", "keys (valid from – until)")
    for peer, keys in peers:
        lines = [
            f"{k.keyid} {time_text(k.not_before) if k.not_before else '…'} – "
            f"{time_text(k.not_after) if k.not_after else '…'}"
            for k in keys
        ]
        table.add_row(peer.node_id, peer.name, peer.url, "\n".join(lines))
    console.print(table)
