"""A large import does not stop the node: staff requests are answered while it runs (issue 8)."""

from __future__ import annotations

import threading
from datetime import date, timedelta

import httpx
import pytest

from service.localnet import LocalNode
from tests.conftest import NetworkFactory
from tests.people.factories import HERE, ORIGIN, id_number, person

HEADER = "身份证号,姓名,性别,出生日期,现居住地代码"
ROWS = 40_000  # some seconds of work even on a fast machine


def big_file(rows: int = ROWS) -> bytes:
    """``rows`` valid records (50 numbers per birth date), no arrival date: no notifications."""
    lines = [HEADER]
    for i in range(rows):
        birth = date(1980, 1, 1) + timedelta(days=i // 50)
        lines.append(f"{id_number(ORIGIN, birth, i % 50, 'F')},人{i},女,{birth.isoformat()},{HERE}")
    return ("\n".join(lines) + "\n").encode()


def import_while_asking(
    node: LocalNode, content: bytes, *, dry_run: bool
) -> tuple[httpx.Response, list[int]]:
    """POST the import in a thread; meanwhile ask staff GETs (and, unless a dry run, register one
    person). Returns the import's answer and the statuses of the requests answered before it."""
    answer: list[httpx.Response] = []

    def upload() -> None:
        answer.append(
            httpx.post(
                f"{node.url}/api/v1/people/import",
                params={"dry_run": str(dry_run).lower()},
                files={"file": ("big.csv", content, "text/csv")},
                headers={"Authorization": f"Bearer {node.token}"},
                timeout=600.0,
            )
        )

    thread = threading.Thread(target=upload)
    thread.start()
    during: list[int] = []
    try:
        thread.join(0.5)  # let the upload arrive and the import start
        wrote = dry_run
        while thread.is_alive():
            for method, path in (("POST", "/api/v1/people/search"), ("GET", "/api/v1/verification-requests")):
                status = node.api(
                    method, path, json={"name": "人7"} if method == "POST" else None
                ).status_code
                if thread.is_alive():
                    during.append(status)
            if not wrote:  # one write of its own while the import writes
                status = node.api(
                    "POST", "/api/v1/people", json=person(seq=49, birth=date(1970, 1, 1))
                ).status_code
                wrote = True
                if thread.is_alive():
                    during.append(status)
    finally:
        thread.join()
    return answer[0], during


@pytest.mark.slow
def test_staff_requests_are_answered_while_a_large_import_runs(network: NetworkFactory) -> None:
    (node,) = network([(HERE, "金水区")])
    content = big_file()

    dry, during = import_while_asking(node, content, dry_run=True)
    assert dry.status_code == 200, dry.text
    assert (dry.json()["rows"], dry.json()["stored"], dry.json()["bad"]) == (ROWS, 0, 0)
    assert during, "the dry run ended before any request was answered: make the file larger"
    assert set(during) == {200}

    done, during = import_while_asking(node, content, dry_run=False)
    assert done.status_code == 200, done.text
    assert (done.json()["rows"], done.json()["stored"], done.json()["bad"]) == (ROWS, ROWS, 0)
    assert during, "the import ended before any request was answered: make the file larger"
    assert set(during) <= {200, 201}
    assert 200 in during
    # The person registered on the side (201 whether or not the import had ended by then).
    assert node.api("GET", "/api/v1/people", params={"host_node": HERE}).json()["total"] == ROWS + 1
