"""``yipanqi directory keygen|sign|verify|import|show`` as an operator types them (real processes)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import clock_offset


def run(data_dir: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIPANQI_")}
    env["YIPANQI_DATA_DIR"] = str(data_dir)
    env["YIPANQI_CLOCK_OFFSET_SECONDS"] = clock_offset()  # the session's pinned clock
    env["COLUMNS"] = "200"
    env.update(env_extra)
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True)


def _key_line(result: subprocess.CompletedProcess[str]) -> str:
    return result.stdout.split("--key ")[1].split()[0]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path | str]:
    root = tmp_path_factory.mktemp("directory-cli")
    made = {}
    for node_id, name in (("410105", "金水区"), ("411627", "太康县")):
        result = run(root / node_id, "init", "--node-id", node_id, "--name", name)
        assert result.returncode == 0, result.stdout + result.stderr
        made[node_id] = _key_line(result)
    keygen = run(
        root / "authority", "directory", "keygen", "--keyid", "henan/2026", "--out", str(root / "auth.pem")
    )
    assert keygen.returncode == 0, keygen.stdout + keygen.stderr
    trusted = keygen.stdout.strip().splitlines()[-1]
    assert trusted.startswith("henan/2026=")
    assert (root / "auth.pem").stat().st_mode & 0o777 == 0o600
    return {"root": root, "jinshui_key": made["410105"], "taikang_key": made["411627"], "trusted": trusted}


def test_sign_verify_import_show_round_trip(world: dict[str, Path | str]) -> None:
    root = Path(world["root"])
    a, b = root / "410105", root / "411627"
    trust = {"YIPANQI_DIRECTORY_AUTHORITY_KEYS": json.dumps([world["trusted"]])}
    # The authority keeps its list with `peers add` on a node of its own (here 410105's), then signs it.
    added = run(
        a, "peers", "add", "--node-id", "411627", "--name", "太康县", "--url", "https://tk.example",
        "--key", str(world["taikang_key"]),
    )  # fmt: skip
    assert added.returncode == 0, added.stdout
    doc = root / "directory-v1.json"
    signed_v1 = run(
        a, "directory", "sign", "--from-local", "--include-self", "https://js.example", "--key",
        str(root / "auth.pem"), "--keyid", "henan/2026", "--version", "1", "--issuer", "河南省卫生健康委员会",
        "--output", str(doc),
    )  # fmt: skip
    assert signed_v1.returncode == 0, signed_v1.stdout + signed_v1.stderr
    assert "version 1 signed by henan/2026: 2 peers" in signed_v1.stdout

    verified = run(b, "directory", "verify", str(doc), **trust)
    assert verified.returncode == 0, verified.stdout
    assert "signature by henan/2026 verifies" in verified.stdout
    assert "(valid)" in verified.stdout

    tampered = root / "tampered.json"
    tampered.write_text(doc.read_text(encoding="utf-8").replace("https://js.example", "https://evil.example"))
    refused = run(b, "directory", "verify", str(tampered), **trust)
    assert refused.returncode == 1
    assert "does not verify" in refused.stdout
    assert run(b, "directory", "import", str(tampered), **trust).returncode == 1

    untrusting = run(b, "directory", "import", str(doc))
    assert untrusting.returncode == 1
    assert "no authority key is configured" in untrusting.stdout

    imported = run(b, "directory", "import", str(doc), **trust)
    assert imported.returncode == 0, imported.stdout + imported.stderr
    assert "version 1 imported: 1 peers, 1 keys" in imported.stdout  # 411627 itself skipped
    again = run(b, "directory", "import", str(doc), **trust)
    assert "already in force: nothing changed" in again.stdout

    shown = run(b, "directory", "show", **trust)
    assert shown.returncode == 0, shown.stdout
    assert "signed directory version 1 from 河南省卫生健康委员会" in shown.stdout
    assert "status: ok: version 1" in shown.stdout
    assert "410105" in shown.stdout
    assert "https://js.example" in shown.stdout
    as_json = json.loads(run(b, "directory", "show", "--json", **trust).stdout)
    assert as_json == json.loads(doc.read_text(encoding="utf-8"))

    local_edit = run(
        b, "peers", "add", "--node-id", "310110", "--name", "杨浦区", "--url", "https://yp.example",
        "--key", str(world["jinshui_key"]).replace("410105", "310110"),
    )  # fmt: skip
    assert local_edit.returncode == 2
    assert "signed one (version 1" in local_edit.stdout

    # Version 2, then version 1 again: refused, never rolled back.
    doc2 = root / "directory-v2.json"
    signed_v2 = run(
        a, "directory", "sign", "--from-local", "--key", str(root / "auth.pem"), "--keyid", "henan/2026",
        "--version", "2", "--issuer", "河南省卫生健康委员会", "--output", str(doc2),
    )  # fmt: skip
    assert signed_v2.returncode == 0, signed_v2.stdout
    assert run(b, "directory", "import", str(doc2), **trust).returncode == 0
    rollback = run(b, "directory", "import", str(doc), **trust)
    assert rollback.returncode == 1
    assert "older than version 2" in rollback.stdout
    assert "version 2 from" in run(b, "directory", "show", **trust).stdout


def test_a_node_with_a_bad_authority_key_setting_refuses_to_start(world: dict[str, Path | str]) -> None:
    root = Path(world["root"])
    bad = run(root / "410105", "directory", "show", YIPANQI_DIRECTORY_AUTHORITY_KEYS='["henan/2026=short"]')
    assert bad.returncode == 2
    assert "YIPANQI_DIRECTORY_AUTHORITY_KEYS" in bad.stdout


def test_sign_refuses_a_source_that_does_not_validate(world: dict[str, Path | str], tmp_path: Path) -> None:
    root = Path(world["root"])
    source = tmp_path / "peers.json"
    source.write_text(json.dumps({"peers": [{"node_id": "012345", "name": "x", "url": "https://x.example",
                                             "keys": []}]}))  # fmt: skip
    result = run(
        root / "authority", "directory", "sign", "--source", str(source), "--key", str(root / "auth.pem"),
        "--keyid", "henan/2026", "--version", "1", "--issuer", "x", "--output", str(tmp_path / "out.json"),
    )  # fmt: skip
    assert result.returncode == 2
    assert "does not validate" in result.stdout
    assert not (tmp_path / "out.json").exists()
