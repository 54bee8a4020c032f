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

from service import production
from service.clock import offset_from_env, utcnow
from service.config import get_settings, unknown_variables
from service.db import get_engine, read_session, transaction
from service.directory import service as directory
from service.directory.cli import directory_app
from service.errors import DomainError
from service.evidence.cli import audit_app
from service.migrations import upgrade
from service.models import LocalNode, Role, Staff
from service.signing import node as node_identity
from service.signing import pii
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
app.add_typer(audit_app, name="audit")  # service/evidence/cli.py
app.add_typer(directory_app, name="directory")  # the signed directory (service/directory/cli.py)
pii_app = typer.Typer(help="Personal data at rest: the PII key ring.", no_args_is_help=True)
app.add_typer(pii_app, name="pii")
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
    try:  # the PII key first: the migrations encrypt with it, production never makes one
        pii.load(settings, create=True if create else None)
    except pii.PiiKeyError as exc:
        _fail(str(exc))
    pii.install(None)  # read from the settings at first use, and again when the key file changes
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
    """Create the data folder (0700), database, PII key file and this node's Ed25519 key pair."""
    settings = get_settings()
    pii.make_data_dir(settings.data_dir)
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
        production.check_peer_url(get_settings(), url)  # https:// only, in production
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


def _cli_actor() -> str:
    """Who made an account change from the command line, for the audit log."""
    import getpass

    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


TokenDaysOption = Annotated[
    int | None,
    typer.Option("--token-days", min=1, max=3650, help="token lifetime (default: YIPANQI_STAFF_TOKEN_DAYS)"),
]


@staff_app.command("add")
def staff_add(
    username: Annotated[str, typer.Option()],
    role: Annotated[list[Role], typer.Option(help="a role the account holds; repeatable")],
    token_days: TokenDaysOption = None,
) -> None:
    """Create a staff account; prints its bearer token once."""
    _setup_logging()  # the account change goes to the audit log (standard error)
    _require_node()
    with transaction() as session:
        try:
            staff, token = create_staff(
                session, username=username, roles=role, token_days=token_days, by=_cli_actor()
            )
        except DomainError as exc:
            _fail(exc.detail)
            return
    expires = staff.token_expires_at.date().isoformat() if staff.token_expires_at else "never"
    console.print(
        f"staff {staff.username} ({staff.roles}) created; bearer token (expires {expires}, shown once):"
    )
    print(token)


@staff_app.command("list")
def staff_list() -> None:
    """Show the accounts: roles, whether active, their token's state and expiry."""
    from service.staff.service import list_staff, token_state

    _require_node()
    now = utcnow()
    table = Table("id", "username", "roles", "active", "token", "token expires")
    with read_session() as session:
        for staff in list_staff(session):
            expires = (
                staff.token_expires_at.isoformat(timespec="minutes") if staff.token_expires_at else "never"
            )
            table.add_row(
                str(staff.id),
                staff.username,
                ",".join(sorted(staff.role_set)),
                "yes" if staff.active else "no",
                token_state(staff, now),
                expires,
            )
    console.print(table)


def _change_account(username: str, change: str, **options: object) -> None:
    """One account change (``service.staff.service``), audited there, or one line and exit 2."""
    from service.staff import service as accounts

    _setup_logging()  # the account change goes to the audit log (standard error)
    _require_node()
    new = accounts.new_token() if change == "token" else None  # argon2 before the transaction
    actor = _cli_actor()
    try:
        with transaction() as session:
            staff = accounts.find_staff(session, username)
            assert staff.id is not None
            if change == "revoke":
                accounts.revoke_token(session, staff.id, by=actor, now=utcnow())
                console.print(f"bearer token of {username} revoked")
            elif change == "token":
                assert new is not None
                token = accounts.replace_token(session, staff.id, new, by=actor, **options)  # type: ignore[arg-type]
                expires = staff.token_expires_at.date().isoformat() if staff.token_expires_at else "never"
                console.print(
                    f"new bearer token of {username} (expires {expires}, shown once; the old one is revoked):"
                )
                print(token)
            elif change in ("deactivate", "reactivate"):
                accounts.set_active(
                    session, staff.id, change == "reactivate", by=None, now=utcnow(), by_name=actor
                )
                console.print(
                    f"staff {username} {change}d"
                    + (": token and console sessions ended" if change == "deactivate" else "")
                )
            else:
                accounts.set_roles(session, staff.id, options["roles"], by=None, by_name=actor)  # type: ignore[arg-type]
                console.print(f"staff {username} now holds {staff.roles}")
    except DomainError as exc:
        _fail(exc.detail if exc.status_code != 404 else f"no staff account {username!r}")


UsernameArgument = Annotated[str, typer.Argument(help="the account")]


@staff_app.command("revoke")
def staff_revoke(username: UsernameArgument) -> None:
    """Revoke an account's bearer token at once (no new one; `staff token` issues one)."""
    _change_account(username, "revoke")


@staff_app.command("token")
def staff_token(username: UsernameArgument, token_days: TokenDaysOption = None) -> None:
    """Issue a new bearer token (printed once); the old one stops working."""
    _change_account(username, "token", token_days=token_days)


@staff_app.command("deactivate")
def staff_deactivate(username: UsernameArgument) -> None:
    """停用: the token stops working and the console sessions end, at once."""
    _change_account(username, "deactivate")


@staff_app.command("reactivate")
def staff_reactivate(username: UsernameArgument) -> None:
    """Let a deactivated account sign in again (with its token, unless revoked or expired)."""
    _change_account(username, "reactivate")


@staff_app.command("roles")
def staff_roles(
    username: UsernameArgument,
    role: Annotated[list[Role], typer.Option(help="a role the account holds from now on; repeatable")],
) -> None:
    """Set the roles an account holds (replacing the ones it had)."""
    _change_account(username, "roles", roles=role)


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


@pii_app.command("rotate")
def pii_rotate(
    batch_size: Annotated[int | None, typer.Option(min=1, help="rows per transaction")] = None,
) -> None:
    """Add a new PII key version, make it current, and re-encrypt every stored value with it."""
    from service.signing import pii_rotation

    _require_node()
    settings = get_settings()
    try:
        ring = pii_rotation.rotate(settings)
    except pii.PiiKeyError as exc:
        _fail(str(exc))
        return
    console.print(f"PII key v{ring.current} is current (keys/{pii.KEY_FILE}); re-encrypting")
    _pii_reencrypt(batch_size or settings.pii_rotate_batch_size)


@pii_app.command("reencrypt")
def pii_reencrypt(
    batch_size: Annotated[int | None, typer.Option(min=1, help="rows per transaction")] = None,
) -> None:
    """Re-encrypt every stored value that is not under the current PII key version."""
    _require_node()
    _pii_reencrypt(batch_size or get_settings().pii_rotate_batch_size)


def _pii_reencrypt(batch_size: int) -> None:
    from service.signing import pii_rotation

    try:
        report = pii_rotation.reencrypt(batch_size=batch_size)
    except pii.PiiKeyError as exc:
        _fail(str(exc))
        return
    for column, count in sorted(report.rewritten.items()):
        console.print(f"  {column}: {count}")
    console.print(f"{report.total} value(s) re-encrypted with PII key v{report.current}")
    if report.skipped:
        console.print(f"{report.skipped} row(s) changed meanwhile: run `yipanqi pii reencrypt` again")


@pii_app.command("status")
def pii_status() -> None:
    """How many stored values each PII key version encrypts (a finished rotation: only the current)."""
    from service.signing import pii_rotation

    _require_node()
    ring = pii.keyring()
    for version, count in sorted(pii_rotation.versions().items()):
        label = f"v{version}" if version else "not encrypted"
        console.print(f"{label}: {count}{' (current)' if version == ring.current else ''}")


@pii_app.command("new-key")
def pii_new_key() -> None:
    """Print a new random key entry (for YIPANQI_PII_KEYS; append it as the highest version)."""
    import base64

    print("v<n>:" + base64.urlsafe_b64encode(pii.new_secret()).rstrip(b"=").decode("ascii"))
