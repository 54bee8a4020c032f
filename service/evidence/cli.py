"""``yipanqi audit``: verify, export, seal, checkpoint and purge the evidence log."""

from __future__ import annotations

from datetime import date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated
from zoneinfo import ZoneInfo

import typer
from rich.console import Console
from rich.markup import escape

from service.clock import utcnow
from service.config import get_settings
from service.evidence.verify import BundleInvalid, Report

audit_app = typer.Typer(
    help="The evidence log: every message sent or received, hash-chained and signed.", no_args_is_help=True
)
console = Console()
SHANGHAI = ZoneInfo("Asia/Shanghai")
SHOWN = 20  # problems and notes printed at most (each kind)


def _when(value: str, *, end: bool) -> datetime:
    """A date (a whole day in Asia/Shanghai; ``--to`` includes it) or an ISO 8601 time with offset."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            start = datetime.combine(day, time(), SHANGHAI)
            return start + timedelta(days=1) if end else start
        at = datetime.fromisoformat(value)
    except ValueError:
        raise typer.BadParameter(f"{value!r} is not a date (YYYY-MM-DD) or an ISO 8601 time") from None
    if at.tzinfo is None:
        raise typer.BadParameter(f"{value!r} has no UTC offset")
    return at


def _print(report: Report, what: str) -> None:
    console.print(
        f"{what}: {report.entries} entries"
        + (f" (seq {report.first_seq}–{report.last_seq})" if report.entries else "")
        + f", {report.signatures} signatures verified, {report.checkpoints} signed checkpoints verified,"
        f" {report.bodies} bodies match their digest, {report.purged} bodies purged"
        + (f", {report.batches} messages shown in the batch their sender signed" if report.batches else ""),
        soft_wrap=True,
    )
    for note in report.notes[:SHOWN]:
        console.print(f"[yellow]note[/yellow] {escape(str(note))}", soft_wrap=True)
    if len(report.notes) > SHOWN:
        console.print(f"[yellow]note[/yellow] … and {len(report.notes) - SHOWN} more", soft_wrap=True)
    for problem in report.problems[:SHOWN]:
        console.print(f"[red]broken[/red] {escape(str(problem))}", soft_wrap=True)
    if len(report.problems) > SHOWN:
        console.print(f"[red]broken[/red] … and {len(report.problems) - SHOWN} more", soft_wrap=True)
    if report.ok:
        console.print("[green]evidence log verifies[/green]")
    else:
        first = report.first_broken
        console.print(
            f"[red]evidence log does not verify[/red]; first broken entry: {first if first else '-'}"
        )


@audit_app.command("verify")
def verify_command(
    bundle: Annotated[
        Path | None, typer.Option("--bundle", help="check an exported bundle offline (no database)")
    ] = None,
) -> None:
    """Re-check the chain, every signature, every kept body and the checkpoints; exit 1 if broken."""
    from service.evidence.verify import verify_bundle, verify_database

    settings = get_settings()
    skew = timedelta(seconds=settings.clock_skew_seconds)
    if bundle is not None:
        try:
            report = verify_bundle(bundle, skew=skew)
        except BundleInvalid as exc:
            console.print(f"[red]error:[/red] {escape(str(exc))}", soft_wrap=True)
            raise typer.Exit(2) from None
        _print(report, f"bundle {bundle.name}")
    else:
        from service.cli import _require_node

        _require_node()
        days = settings.message_body_retention_days
        purge_before = utcnow() - timedelta(days=days) if days is not None else None
        report = verify_database(skew=skew, purge_before=purge_before)
        _print(report, "evidence log")
    if not report.ok:
        raise typer.Exit(1)


@audit_app.command("export")
def export_command(
    start: Annotated[str, typer.Option("--from", help="first day (YYYY-MM-DD, Asia/Shanghai) or ISO time")],
    end: Annotated[str, typer.Option("--to", help="last day, included (or an ISO time, excluded)")],
    out: Annotated[Path, typer.Option("--out", help="the bundle to write (JSON)")],
    include_bodies: Annotated[
        bool, typer.Option("--include-bodies", help="also the message bodies (personal data!)")
    ] = False,
) -> None:
    """Write a self-contained bundle (entries, checkpoints, public keys) a third party can verify offline."""
    from service.cli import _require_node
    from service.evidence.seal import seal
    from service.evidence.verify import export_bundle

    _require_node()
    frm, to = _when(start, end=False), _when(end, end=True)
    if to <= frm:
        raise typer.BadParameter("--to must be after --from")
    seal()
    summary = export_bundle(None, out, start=frm, end=to, include_bodies=include_bodies, now=utcnow())
    console.print(
        f"wrote {out}: {summary['in_range']} entries in range, {summary['entries']} with those"
        " linking them to"
        f" a checkpoint, {summary['checkpoints']} checkpoints, {summary['bodies']} bodies"
        + (f", {summary['batches']} batch bodies" if summary["batches"] else ""),
        soft_wrap=True,
    )


@audit_app.command("seal")
def seal_command(
    full: Annotated[
        bool, typer.Option("--full", help="look through every message, not only recent ones")
    ] = False,
) -> None:
    """Seal the messages not in the chain yet (the node does it every few seconds by itself)."""
    from service.cli import _require_node
    from service.evidence.seal import seal

    _require_node()
    settings = get_settings()
    margin = timedelta(seconds=settings.evidence_seal_margin_seconds)
    added = seal(chunk=settings.evidence_seal_chunk, margin=margin, full=full)
    console.print(f"sealed {added} entries")


@audit_app.command("checkpoint")
def checkpoint_command() -> None:
    """Seal, then sign a checkpoint of the chain head now (if it moved since the last one)."""
    from service.cli import _require_node
    from service.db import read_session
    from service.evidence.seal import checkpoint, seal
    from service.signing.node import load_signer

    _require_node(private_key=True)
    seal()
    with read_session() as session:
        signer = load_signer(session, get_settings().keys_dir)
    signed = checkpoint(None, signer)
    console.print(f"signed a checkpoint of entry {signed.seq}" if signed else "nothing new to sign")


@audit_app.command("purge")
def purge_command(
    days: Annotated[
        int | None,
        typer.Option(help="empty bodies older than this (default YIPANQI_MESSAGE_BODY_RETENTION_DAYS)"),
    ] = None,
) -> None:
    """Empty the bodies of sealed messages past retention; the chain and the digests stay verifiable."""
    from service.cli import _fail, _require_node
    from service.evidence.seal import purge_bodies, seal

    _require_node()
    days = days or get_settings().message_body_retention_days
    if days is None or days < 1:
        _fail("no retention: set YIPANQI_MESSAGE_BODY_RETENTION_DAYS or give --days (at least 1)")
        return
    seal()
    emptied = purge_bodies(None, retention_days=days, now=utcnow())
    console.print(f"emptied {emptied} message bodies older than {days} days")
