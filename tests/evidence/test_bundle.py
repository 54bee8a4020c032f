"""An exported bundle verifies offline (the node's verifier and the standalone procedure), and a
change to it is caught."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from service.evidence import chain
from service.evidence.verify import BundleInvalid, export_bundle, verify_bundle
from tests.evidence.conftest import Log

OFFLINE = Path(__file__).with_name("offline_check.py")


def offline(bundle: Path) -> subprocess.CompletedProcess[str]:
    # Only Python and cryptography: no yipanqi on the path, no database, no settings.
    return subprocess.run(
        [sys.executable, "-I", str(OFFLINE), str(bundle)], capture_output=True, text=True, check=False
    )


def export(log: Log, out: Path, *, bodies: bool = True, **window: timedelta) -> dict[str, int]:
    start = window.get("start", timedelta(days=-1))
    end = window.get("end", timedelta(days=1))
    return export_bundle(
        log.engine, out, start=log.now + start, end=log.now + end, include_bodies=bodies, now=log.now
    )


def test_a_bundle_verifies_offline(sealed: Log, tmp_path: Path) -> None:
    out = tmp_path / "bundle.json"
    assert export(sealed, out) == {"entries": 6, "in_range": 6, "checkpoints": 1, "bodies": 6, "batches": 0}
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert (report.entries, report.signatures, report.checkpoints, report.bodies) == (6, 8, 1, 6)
    run = offline(out)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "6 entries, 1 checkpoints: OK" in run.stdout


def test_bodies_stay_home_unless_asked(sealed: Log, tmp_path: Path) -> None:
    out = tmp_path / "bundle.json"
    export(sealed, out, bodies=False)
    text = out.read_text(encoding="utf-8")
    assert json.loads(text)["bodies"] == {}
    assert "王秀英" not in text
    assert "411627199001010029" not in text
    assert verify_bundle(out).ok


def test_part_of_the_chain_is_linked_to_the_checkpoint_after_it(sealed: Log, tmp_path: Path) -> None:
    # The window holds the first messages only; the bundle carries the entries on to the checkpoint.
    out = tmp_path / "part.json"
    # The clock ticked a second for each of the six messages, the seal and the checkpoint.
    first_two = {"start": timedelta(days=-1), "end": timedelta(seconds=-5)}
    summary = export(sealed, out, **first_two)
    assert (summary["in_range"], summary["entries"], summary["bodies"]) == (2, 6, 2)
    report = verify_bundle(out)
    assert report.ok, report.problems
    assert report.checkpoints == 1
    assert offline(out).returncode == 0


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("body", 2),
        ("digest", 3),
        ("signature", 4),
        ("delete", 5),
        ("swap", 1),
    ],
)
def test_a_changed_bundle_is_caught_at_the_entry(
    sealed: Log, tmp_path: Path, change: str, named: int
) -> None:
    out = tmp_path / "bundle.json"
    export(sealed, out)
    bundle = json.loads(out.read_text(encoding="utf-8"))
    entries = {e["seq"]: e for e in bundle["entries"]}
    if change == "body":
        bundle["bodies"]["2"] = "e30="  # {}
    elif change == "digest":
        entries[3]["body_digest"] = chain.content_digest(b"{}")
    elif change == "signature":
        signature = entries[4]["answer_signature"] or entries[4]["request_signature"]
        flipped = signature[:10] + ("A" if signature[10] != "A" else "B") + signature[11:]
        key = "answer_signature" if entries[4]["answer_signature"] else "request_signature"
        entries[4][key] = flipped
        for e in sorted(bundle["entries"], key=lambda e: e["seq"]):  # and the chain recomputed
            e["prev_hash"] = prev if e["seq"] > 1 else chain.GENESIS  # noqa: F821
            prev = e["entry_hash"] = chain.entry_hash(e)  # noqa: F841
    elif change == "delete":
        bundle["entries"] = [e for e in bundle["entries"] if e["seq"] != 5]
    elif change == "swap":
        entries[1]["seq"], entries[2]["seq"] = 2, 1
    out.write_text(json.dumps(bundle), encoding="utf-8")
    report = verify_bundle(out)
    assert report.first_broken == named, report.problems
    run = offline(out)
    assert run.returncode == 1
    assert f"entry {named}:" in run.stdout


def test_not_a_bundle(tmp_path: Path) -> None:
    out = tmp_path / "x.json"
    out.write_text('{"format": "something else"}', encoding="utf-8")
    with pytest.raises(BundleInvalid):
        verify_bundle(out)
