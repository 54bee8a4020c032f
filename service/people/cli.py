"""``yipanqi import people FILE``: the importer with a progress bar and the report as a table."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from service.config import get_settings
from service.db import read_session
from service.errors import DomainError
from service.people import importer
from service.people.schemas import ImportReport
from service.signing.node import load_signer

SHOWN_ROWS = 200  # the rest of a long list of bad rows is counted, not printed


def run_import(console: Console, path: Path, *, dry_run: bool, staff_username: str) -> int:
    """Import ``path``; print the report; 0 when every row was good, 1 when some were bad, 2 if refused."""
    settings = get_settings()
    with read_session() as session:
        signer = load_signer(session, settings.keys_dir)
    try:
        table = importer.read_table(path.read_bytes(), importer.ImportLimits.of(settings))
    except DomainError as exc:
        console.print(f"[red]file refused:[/red] {exc.detail}")
        return 2
    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as progress:
        task = progress.add_task("checking" if dry_run else "importing", total=table.total)
        report = importer.import_people(
            signer,
            table,
            staff_username,
            dry_run=dry_run,
            batch_size=settings.people_import_batch_size,
            progress=lambda done: progress.update(task, completed=done),
        )
        progress.update(task, completed=report.rows, total=report.rows)
    print_report(console, report)
    return 1 if report.bad else 0


def print_report(console: Console, report: ImportReport) -> None:
    encoding = f", encoding {report.encoding}" if report.encoding else ""
    console.print(
        f"{report.format}{encoding}: {report.rows} rows, {report.rows - report.bad} good, "
        f"{report.bad} bad, {report.stored} stored"
    )
    if report.dry_run:
        console.print("dry run: nothing was stored")
    if report.notifications:
        console.print(f"arrival notifications queued: {report.notifications}")
    if report.bad_rows:
        table = Table("line", "field", "reason", title="bad rows (nothing of them was stored)")
        for row in report.bad_rows[:SHOWN_ROWS]:
            for error in row.errors:
                table.add_row(str(row.line), error.field, error.reason)
        console.print(table)
        if report.bad > SHOWN_ROWS:
            console.print(f"… and {report.bad - SHOWN_ROWS} more bad rows")
    if report.possible_duplicates:
        similar = Table(
            "line", "record", "look-alikes (same name, birth date, sex)", title="possible duplicates"
        )
        for match in report.possible_duplicates[:SHOWN_ROWS]:
            record = "-" if match.id is None else str(match.id)
            similar.add_row(str(match.line), record, ", ".join(str(i) for i in match.possible_duplicates))
        console.print(similar)
