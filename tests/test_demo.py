"""``yipanqi demo`` as a county officer runs it: real processes, stopped by every signal it may get,
and output in Chinese with 北京时间."""

from __future__ import annotations

import os
import re
import shlex
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import httpx
import pytest

from service.localnet import port_in_use
from service.sla.deadlines import SHANGHAI
from tests.conftest import free_ports

pytestmark = pytest.mark.slow
NODES = 3
PID = re.compile(r"pid (\d+)")
REF = re.compile(r"[0-9a-f]{8}")


def _env(tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YIPANQI_")}
    env.update({"TMPDIR": str(tmp), "COLUMNS": "80", "PYTHONUNBUFFERED": "1"})
    return env


def _demo(base: int, *args: str) -> list[str]:
    return [sys.executable, "-m", "service", "demo", "--base-port", str(base), *args]


def _folders(tmp: Path) -> list[Path]:
    return sorted(tmp.glob("yipanqi-demo-*"))


def _alive(pid: int) -> bool:
    """Running, not a zombie waiting for a parent (or a PID 1) that does not reap."""
    stat = Path(f"/proc/{pid}/stat")
    if Path("/proc/self/stat").exists():
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _until(condition: object, timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(condition) and condition():
            return True
        time.sleep(0.1)
    return False


@dataclass
class Run:
    returncode: int
    output: str
    folders: list[Path]


@pytest.fixture(scope="module")
def once(tmp_path_factory: pytest.TempPathFactory) -> Run:
    tmp = tmp_path_factory.mktemp("demo-once")
    result = subprocess.run(
        _demo(free_ports(NODES), "--once"), env=_env(tmp), capture_output=True, text=True, timeout=300
    )
    return Run(result.returncode, result.stdout + result.stderr, _folders(tmp))


def test_once_runs_and_removes_its_folder(once: Run) -> None:
    assert once.returncode == 0, once.output
    assert once.folders == []  # private keys and databases do not stay behind in /tmp
    assert "临时数据文件夹已删除" in once.output


def test_keep_keeps_the_folder_and_says_where(tmp_path: Path) -> None:
    result = subprocess.run(
        _demo(free_ports(NODES), "--once", "--keep"),
        env=_env(tmp_path),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    [folder] = _folders(tmp_path)
    assert f"数据文件夹保留在 {folder}" in result.stdout
    assert (folder / "410105" / "keys" / "k1.pem").exists()


def test_once_speaks_chinese_with_the_code_beside_it(once: Run) -> None:
    for label in (
        "协查编号",
        "协查事项",
        "婚育情况 (marital_status)",
        "签收并反馈",
        "婚姻状况",
        "初婚",
        "未查到",
    ):
        assert label in once.output, label
    assert "True" not in once.output
    assert "False" not in once.output
    assert "first_marriage" not in once.output


def test_once_uses_one_case_reference_on_both_sides(once: Run) -> None:
    sent = re.findall(r"发出协查 (\w+)", once.output)
    answered = re.findall(r"签收并反馈协查 (\w+)", once.output)
    listed = re.findall(r"^│ (\w+) +│", once.output, flags=re.MULTILINE)
    assert len(set(sent)) == 3
    assert all(REF.fullmatch(r) for r in sent)
    assert sorted(answered) == sorted(sent)
    assert sorted(r for r in listed if REF.fullmatch(r)) == sorted(sent)
    assert not re.search(r"\bcase\b", once.output)


def test_once_shows_times_in_beijing_time(once: Run) -> None:
    assert "北京时间" in once.output
    assert "UTC+08:00" in once.output
    shown = re.findall(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}", once.output)
    assert len(shown) == 3  # when each 协查 was answered
    now = datetime.now(SHANGHAI).replace(tzinfo=None)  # real clock: the demo's nodes run on it
    for text in shown:
        assert abs(datetime.strptime(text, "%Y-%m-%d %H:%M") - now) < timedelta(minutes=15), text


def test_once_explains_a_check_rate_that_is_low_on_purpose(once: Run) -> None:
    rate = once.output.index("查验率 (check_rate)：0/3")
    explanation = once.output[rate:]
    assert "首次查验" in explanation
    assert "查验满 2 次" in explanation
    assert "并非查验失败" in explanation
    assert "1/3" in explanation  # a second look-up in the year, and she counts


def test_refuses_a_port_that_answers(tmp_path: Path) -> None:
    base = free_ports(NODES)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", base + 1))
        taken.listen()
        result = subprocess.run(
            _demo(base, "--once"), env=_env(tmp_path), capture_output=True, text=True, timeout=120
        )
    assert result.returncode == 2
    assert f"port {base + 1} " in result.stdout
    assert "--base-port" in result.stdout
    assert "Traceback" not in result.stdout + result.stderr
    assert _folders(tmp_path) == []


@pytest.fixture
def running(tmp_path: Path) -> Iterator[tuple[subprocess.Popen[bytes], list[int], range, Path]]:
    """A demo left running (not --once), its three nodes up: the process, their pids, ports, TMPDIR."""
    base = free_ports(NODES)
    out = tmp_path / "out.txt"
    command = shlex.join(_demo(base))
    # As from a script in the background: the shell hands SIGINT down ignored.
    with out.open("wb") as sink:
        demo = subprocess.Popen(
            ["sh", "-c", f"trap '' INT; exec {command}"], env=_env(tmp_path), stdout=sink, stderr=sink
        )
    pids: list[int] = []

    def nodes_up() -> bool:
        pids[:] = [int(p) for p in PID.findall(out.read_text(encoding="utf-8", errors="replace"))]
        return len(pids) == NODES or demo.poll() is not None

    assert _until(nodes_up, 120), out.read_text()
    assert len(pids) == NODES, out.read_text()
    yield demo, pids, range(base, base + NODES), tmp_path
    if demo.poll() is None:
        demo.kill()
        demo.wait()
    for pid in pids:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_stop_signal_stops_every_node_and_frees_the_ports(
    running: tuple[subprocess.Popen[bytes], list[int], range, Path], sig: signal.Signals
) -> None:
    demo, pids, ports, tmp = running
    demo.send_signal(sig)
    assert demo.wait(timeout=60) in (0, 128 + sig)
    assert _until(lambda: not any(_alive(p) for p in pids), 10), "a node outlived the demo"
    assert _until(lambda: not any(port_in_use(p) for p in ports), 10)
    assert _folders(tmp) == []


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the parent-death signal is Linux's")
def test_nodes_do_not_outlive_a_demo_killed_outright(
    running: tuple[subprocess.Popen[bytes], list[int], range, Path],
) -> None:
    demo, pids, ports, _tmp = running
    demo.kill()
    demo.wait(timeout=10)
    assert _until(lambda: not any(_alive(p) for p in pids), 10), "a node outlived the demo"
    assert _until(lambda: not any(port_in_use(p) for p in ports), 10)


LOGIN = re.compile(r"(\S+) (http://127\.0\.0\.1:\d+)/console/ .*经办人 (\S+) / (\S+)")
CSRF = re.compile(r'name="csrftoken" value="([^"]+)"')


def test_a_running_demo_prints_a_console_sign_in_that_works(
    running: tuple[subprocess.Popen[bytes], list[int], range, Path],
) -> None:
    *_, tmp = running
    output = (tmp / "out.txt").read_text(encoding="utf-8")
    logins = LOGIN.findall(output)
    assert len(logins) == NODES, output
    for role in ("经办人", "负责人", "审计", "管理员"):
        assert output.count(f"{role} ") >= NODES, role
    _name, url, username, password = logins[0]
    with httpx.Client(base_url=url, timeout=30) as browser:
        form = browser.get("/console/login")
        token = CSRF.search(form.text)
        assert token is not None
        answer = browser.post(
            "/console/login",
            data={"username": username, "password": password, "csrftoken": token.group(1)},
        )
        assert answer.status_code == 303, answer.text
        assert answer.headers["location"] == "/console/"
        assert username in browser.get("/console/").text
