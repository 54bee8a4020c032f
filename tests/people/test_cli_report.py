"""``yipanqi import people`` prints its report: look-alikes alone, without bad rows, are a table too."""

from __future__ import annotations

from rich.console import Console

from service.people.cli import print_report
from service.people.schemas import ImportReport, LookalikeRow


def test_look_alikes_without_bad_rows_are_printed() -> None:
    report = ImportReport(
        format="csv",
        encoding="utf-8",
        dry_run=False,
        rows=2,
        stored=2,
        bad=0,
        bad_rows=[],
        possible_duplicates=[LookalikeRow(line=3, id=12, possible_duplicates=[7])],
        notifications=0,
    )
    console = Console(width=120, record=True)
    print_report(console, report)
    text = console.export_text()
    assert "possible duplicates" in text
    assert "12" in text
    assert "7" in text
