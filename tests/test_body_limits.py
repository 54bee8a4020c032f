"""Request bodies are bounded before anything reads them (service/limits.py), against a real node.

Raw sockets, so that the test decides what is sent and when: a Content-Length the node must refuse
without waiting for the body, a chunked body that never ends, a body dripped a byte at a time.
"""

from __future__ import annotations

import json
import select
import socket
import time
from collections.abc import Iterator

import httpx
import pytest

from service.localnet import LocalNode
from tests.conftest import NetworkFactory

pytestmark = pytest.mark.slow

DEADLINE = 2  # YIPANQI_REQUEST_BODY_SECONDS of the node under test
STAFF_ROUTE = "/api/v1/verification-requests"
PEER_ROUTE = "/peer/v1/verification-requests"
MIB = 1024 * 1024


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalNode]:
    from service.localnet import build_network, free_ports
    from tests.conftest import FAST

    root = tmp_path_factory.mktemp("limits")
    env = {
        **FAST,
        "YIPANQI_REQUEST_BODY_SECONDS": str(DEADLINE),
        "YIPANQI_STAFF_MAX_BODY_BYTES": "2048",
        "YIPANQI_PEOPLE_IMPORT_MAX_BYTES": "8192",
    }
    (one,) = build_network(root, [("410105", "金水区")], free_ports(1), env)
    one.start()
    yield one
    one.stop()


def _connect(node: LocalNode) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", node.port), timeout=30)
    return sock


def _head(path: str, headers: dict[str, str], method: str = "POST") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def _answered(sock: socket.socket) -> bool:
    """Whether the node has said something (or closed) without us waiting for it."""
    readable, _, _ = select.select([sock], [], [], 0)
    return bool(readable)


def _response(sock: socket.socket) -> tuple[int, dict[str, str], bytes]:
    """Read one response to its end (the node closes the connection after a refusal)."""
    data = b""
    while True:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        if b"\r\n\r\n" in data:
            length = [h for h in head.split(b"\r\n") if h.lower().startswith(b"content-length:")]
            if length and len(body) >= int(length[0].split(b":", 1)[1]):
                break
    head, _, body = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def test_a_large_content_length_is_refused_at_once_before_the_token_is_checked(node: LocalNode) -> None:
    with _connect(node) as sock:
        # 300 MiB announced, not a byte of it sent, no token: the node answers without waiting for it.
        sock.sendall(
            _head(STAFF_ROUTE, {"Content-Type": "application/json", "Content-Length": str(300 * MIB)})
        )
        status, headers, body = _response(sock)
    assert status == 413
    assert headers["connection"] == "close"
    assert json.loads(body)["code"] == "payload_too_large"


def _send_chunked(sock: socket.socket, path: str, headers: dict[str, str], total: int) -> int:
    """Send a chunked body of up to ``total`` bytes, stopping as soon as the node answers; what was sent."""
    sock.sendall(_head(path, {**headers, "Transfer-Encoding": "chunked"}))
    sent, piece = 0, b"x" * 65536
    while sent < total and not _answered(sock):
        try:
            sock.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += len(piece)
    return sent


def test_a_chunked_body_is_cut_at_the_limit(node: LocalNode) -> None:
    with _connect(node) as sock:
        sent = _send_chunked(sock, STAFF_ROUTE, {"Content-Type": "application/json"}, 64 * MIB)
        status, _headers, body = _response(sock)
    assert status == 413, body
    assert json.loads(body)["code"] == "payload_too_large"
    assert sent < 16 * MIB  # cut off near the 1 MiB limit, not read to its end (64 MiB)


def test_the_peer_api_cuts_a_chunked_body_with_a_signed_answer(node: LocalNode) -> None:
    with _connect(node) as sock:
        _send_chunked(sock, PEER_ROUTE, {"Content-Type": "application/json"}, 64 * MIB)
        status, headers, body = _response(sock)
    assert status == 413
    assert json.loads(body)["code"] == "payload_too_large"
    assert "signature" in headers
    assert "signature-input" in headers


def _drip(sock: socket.socket, path: str, length: int, pause: float, headers: dict[str, str]) -> int:
    """Announce ``length`` bytes and send one every ``pause`` seconds until the node answers."""
    sock.sendall(_head(path, {**headers, "Content-Length": str(length)}))
    sent = 0
    while sent < length and not _answered(sock):
        try:
            sock.sendall(b" ")
        except (BrokenPipeError, ConnectionResetError):
            break
        sent += 1
        time.sleep(pause)
    return sent


@pytest.mark.parametrize("path", [STAFF_ROUTE, PEER_ROUTE])
def test_a_dripped_body_is_cut_at_the_deadline(node: LocalNode, path: str) -> None:
    # 120 bytes at one every 0.25 s would take 30 s; each byte comes well within any read timeout.
    with _connect(node) as sock:
        sent = _drip(sock, path, 120, 0.25, {"Content-Type": "application/json"})
        status, headers, body = _response(sock)
    assert status == 408, body
    assert json.loads(body)["code"] == "request_timeout"
    assert headers["connection"] == "close"
    assert sent < 120
    if path == PEER_ROUTE:
        assert "signature" in headers


def test_a_register_upload_has_its_own_limit_and_the_console_says_it(node: LocalNode) -> None:
    csv = (
        "身份证号,姓名,性别,出生日期,现居住地代码\n" + "411627199001011234,王芳,女,1990-01-01,410105\n" * 90
    ).encode()
    assert 2048 < len(csv) < 8192
    upload = node.api("POST", "/api/v1/people/import", files={"file": ("a.csv", csv, "text/csv")})
    assert upload.status_code == 200, upload.text  # over the JSON routes' limit, within its own
    headers = {"Content-Type": "application/json", "Authorization": f"Bearer {node.token}"}
    json_body = httpx.post(node.url + STAFF_ROUTE, content=b" " * len(csv), headers=headers)
    assert json_body.status_code == 413
    for path in ("/api/v1/people/import", "/console/people/import"):
        with _connect(node) as sock:
            declared = 8192 + 64 * 1024 + 1
            sock.sendall(
                _head(
                    path, {"Content-Type": "multipart/form-data; boundary=b", "Content-Length": str(declared)}
                )
            )
            status, headers, body = _response(sock)
        assert status == 413
        if path.startswith("/console"):
            assert headers["content-type"].startswith("text/html")
            assert "文件超过允许的大小（最大 8 KB）" in body.decode()


def test_bodies_within_the_limits_are_served_as_before(node: LocalNode) -> None:
    answer = node.api("POST", STAFF_ROUTE, json={})
    assert answer.status_code == 422  # read, authenticated and validated


def test_failed_token_checks_are_limited_per_source(sqlite_network: NetworkFactory) -> None:
    (one,) = sqlite_network([("410105", "金水区")])
    # YIPANQI_AUTH_FAILURES_PER_MINUTE: 10 (service/staff/service.py; its unit test in tests/staff).
    statuses = [one.api("GET", STAFF_ROUTE, token=f"yp_{999 + i}_{'x' * 43}").status_code for i in range(10)]
    assert statuses == [401] * 10
    limited = one.api("GET", STAFF_ROUTE, token="yp_2000_" + "x" * 43)
    assert limited.status_code == 429
    assert 1 <= int(limited.headers["Retry-After"]) <= 60
    assert limited.json()["code"] == "rate_limited"
