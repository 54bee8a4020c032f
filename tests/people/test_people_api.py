"""The register's staff API and CLI against a real node process (SQLite and PostgreSQL)."""

from __future__ import annotations

from datetime import date
from pathlib import Path

import httpx
import pytest
from sqlmodel import Session

from service.db import make_engine
from service.localnet import LocalNode
from service.models import Role
from service.staff.service import create_staff
from tests.conftest import NetworkFactory
from tests.people.factories import HERE, ORIGIN, id_number, person

CN = "身份证号,姓名,性别,出生日期,现居住地代码,流入日期"


def token(node: LocalNode, role: Role) -> str:
    engine = make_engine(node.database_url)
    try:
        with Session(engine) as session:
            _, secret = create_staff(session, username=f"{role.value}-x", role=role)
            session.commit()
    finally:
        engine.dispose()
    return secret


def call(node: LocalNode, secret: str, method: str, path: str, **kwargs: object) -> httpx.Response:
    return httpx.request(
        method, f"{node.url}{path}", headers={"Authorization": f"Bearer {secret}"}, timeout=30.0, **kwargs
    )


def csv_row(seq: int, name: str = "王秀英", birth: str = "1995-03-08") -> str:
    return f"{id_number(ORIGIN, date(1995, 3, 8), seq, 'F')},{name},女,{birth},{HERE},2026-01-05"


@pytest.mark.slow
def test_register_create_search_import_merge_and_roles(network: NetworkFactory, tmp_path: Path) -> None:
    jinshui, _taikang = network([(HERE, "金水区"), (ORIGIN, "太康县")])
    auditor, supervisor = token(jinshui, Role.auditor), token(jinshui, Role.supervisor)

    number = person(seq=1)["id_number"]
    created = jinshui.api("POST", "/api/v1/people", json=person(seq=1, arrived_on="2026-01-02"))
    assert created.status_code == 201, created.text
    first = created.json()
    assert number not in created.text  # the answer masks the number the caller sent
    assert (first["origin_node"], first["possible_duplicates"]) == (ORIGIN, [])

    again = jinshui.api("POST", "/api/v1/people", json=person(seq=1))
    assert again.status_code == 409
    assert (again.json()["code"], again.json()["existing_id"]) == ("duplicate_person", first["id"])

    bad = jinshui.api("POST", "/api/v1/people", json=person(seq=2, birth_date="1995-03-09", sex="F"))
    assert bad.status_code == 422
    assert bad.json()["errors"] == [
        {"field": "birth_date", "reason": "disagrees with the ID number (digits 7-14)"}
    ]
    assert person(seq=2)["id_number"] not in bad.text

    alike = jinshui.api("POST", "/api/v1/people", json=person(seq=2))
    assert alike.status_code == 201
    assert alike.json()["possible_duplicates"] == [first["id"]]

    assert call(jinshui, auditor, "POST", "/api/v1/people", json=person(seq=3)).status_code == 403
    listed = call(jinshui, auditor, "POST", "/api/v1/people/search", json={"id_number": number})
    assert listed.status_code == 200
    assert listed.json()["total"] == 1
    assert listed.json()["items"][0]["id_number_masked"] == number[:4] + "*" * 10 + number[-4:]
    assert number not in listed.text
    read = call(jinshui, auditor, "GET", f"/api/v1/people/{first['id']}")
    assert read.json()["id_number_masked"] == first["id_number_masked"] == number[:4] + "*" * 10 + number[-4:]
    assert number not in read.text
    reveal, path = {"reason": "identity"}, f"/api/v1/people/{first['id']}/reveal"
    assert call(jinshui, auditor, "POST", path, json=reveal).status_code == 403  # an auditor reads only
    shown = jinshui.api("POST", path, json=reveal)
    assert (shown.status_code, shown.json()["id_number"]) == (200, number)

    patched = jinshui.api("PATCH", f"/api/v1/people/{first['id']}", json={"marital_status": "first_marriage"})
    assert (patched.status_code, patched.json()["marital_status"]) == (200, "first_marriage")
    assert number not in patched.text

    # Import: line 3 is bad (birth date), the rest stored; an unknown header refuses the file.
    content = "\n".join([CN, csv_row(10, "张丽"), csv_row(11, "赵敏", "1995-03-09"), csv_row(12, "钱芳")])
    imported = jinshui.api("POST", "/api/v1/people/import", files={"file": ("p.csv", content.encode("gbk"))})
    assert imported.status_code == 200, imported.text
    report = imported.json()
    assert (report["encoding"], report["rows"], report["stored"], report["notifications"]) == ("gbk", 3, 2, 2)
    assert report["bad_rows"] == [
        {
            "line": 3,
            "errors": [{"field": "birth_date", "reason": "disagrees with the ID number (digits 7-14)"}],
        }
    ]
    refused = jinshui.api(
        "POST", "/api/v1/people/import", files={"file": ("p.csv", b"id_number,shoe_size\n")}
    )
    assert (refused.status_code, refused.json()["code"]) == (422, "invalid_file")
    assert refused.json()["errors"] == [{"field": "column 2", "reason": "unknown column"}]
    assert "shoe_size" not in refused.text  # the column by its place, never what the cell says
    assert (
        call(
            jinshui, auditor, "POST", "/api/v1/people/import", files={"file": ("p.csv", content.encode())}
        ).status_code
        == 403
    )
    assert jinshui.api("POST", "/api/v1/people/search", json={"name": "张丽"}).json()["total"] == 1
    assert jinshui.api("POST", "/api/v1/people/search", json={"name": "赵敏"}).json()["total"] == 0

    # Merge: operators may not; a supervisor may; the duplicate leaves the search.
    merge = {"duplicate_id": alike.json()["id"]}
    assert jinshui.api("POST", f"/api/v1/people/{first['id']}/merge", json=merge).status_code == 403
    merged = call(jinshui, supervisor, "POST", f"/api/v1/people/{first['id']}/merge", json=merge)
    assert merged.status_code == 200, merged.text
    assert number not in merged.text
    assert jinshui.api("POST", "/api/v1/people/search", json={"name": "王秀英"}).json()["total"] == 1
    both = jinshui.api(
        "POST", "/api/v1/people/search", json={"name": "王秀英", "include_merged": True}
    ).json()
    assert {i["merged_into"] for i in both["items"]} == {None, first["id"]}
    again_merge = call(jinshui, supervisor, "POST", f"/api/v1/people/{first['id']}/merge", json=merge)
    assert (again_merge.status_code, again_merge.json()["code"]) == (409, "invalid_state")

    # The CLI shares the importer: a dry run stores nothing, then the import stores.
    path = tmp_path / "people.csv"
    path.write_text("\n".join([CN, csv_row(20, "孙丽"), csv_row(21, "周洁")]), encoding="utf-8-sig")
    dry = jinshui.cli("import", "people", str(path), "--dry-run")
    assert "utf-8-sig" in dry
    assert "dry run: nothing was stored" in dry
    assert jinshui.api("POST", "/api/v1/people/search", json={"name": "孙丽"}).json()["total"] == 0
    done = jinshui.cli("import", "people", str(path))
    assert "2 good, 0 bad, 2 stored" in done
    assert jinshui.api("POST", "/api/v1/people/search", json={"name": "孙丽"}).json()["total"] == 1
