"""The ``yipanqi`` command as an operator types it (each call a real process)."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from rich.cells import cell_len

from service.clock import utcnow
from service.db import make_engine
from service.migrations import upgrade
from service.signing.keys import public_key_from_text
from service.sla.deadlines import SHANGHAI
from service.sla.schemas import METRIC_NAMES
from tests.conftest import NetworkFactory, clock_offset, free_port


def run(data_dir: Path, *args: str, **env_extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIPANQI_")}
    env["YIPANQI_DATA_DIR"] = str(data_dir)
    env["YIPANQI_CLOCK_OFFSET_SECONDS"] = clock_offset()  # the session's pinned clock
    env["COLUMNS"] = "200"
    env.update(env_extra)
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
    added = run(
        node_dir,
        "peers",
        "add",
        "--node-id",
        "411627",
        "--name",
        "太康县",
        "--url",
        "http://127.0.0.1:8102",
        "--key",
        key,
    )
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
    result = run(
        node_dir,
        "peers",
        "add",
        "--node-id",
        "411627",
        "--name",
        "太康县",
        "--url",
        "http://127.0.0.1:8102",
        "--key",
        key,
    )
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


# The usual mistakes: one line naming what to do, exit code 2, no traceback.


def assert_one_clear_line(result: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 1, result.stdout
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def peers_add(data_dir: Path, node_id: str, key: str) -> subprocess.CompletedProcess[str]:
    return run(
        data_dir,
        "peers",
        "add",
        "--node-id",
        node_id,
        "--name",
        "太康县",
        "--url",
        "http://127.0.0.1:8102",
        "--key",
        key,
    )


def test_serve_in_an_empty_folder_says_to_run_init(tmp_path: Path) -> None:
    result = run(tmp_path / "yipanqi-data", "serve", "--port", "1")
    assert_one_clear_line(result, "no node in", "no such folder", "yipanqi init --node-id")
    assert not (tmp_path / "yipanqi-data").exists()


def test_serve_with_a_data_folder_but_no_node_says_to_run_init(tmp_path: Path) -> None:
    result = run(tmp_path, "serve", "--port", "1")
    assert_one_clear_line(result, f"no node in {tmp_path.resolve()}", "yipanqi init --node-id")
    assert not (tmp_path / "yipanqi.db").exists()  # nothing created on the way


def test_serve_with_a_database_but_no_node_says_to_run_init(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'yipanqi.db'}")
    try:
        upgrade(engine)  # the tables, and no node in them
    finally:
        engine.dispose()
    result = run(tmp_path, "serve", "--port", "1")
    assert_one_clear_line(result, "no node in", "its database is empty", "yipanqi init --node-id")


def test_serve_on_a_port_in_use_names_it(node_dir: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = run(node_dir, "serve", "--port", str(port))
    assert_one_clear_line(result, f"port {port} on 127.0.0.1 is already in use", "--port")


def test_peers_add_names_a_key_cut_short(node_dir: Path) -> None:
    cut = "411627/k1=Kay64UG8yvCyLhqU000LxzYeUm0L_hLIl5S8kyKWb"  # 41 of 43 characters
    result = peers_add(node_dir, "411627", cut)
    assert_one_clear_line(result, "411627/k1", "41 characters, not 43", "cut short", "copy the whole --key")
    assert "Invalid base64" not in result.stdout


def test_peers_add_names_a_bad_node_id_before_the_keys(node_dir: Path) -> None:
    result = peers_add(node_dir, "41162", "411627/k1=Kay64UG8yvCyLhqU000LxzYeUm0L_hLIl5S8kyKWbdc")
    assert_one_clear_line(result, "node id '41162'", "6-digit")
    assert "keyid" not in result.stdout


def test_peers_add_refuses_the_node_itself(node_dir: Path) -> None:
    own = run(node_dir, "public-key").stdout.strip()
    result = peers_add(node_dir, "410105", own)
    assert_one_clear_line(result, "410105 is this node itself")
    as_another = own.replace("410105/", "411627/")
    result = peers_add(node_dir, "411627", as_another)
    assert_one_clear_line(result, "this node's own public key")
    peers = run(node_dir, "peers", "list").stdout
    assert "410105" not in peers
    assert "411627" not in peers


def test_a_misspelt_setting_is_refused_with_the_closest_name(node_dir: Path) -> None:
    result = run(node_dir, "serve", "--port", "1", YIPANQI_DEADLINE_NORMAL_DAYS="20")
    assert_one_clear_line(
        result, "unknown setting YIPANQI_DEADLINE_NORMAL_DAYS", "did you mean YIPANQI_DEADLINE_NORMAL__DAYS?"
    )


def test_report_is_readable_at_80_columns_in_beijing_time(node_dir: Path) -> None:
    today = utcnow().astimezone(SHANGHAI).date()
    month = (today.replace(day=1) - timedelta(days=1)).strftime("%Y-%m")
    result = run(node_dir, "report", "--month", month, COLUMNS="80")
    assert result.returncode == 0, result.stdout + result.stderr
    assert max(cell_len(line) for line in result.stdout.splitlines()) <= 80
    lines = result.stdout.splitlines()
    for metric, name in METRIC_NAMES.items():  # each name whole, above its own rows, once
        assert sum(line.startswith(f"{name} {metric} ") for line in lines) == 1, name
    assert "北京时间" in result.stdout
    assert "UTC+08:00" in result.stdout
    assert "+00:00" not in result.stdout


def test_a_bad_clock_offset_is_one_line_naming_it(node_dir: Path) -> None:
    result = run(node_dir, "serve", "--port", "1", YIPANQI_CLOCK_OFFSET_SECONDS="next week")
    assert_one_clear_line(result, "invalid setting", "YIPANQI_CLOCK_OFFSET_SECONDS must be a number")


def test_serve_workers_on_sqlite_is_refused_with_the_reason(node_dir: Path) -> None:
    result = run(node_dir, "serve", "--workers", "2", "--port", str(free_port()))
    assert_one_clear_line(result, "--workers needs PostgreSQL", "one process write at a time")


@pytest.mark.postgres
def test_serve_workers_runs_several_processes_on_postgres(postgres_network: NetworkFactory) -> None:
    (node,) = postgres_network([("410105", "金水区")], start=False, env={"YIPANQI_RELAY_ENABLED": "false"})
    node.start(workers=2)
    assert node.process is not None
    children = Path(f"/proc/{node.process.pid}/task/{node.process.pid}/children").read_text().split()
    assert len(children) >= 2, children  # the workers (and uvicorn's own helper, if any)
    headers = {"Authorization": f"Bearer {node.token}"}
    answers = [httpx.get(f"{node.url}/api/v1/verification-requests", headers=headers) for _ in range(20)]
    assert {a.status_code for a in answers} == {200}
