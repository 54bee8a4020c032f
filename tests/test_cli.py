"""The ``yipanqi`` command as an operator types it (each call a real process)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from service.signing.keys import public_key_from_text


def run(data_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIPANQI_")}
    env["YIPANQI_DATA_DIR"] = str(data_dir)
    env["COLUMNS"] = "200"
    return subprocess.run([sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True)


@pytest.fixture(scope="module")
def node_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    data_dir = tmp_path_factory.mktemp("cli") / "data"
    result = run(data_dir, "init", "--node-id", "410105", "--name", "金水区")
    assert result.returncode == 0, result.stderr
    assert "keyid:      410105/k1" in result.stdout
    public_key = result.stdout.split("public key: ")[1].split()[0]
    public_key_from_text(public_key)  # the protocol's text form: base64url of 32 bytes
    assert f"--key 410105/k1={public_key}" in result.stdout
    return data_dir


def test_init_writes_a_private_key_only_the_owner_can_read(node_dir: Path) -> None:
    key_file = node_dir / "keys" / "k1.pem"
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert stat.S_IMODE((node_dir / "keys").stat().st_mode) == 0o700
    assert (node_dir / "yipanqi.db").exists()


def test_init_refuses_a_second_node_in_the_same_folder(node_dir: Path) -> None:
    result = run(node_dir, "init", "--node-id", "411627", "--name", "太康县")
    assert result.returncode == 2
    assert "already holds a node" in result.stdout


def test_init_refuses_a_bad_node_id(tmp_path: Path) -> None:
    result = run(tmp_path / "d", "init", "--node-id", "012345", "--name", "x")
    assert result.returncode == 2
    assert "6-digit" in result.stdout
    assert not (tmp_path / "d" / "keys" / "k1.pem").exists()


def test_peers_add_list_remove(node_dir: Path) -> None:
    key = "411627/k1=Kay64UG8yvCyLhqU000LxzYeUm0L_hLIl5S8kyKWbdc"
    added = run(node_dir, "peers", "add", "--node-id", "411627", "--name", "太康县",
                "--url", "http://127.0.0.1:8102", "--key", key)
    assert added.returncode == 0, added.stdout + added.stderr
    listed = run(node_dir, "peers", "list")
    assert "411627" in listed.stdout
    assert "太康县" in listed.stdout
    assert "Kay64UG8" in listed.stdout
    removed = run(node_dir, "peers", "remove", "--node-id", "411627")
    assert removed.returncode == 0
    assert "411627" not in run(node_dir, "peers", "list").stdout
    again = run(node_dir, "peers", "remove", "--node-id", "411627")
    assert again.returncode == 2
    assert "no peer 411627" in again.stdout


@pytest.mark.parametrize(
    ("key", "message"),
    [
        ("411627/k1", "key must be"),
        ("411627/k1=not-base64!", "not base64url"),
        ("411627/k1=AAAA", "32 bytes"),
        ("310110/k1=Kay64UG8yvCyLhqU000LxzYeUm0L_hLIl5S8kyKWbdc", "does not belong"),
        ("41162/k1=Kay64UG8yvCyLhqU000LxzYeUm0L_hLIl5S8kyKWbdc", "keyid must be"),
    ],
)
def test_peers_add_rejects_bad_keys(node_dir: Path, key: str, message: str) -> None:
    result = run(node_dir, "peers", "add", "--node-id", "411627", "--name", "太康县",
                 "--url", "http://127.0.0.1:8102", "--key", key)
    assert result.returncode == 2
    assert message in result.stdout
    assert "411627" not in run(node_dir, "peers", "list").stdout


def test_staff_add_prints_a_token_once(node_dir: Path) -> None:
    result = run(node_dir, "staff", "add", "--username", "zhang.san", "--role", "operator")
    assert result.returncode == 0
    token = result.stdout.strip().splitlines()[-1]
    assert token.startswith("yp_")
    assert token.split("_", 2)[2] not in (node_dir / "yipanqi.db").read_bytes().decode("latin-1")
    bad_role = run(node_dir, "staff", "add", "--username", "li.si", "--role", "boss")
    assert bad_role.returncode == 2
    taken = run(node_dir, "staff", "add", "--username", "zhang.san", "--role", "auditor")
    assert taken.returncode == 2
    assert "taken" in taken.stdout
