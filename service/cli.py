"""The ``yipanqi`` command."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Annotated

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from sqlalchemy.engine import make_url
from sqlalchemy.exc import OperationalError
from sqlmodel import select

from service.clock import offset_from_env, utcnow
from service.config import get_settings, unknown_variables
from service.db import get_engine, read_session, transaction
from service.directory import service as directory
from service.errors import DomainError
from service.migrations import upgrade
from service.models import LocalNode, Role, Staff
from service.signing import node as node_identity
from service.signing.keys import public_key_text
from service.staff.passwords import set_password
from service.staff.service import create_staff

app = typer.Typer(
    help="一盘棋 yipanqi: the county node for migrant-population information exchange.",
    no_args_is_help=True,
    # An unforeseen error's traceback must not print local variables: tokens, keys, database URLs.
    pretty_exceptions_show_locals=False,
)
peers_app = typer.Typer(help="The local directory of trusted peers and keys.", no_args_is_help=True)
staff_app = typer.Typer(help="Staff accounts of the county bureau.", no_args_is_help=True)
app.add_typer(peers_app, name="peers")
app.add_typer(staff_app, name="staff")
import_app = typer.Typer(help="Bulk imports (CSV or XLSX).", no_args_is_help=True)
app.add_typer(import_app, name="import")
console = Console()


@app.callback()
def _settings_first() -> None:
    """Refuse to run with a setting that makes no sense, naming the environment variable."""
    unknown = unknown_variables(os.environ)
    for problem in unknown:
        console.print(f"[red]unknown setting[/red] {problem}", soft_wrap=True)
    if unknown:
        raise typer.Exit(2)
    try:
        offset_from_env()
    except ValueError as exc:
        console.print(f"[red]invalid setting:[/red] {escape(str(exc))}", soft_wrap=True)
        raise typer.Exit(2) from None
    try:
        get_settings()
    except ValidationError as exc:
        for error in exc.errors():
            name = "YIPANQI_" + "__".join(str(part) for part in error["loc"]).upper()
            where = f" {name}" if error["loc"] else ""
            console.print(f"[red]invalid setting{where}:[/red] {escape(error['msg'])}", soft_wrap=True)
        raise typer.Exit(2) from None


def _fail(message: str) -> None:
    console.print(f"[red]error:[/red] {escape(message)}", soft_wrap=True)
    raise typer.Exit(2)


INIT_HINT = "run `yipanqi init --node-id <county code> --name <county>` first, or set YIPANQI_DATA_DIR"


def _open_database(*, create: bool = False) -> None:
    """Migrate this node's database (``create``: a new SQLite file too); one line and exit 2 if it fails."""
    settings = get_settings()
    sqlite_file = settings.sqlite_file
    if sqlite_file is not None and not create and not sqlite_file.exists():
        missing = f"no {sqlite_file.name}" if settings.data_dir.is_dir() else "no such folder"
        _fail(f"no node in {settings.data_dir.resolve()} ({missing}): {INIT_HINT}")
    try:
        upgrade(get_engine())
    except ModuleNotFoundError as exc:  # the database's driver is an extra (psycopg for PostgreSQL)
        _fail(
            f"the driver for YIPANQI_DATABASE_URL is not installed ({exc.name}): "
            "pip install 'yipanqi[postgres]' for PostgreSQL"
        )
    except OperationalError as exc:
        where = make_url(settings.effective_database_url).render_as_string(hide_password=True)
        _fail(f"cannot open the database {where}: {str(exc.orig).strip().splitlines()[0]}")


def _require_node(*, private_key: bool = False) -> None:
    """The database holds a node (``yipanqi init`` ran) and, if asked, its private key is in place."""
    _open_database()
    settings = get_settings()
    with read_session() as session:
        if session.exec(select(LocalNode)).first() is None:
            _fail(f"no node in {settings.data_dir.resolve()} (its database is empty): {INIT_HINT}")
        if private_key:
            try:
                node_identity.load_signer(session, settings.keys_dir)
            except node_identity.NodeNotInitialised as exc:
                _fail(f"{exc}: `yipanqi init` wrote it there; restore it (in Kubernetes: the Secret)")


def _setup_logging() -> None:
    logging.basicConfig(
        level=get_settings().log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
        stream=sys.stderr,
    )


@app.command()
def init(
    node_id: Annotated[str, typer.Option(help="6-digit GB/T 2260 county code, e.g. 410105")],
    name: Annotated[str, typer.Option(help="county name, e.g. 金水区")],
    label: Annotated[str, typer.Option(help="key label")] = "k1",
) -> None:
    """Create the data folder, database and this node's Ed25519 key pair."""
    settings = get_settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _open_database(create=True)
    with transaction() as session:
        try:
            key = node_identity.init_node(session, settings.keys_dir, node_id=node_id, name=name, label=label)
        except ValueError as exc:
            _fail(str(exc))
            return
    console.print(f"node {node_id} {name} initialised in {settings.data_dir}")
    console.print(f"keyid:      {key.keyid}")
    console.print(f"public key: {key.public_key}")
    console.print("peers add this node with:")
    print(f"  yipanqi peers add --node-id {node_id} --name {name} --url <this node's URL>", end=" ")
    print(f"--key {key.keyid}={key.public_key}")


@app.command()
def serve(
    host: Annotated[str, typer.Option()] = "127.0.0.1",
    port: Annotated[int, typer.Option()] = 8100,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="processes (PostgreSQL only; SQLite takes one writer: 1)")
    ] = 1,
) -> None:
    """Run the node (applies database migrations first)."""
    import uvicorn

    from service.localnet import port_in_use
    from service.main import create_app

    _setup_logging()
    _require_node(private_key=True)
    if workers > 1 and get_settings().effective_database_url.startswith("sqlite"):
        _fail(
            "--workers needs PostgreSQL (YIPANQI_DATABASE_URL): SQLite lets one process write at a time, "
            "so more processes would only wait on each other's locks (docs/storage.md)"
        )
    if port_in_use(port, host):
        _fail(f"port {port} on {host} is already in use (another node?): stop it or choose another --port")
    if workers == 1:
        uvicorn.run(create_app(), host=host, port=port, log_config=None, access_log=False)
        return
    # Each process is a replica of its own (relay leases, scheduler jobs that skip what another holds).
    uvicorn.run(
        "service.main:create_app",
        factory=True,
        workers=workers,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
    )


@app.command()
def migrate() -> None:
    """Apply database migrations and exit."""
    _open_database()
    console.print("database is at the latest schema")


@peers_app.command("add")
def peers_add(
    node_id: Annotated[str, typer.Option()],
    name: Annotated[str, typer.Option()],
    url: Annotated[str, typer.Option()],
    key: Annotated[list[str], typer.Option(help="<node_id>/<label>=<base64url public key>; repeatable")],
) -> None:
    """Trust a peer: add it (or update its name, URL and keys)."""
    try:
        directory.check_node_id(node_id)  # first: a wrong --node-id makes every key look wrong
        keys = [directory.KeySpec.parse(k) for k in key]
    except DomainError as exc:
        _fail(exc.detail)
        return
    except ValueError as exc:
        _fail(str(exc))
        return
    _require_node()
    with transaction() as session:
        try:
            directory.add_peer(session, node_id=node_id, name=name, url=url, keys=keys)
        except DomainError as exc:
            _fail(exc.detail)
    console.print(f"peer {node_id} {name} at {url} trusted with {len(keys)} key(s)")


@peers_app.command("list")
def peers_list() -> None:
    """Show the directory."""
    _require_node()
    table = Table("node_id", "name", "url", "keys")
    with read_session() as session:
        for peer, keys in directory.list_peers(session):
            table.add_row(
                peer.node_id, peer.name, peer.url, "\n".join(f"{k.keyid}={k.public_key}" for k in keys)
            )
    console.print(table)


@peers_app.command("remove")
def peers_remove(node_id: Annotated[str, typer.Option()]) -> None:
    """Stop trusting a peer and its keys."""
    _require_node()
    with transaction() as session:
        try:
            directory.remove_peer(session, node_id)
        except DomainError as exc:
            _fail(exc.detail)
    console.print(f"peer {node_id} removed")


@staff_app.command("add")
def staff_add(
    username: Annotated[str, typer.Option()],
    role: Annotated[Role, typer.Option()],
) -> None:
    """Create a staff account; prints its bearer token once."""
    _require_node()
    with transaction() as session:
        try:
            staff, token = create_staff(session, username=username, role=role)
        except DomainError as exc:
            _fail(exc.detail)
            return
    console.print(f"staff {staff.username} ({staff.role.value}) created; bearer token (shown once):")
    print(token)


@staff_app.command("password")
def staff_password(
    username: Annotated[str, typer.Argument(help="the account")],
    password_stdin: Annotated[
        bool, typer.Option("--password-stdin", help="read the password from standard input, not a prompt")
    ] = False,
) -> None:
    """Set a console password (the person changes it at the first sign-in); ends their sessions."""
    _require_node()
    with read_session() as session:
        staff = session.exec(select(Staff).where(Staff.username == username)).first()
    if staff is None or staff.id is None:
        _fail(f"no staff account {username!r}")
        return
    if password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    else:
        password = typer.prompt("password", hide_input=True, confirmation_prompt=True)
    try:
        set_password(staff.id, password, must_change=True, now=utcnow())
    except DomainError as exc:
        _fail(exc.detail)
        return
    console.print(f"console password of {username} set; it must be changed at the first sign-in")


@import_app.command("people")
def import_people_command(
    file: Annotated[Path, typer.Argument(exists=True, dir_okay=False, help="CSV (UTF-8 or GBK) or XLSX")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="validate every row, store nothing")] = False,
    staff: Annotated[str, typer.Option(help="recorded as updated_by")] = "cli",
) -> None:
    """Import the migrant register (流动人口个案); exit 1 when some rows were bad."""
    from service.people.cli import run_import

    _require_node(private_key=True)
    raise typer.Exit(run_import(console, file, dry_run=dry_run, staff_username=staff))


@app.command()
def demo(
    once: Annotated[
        bool, typer.Option(help="exit after the demo instead of leaving the nodes running")
    ] = False,
    base_port: Annotated[
        int, typer.Option(min=1024, max=65533, help="first of three ports on 127.0.0.1")
    ] = 8100,
    keep: Annotated[
        bool, typer.Option(help="keep the temporary data folder (keys, databases, logs) and print where")
    ] = False,
) -> None:
    """Start three nodes on 127.0.0.1, send 协查 requests both ways, answer them, show what happened.

    Ctrl-C, SIGTERM or SIGHUP stops the nodes; the data folder is removed unless --keep.
    """
    from service.demo import run_demo

    raise typer.Exit(run_demo(console, base_port=base_port, once=once, keep=keep))


@app.command()
def report(
    month: Annotated[str, typer.Option(help="YYYY-MM, a complete month (Asia/Shanghai)")],
    format: Annotated[str, typer.Option("--format", help="table, csv or xlsx")] = "table",
    output: Annotated[Path | None, typer.Option(help="write here (csv: standard output by default)")] = None,
    regenerate: Annotated[bool, typer.Option(help="compute anew and replace the stored report")] = False,
) -> None:
    """The monthly SLA report (月报): stored when first generated, with targets from the settings."""
    from service.sla.cli import run_report

    _require_node()
    raise typer.Exit(run_report(console, month, format, output, regenerate=regenerate))


@app.command("public-key")
def show_public_key() -> None:
    """Print this node's keyid and public key (for peers' directories)."""
    _require_node(private_key=True)
    with read_session() as session:
        signer = node_identity.load_signer(session, get_settings().keys_dir)
    print(f"{signer.keyid}={public_key_text(signer.private_key.public_key())}")


@app.command("contracts")
def contracts_command(
    check: Annotated[
        bool, typer.Option("--check", help="change nothing; exit 1 and name the files that drifted")
    ] = False,
    root: Annotated[Path | None, typer.Option(help="project root (default: this checkout)")] = None,
) -> None:
    """Write openapi/openapi.json and schemas/*.json from the code (peers build against them)."""
    from service import contracts

    root = root or contracts.default_root()
    if check:
        drifted = contracts.drifted(root)
        for entry in drifted:
            console.print(f"[red]drifted:[/red] {entry}")
        if drifted:
            console.print("run `yipanqi contracts` and commit the result (a protocol change needs /peer/v2)")
            raise typer.Exit(1)
        console.print(f"contracts up to date in {root}")
        return
    changed = contracts.write(root)
    for path in changed:
        console.print(f"wrote {path}")
    console.print(f"{len(changed)} file(s) changed in {root}")
