"""Personal data at rest on real nodes: after an import and a 协查 both ways, the database files hold
no ID number, name or marital status in clear; the files are the owner's only; the register is
searched by a POST body, never by a URL."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from service.localnet import LocalNode, wait_for
from tests.conftest import NetworkFactory
from tests.people.factories import HERE, ORIGIN

NUMBERS = ["411627199503080024", "411627198807150066", "411627199112300085"]
NAMES = ["王秀英", "李桂芝", "张丽娟"]
CSV = "身份证号,姓名,性别,出生日期,现居住地代码,流入日期,婚姻状况,结婚日期\n" + "".join(
    f"{n},{name},女,{n[6:10]}-{n[10:12]}-{n[12:14]},{HERE},2026-01-05,初婚,2018-10-01\n"
    for n, name in zip(NUMBERS, NAMES, strict=True)
)
CLEAR = [*NUMBERS, *NAMES, "first_marriage", "2018-10-01", "初婚"]


def stored_bytes(node: LocalNode) -> bytes:
    return b"".join(p.read_bytes() for p in node.data_dir.glob("yipanqi.db*") if p.is_file())


def in_clear(node: LocalNode) -> list[str]:
    data = stored_bytes(node)
    return [value for value in CLEAR if value.encode() in data or value.encode("utf-16-le") in data]


def modes(folder: Path) -> dict[str, int]:
    return {
        p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir() if p.name.startswith("yipanqi.db")
    }


@pytest.mark.slow
def test_the_database_files_hold_no_personal_data_in_clear(sqlite_network: NetworkFactory) -> None:
    taikang, jinshui = sqlite_network([(ORIGIN, "太康县"), (HERE, "金水区")])
    imported = taikang.api("POST", "/api/v1/people/import", files={"file": ("p.csv", CSV.encode("utf-8"))})
    assert imported.status_code == 200, imported.text
    assert imported.json()["stored"] == 3

    subject = {"id_number": NUMBERS[0], "name": NAMES[0], "sex": "F", "birth_date": "1995-03-08"}
    body = {
        "recipient": ORIGIN,
        "subject": subject,
        "topic": "marital_status",
        "question": "请核实该对象婚育情况。",
    }
    sent = jinshui.api("POST", "/api/v1/verification-requests", json=body)
    assert sent.status_code == 201, sent.text

    def incoming() -> dict[str, object] | None:
        items = taikang.api("GET", "/api/v1/verification-requests").json()["items"]
        return next((c for c in items if c["request_id"] == sent.json()["request_id"]), None)

    case = wait_for(incoming)
    reply = taikang.api(
        "POST",
        f"/api/v1/verification-requests/{case['id']}/reply",
        json={"outcome": "confirmed", "findings": f"{NAMES[0]}已婚，信息一致。"},
    )
    assert reply.status_code == 200, reply.text
    wait_for(
        lambda: jinshui.api("GET", f"/api/v1/verification-requests/{sent.json()['id']}").json()["outcome"]
    )
    detail = jinshui.api("GET", f"/api/v1/verification-requests/{sent.json()['id']}").json()
    assert detail["subject"]["name"] == NAMES[0]  # read back through the models, decrypted

    # The staff API searches by a body; the number or name in a URL is refused.
    found = taikang.api("POST", "/api/v1/people/search", json={"id_number": NUMBERS[1]}).json()
    assert [i["name"] for i in found["items"]] == [NAMES[1]]
    by_name = taikang.api("POST", "/api/v1/people/search", json={"name": " 张 丽娟 "}).json()
    assert by_name["total"] == 1
    assert (
        taikang.api("POST", "/api/v1/people/search", json={"name": "张丽"}).json()["total"] == 0
    )  # exact only
    in_url = taikang.api("GET", "/api/v1/people", params={"id_number": NUMBERS[1]})
    assert in_url.status_code == 422
    assert NUMBERS[1] not in in_url.text
    assert taikang.api("GET", "/api/v1/people", params={"host_node": HERE}).json()["total"] == 3

    for node in (taikang, jinshui):  # running: the recent writes are in the -wal
        assert (node.data_dir / "yipanqi.db-wal").exists()
        assert in_clear(node) == [], node.node_id
        assert stat.S_IMODE(node.data_dir.stat().st_mode) == 0o700
        assert set(modes(node.data_dir).values()) == {0o600}, modes(node.data_dir)
        key = node.data_dir / "keys" / "pii.key"
        assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for node in (taikang, jinshui):  # stopped: checkpointed into the main file
        node.stop()
        assert in_clear(node) == [], node.node_id
