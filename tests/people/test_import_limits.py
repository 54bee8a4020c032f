"""Register files are checked before they are parsed (importer.check_xlsx, _csv_rows), and the
report of a file full of bad rows stays small: the first N rows, the rest counted by column."""

from __future__ import annotations

import io
import re
import zipfile
from pathlib import Path

import pytest
from openpyxl import Workbook
from sqlalchemy.engine import Engine

from service.localnet import LocalNode
from service.people import importer
from service.people.importer import FileRefused, FileTooLarge, ImportLimits
from service.signing.node import NodeSigner
from tests.conftest import NetworkFactory
from tests.people.factories import HERE
from tests.people.test_importer import CN, good_rows, number

MIB = 1024 * 1024
HEADER = "身份证号,姓名,性别,出生日期,现居住地代码"


def workbook(rows: list[list[object]]) -> bytes:
    book = Workbook()
    sheet = book.active
    assert sheet is not None
    sheet.append(HEADER.split(","))
    for row in rows:
        sheet.append(row)
    out = io.BytesIO()
    book.save(out)
    return out.getvalue()


SST_TYPE = "application/vnd.openxmlformats-officedocument.spreadsheetml.sharedStrings+xml"


def bomb(padding: int) -> bytes:
    """A valid workbook with a sharedStrings.xml of ``padding`` bytes of one repeated string (which
    openpyxl reads whole on opening): a few hundred KB packed, as much as asked unpacked."""
    plain = workbook([[number(1), "王秀英", "女", "1995-03-08", HERE]])
    out = io.BytesIO()
    with (
        zipfile.ZipFile(io.BytesIO(plain)) as source,
        zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as target,
    ):
        for member in source.infolist():
            data = source.read(member)
            if member.filename == "[Content_Types].xml":
                override = f'<Override PartName="/xl/sharedStrings.xml" ContentType="{SST_TYPE}"/>'
                data = data.replace(b"</Types>", override.encode() + b"</Types>")
            target.writestr(member, data)
        item = b"<si><t>x</t></si>"
        block = item * (MIB // len(item))
        strings = zipfile.ZipInfo("xl/sharedStrings.xml")
        strings.compress_type = zipfile.ZIP_DEFLATED
        with target.open(strings, "w", force_zip64=True) as part:
            part.write(b'<sst xmlns="http://schemas.openxmlformats.org/spreadsheetml/2006/main">')
            for _ in range(padding // len(block)):
                part.write(block)
            part.write(b"</sst>")
    return out.getvalue()


def test_a_workbook_that_unpacks_to_hundreds_of_mib_is_refused_unread() -> None:
    content = bomb(300 * MIB)
    assert len(content) < 2 * MIB  # a small upload
    with pytest.raises(FileTooLarge, match="unpacks to more than") as refused:
        importer.read_table(content)
    assert refused.value.status_code == 413


def test_a_member_packed_like_a_zip_bomb_is_refused_within_the_size_limit() -> None:
    content = bomb(2 * MIB)  # well under the 256 MiB limit, packed ~1000:1
    with pytest.raises(FileRefused, match="packed more than 100:1"):
        importer.read_table(content)
    table = importer.read_table(content, ImportLimits(max_ratio=100_000))  # allowed: it is read
    assert table.fields == importer.map_header(HEADER.split(","))


def test_rows_are_counted_before_parsing() -> None:
    limits = ImportLimits(max_rows=3)
    rows = [[number(i), "王秀英", "女", "1995-03-08", HERE] for i in range(1, 5)]
    with pytest.raises(FileTooLarge, match="more than 3 rows"):
        importer.read_table(workbook(rows), limits)
    assert importer.read_table(workbook(rows[:3]), limits).total == 3
    csv = "\n".join([HEADER, *(",".join(str(c) for c in row) for row in rows)]).encode()
    with pytest.raises(FileTooLarge, match="more than 3 rows"):
        importer.read_table(csv, limits)


def test_a_long_cell_makes_a_bad_row_named_by_column_without_its_value(
    engine: Engine, signer: NodeSigner
) -> None:
    long_name = "王" * 1001
    lines = [CN, *good_rows(), f"{number(9)},{long_name},女,1995-03-08,,{HERE},,,,,,"]
    for content in ("\n".join(lines).encode(), workbook([[number(9), long_name, "女", "1995-03-08", HERE]])):
        table = importer.read_table(content)
        report = importer.import_people(signer, table, "op", engine=engine, dry_run=True)
        (bad,) = report.bad_rows
        assert [e.model_dump() for e in bad.errors] == [
            {"field": "name", "reason": "is longer than 1000 characters"}
        ]
        assert long_name not in report.model_dump_json()


def test_a_cell_past_the_csv_modules_own_limit_refuses_the_file() -> None:
    content = f"{HEADER}\n{number(1)},{'x' * 200_000},女,1995-03-08,{HERE}\n".encode()
    with pytest.raises(FileRefused, match="line 2 cannot be read as CSV") as refused:
        importer.read_table(content)
    assert "xxxx" not in str(refused.value.problem())


@pytest.mark.slow  # a minute of one core
def test_a_million_bad_rows_give_a_capped_report(engine: Engine, signer: NodeSigner) -> None:
    # Each row has a cell more than the header: the cheapest bad row, so the test stays quick.
    content = (HEADER + "\n" + "1,2,3,4,5,6\n" * 1_000_000).encode()
    report = importer.import_people(signer, importer.read_table(content), "op", engine=engine, dry_run=True)
    assert (report.rows, report.bad, report.stored) == (1_000_000, 1_000_000, 0)
    assert [b.line for b in report.bad_rows] == list(range(2, 1002))  # the first 1000, by line
    assert report.error_counts == {"row": 1_000_000}
    assert len(report.model_dump_json()) < 200_000


def test_the_first_bad_rows_are_kept_whichever_way_they_come(engine: Engine, signer: NodeSigner) -> None:
    """Bad rows found while reading and while storing (registered already) are merged by line."""
    limits = ImportLimits(max_reported_errors=3)
    first = importer.import_people(signer, importer.read_table("\n".join([CN, *good_rows()]).encode()), "op",
                                   engine=engine)  # fmt: skip
    assert first.stored == 3
    lines = [CN, *good_rows(), "1,2,3,4,5,6,7,8,9,10,11,12,13", "x", "y"]  # 3 registered, 3 bad
    report = importer.import_people(
        signer, importer.read_table("\n".join(lines).encode(), limits), "op", engine=engine
    )
    assert report.bad == 6
    assert [b.line for b in report.bad_rows] == [2, 3, 4]
    assert report.error_counts["id_number"] >= 3


def _peak_rss(node: LocalNode) -> int:
    """The node process's peak resident memory so far, in bytes (VmHWM)."""
    assert node.process is not None
    status = Path(f"/proc/{node.process.pid}/status").read_text()
    match = re.search(r"^VmHWM:\s+(\d+) kB", status, re.MULTILINE)
    assert match is not None
    return int(match.group(1)) * 1024


@pytest.mark.slow
def test_the_node_refuses_a_zip_bomb_with_its_memory_unmoved(sqlite_network: NetworkFactory) -> None:
    (node,) = sqlite_network([("410105", "金水区")])
    content = bomb(300 * MIB)
    before = _peak_rss(node)
    answer = node.api("POST", "/api/v1/people/import", files={"file": ("register.xlsx", content)})
    assert answer.status_code == 413, answer.text
    assert answer.json()["code"] == "payload_too_large"
    assert _peak_rss(node) - before < 64 * MIB  # parsed, it took the node up by 600 MiB
    bad = ("\n".join([HEADER, *["1,2,3,4,5,6"] * 5000])).encode()
    report = node.api(
        "POST", "/api/v1/people/import", files={"file": ("bad.csv", bad)}, params={"dry_run": "true"}
    )
    assert report.status_code == 200
    assert (report.json()["bad"], len(report.json()["bad_rows"])) == (5000, 1000)
    assert report.json()["error_counts"] == {"row": 5000}


def test_no_error_in_a_report_carries_a_cells_value(engine: Engine, signer: NodeSigner) -> None:
    """Every column of a row given a value it refuses (a name where a code, a date, a label
    belongs): each error names the column and the line, never what the cell held."""
    odd = "王秀英甲"
    line = ",".join([odd] * 12)
    report = importer.import_people(
        signer, importer.read_table("\n".join([CN, line]).encode()), "op", engine=engine, dry_run=True
    )
    (bad,) = report.bad_rows
    assert bad.line == 2
    assert {e.field for e in bad.errors} >= {"id_number", "sex", "birth_date", "marital_status"}
    assert odd not in report.model_dump_json()
