"""Bulk import of the register from CSV (UTF-8 or GBK/GB18030) or XLSX, shared by the CLI and the API.

Every row is validated; a bad row is reported by line with field and reason (never the value) and
nothing of it is stored; good rows are stored in batches, one transaction each (the caller commits).
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy import insert as sa_insert
from sqlmodel import Session

from service.certificates import service as certificates
from service.errors import DomainError, ProblemField
from service.models import ContraceptionMethod, MaritalStatus, Person
from service.people import service
from service.people.schemas import BadRow, ImportReport, LookalikeRow, PersonCreate, check, today
from service.signing.node import NodeSigner

HEADERS = {  # 表头: Chinese as the township forms have it, or the API's field names
    "身份证号": "id_number",
    "姓名": "name",
    "性别": "sex",
    "出生日期": "birth_date",
    "户籍地代码": "origin_node",
    "现居住地代码": "host_node",
    "流入日期": "arrived_on",
    "流出日期": "departed_on",
    "婚姻状况": "marital_status",
    "结婚日期": "marriage_date",
    "避孕措施": "contraception_method",
    "避孕起始日期": "contraception_since",
}
FIELDS = frozenset(HEADERS.values())
REQUIRED = ("id_number", "name", "sex", "birth_date", "host_node")
DATE_FIELDS = frozenset({"birth_date", "arrived_on", "departed_on", "marriage_date", "contraception_since"})
SEX = {"男": "M", "女": "F"}
MARITAL = {
    "未婚": "unmarried", "初婚": "first_marriage", "再婚": "remarried", "离婚": "divorced", "丧偶": "widowed",
}  # fmt: skip
CONTRACEPTION = {
    "宫内节育器": "iud", "上环": "iud", "女性绝育": "female_sterilization", "女扎": "female_sterilization",
    "男性绝育": "male_sterilization", "男扎": "male_sterilization", "皮下埋植": "implant",
    "避孕针": "injection", "口服药": "oral", "口服避孕药": "oral", "避孕套": "condom", "其他": "other",
    "未避孕": "none", "无": "none",
}  # fmt: skip
LABELS = {"sex": SEX, "marital_status": MARITAL, "contraception_method": CONTRACEPTION}
_DATE = re.compile(r"^(\d{4})[-/](\d{1,2})[-/](\d{1,2})$|^(\d{4})(\d{2})(\d{2})$")
XLSX_MAGIC = b"PK\x03\x04"
_DATA_LIKE = re.compile(r"^[0-9]{6,}[0-9Xx]?$")  # a header cell that is an ID number or a code
assert all(v in {m.value for m in MaritalStatus} for v in MARITAL.values())
assert all(v in {m.value for m in ContraceptionMethod} for v in CONTRACEPTION.values())


class FileRefused(DomainError):
    """The file as a whole cannot be read: wrong encoding, unknown or missing columns."""

    status_code = 422
    code = "invalid_file"
    title = "Import file refused"


@dataclass
class Table:
    format: str
    encoding: str | None
    fields: list[str]
    rows: Iterator[tuple[int, list[Any]]]  # (line, cells) after the header
    total: int | None  # rows expected (for a progress bar), when known


def decode(content: bytes) -> tuple[str, str]:
    """The text and the encoding it was in: UTF-8 (with or without BOM), else GBK or GB18030."""
    if content.startswith(b"\xef\xbb\xbf"):
        try:
            return content[3:].decode("utf-8"), "utf-8-sig"
        except UnicodeDecodeError:
            raise FileRefused("the file starts with a UTF-8 BOM but is not UTF-8 text") from None
    for encoding in ("utf-8", "gbk", "gb18030"):
        try:
            return content.decode(encoding), encoding
        except UnicodeDecodeError:
            continue
    raise FileRefused("the file is neither UTF-8 nor GBK/GB18030 text (nor XLSX)")


def _column(name: str, reason: str) -> dict[str, str]:
    return {"field": name, "reason": reason}


def map_header(cells: list[Any]) -> list[str]:
    """Column names → field names; refuse an unknown, repeated or missing column, naming it."""
    fields: list[str] = []
    for cell in cells:
        text = "" if cell is None else str(cell).strip().lstrip("\ufeff")
        name = HEADERS.get(text, text)
        if name not in FIELDS and _DATA_LIKE.fullmatch(text):
            raise FileRefused("the first row must be the header; it looks like data (an ID number)")
        if name not in FIELDS:
            raise FileRefused(f"unknown column {text!r}", errors=[_column(text, "unknown column")])
        if name in fields:
            raise FileRefused(f"column {text!r} appears twice", errors=[_column(text, "repeated")])
        fields.append(name)
    missing = [f for f in REQUIRED if f not in fields]
    if missing:
        errors = [{"field": f, "reason": "required column missing"} for f in missing]
        raise FileRefused(f"required column(s) missing: {', '.join(missing)}", errors=errors)
    return fields


def read_csv(content: bytes) -> Table:
    text, encoding = decode(content)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise FileRefused("the file is empty: a header row is needed")
    fields = map_header(header)

    def rows() -> Iterator[tuple[int, list[Any]]]:
        for cells in reader:
            yield reader.line_num, cells

    return Table("csv", encoding, fields, rows(), max(text.count("\n") - 1, 0))


def read_xlsx(content: bytes) -> Table:
    from openpyxl import load_workbook

    try:
        workbook = load_workbook(io.BytesIO(content), read_only=True, data_only=True)
    except Exception as exc:  # openpyxl raises many kinds for a damaged file
        raise FileRefused(f"not a readable XLSX workbook ({type(exc).__name__})") from None
    sheet = workbook.worksheets[0]
    values = sheet.iter_rows(values_only=True)
    header = next(values, None)
    if header is None:
        workbook.close()
        raise FileRefused("the first sheet is empty: a header row is needed")
    while header and header[-1] is None:  # trailing empty columns of the sheet's dimension
        header = header[:-1]
    fields = map_header(list(header))

    def rows() -> Iterator[tuple[int, list[Any]]]:
        try:
            for line, cells in enumerate(values, start=2):
                yield line, list(cells)
        finally:
            workbook.close()

    total = sheet.max_row - 1 if isinstance(sheet.max_row, int) else None
    return Table("xlsx", None, fields, rows(), total)


def read_table(content: bytes) -> Table:
    return read_xlsx(content) if content.startswith(XLSX_MAGIC) else read_csv(content)


def parse_date(value: Any) -> date:
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    match = _DATE.fullmatch(str(value))
    if match is None:
        raise ValueError("not a date (YYYY-MM-DD, YYYY/MM/DD or YYYYMMDD)")
    y, m, d = (int(g) for g in (match.groups()[:3] if match.group(1) else match.groups()[3:]))
    try:
        return date(y, m, d)
    except ValueError:
        raise ValueError("not a valid calendar date") from None


def cell_value(name: str, value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        value = int(value)  # Excel keeps numbers as floats (codes, YYYYMMDD dates)
    if name in DATE_FIELDS:
        return parse_date(value if isinstance(value, date) else str(value).strip())
    text = str(value).strip()
    return LABELS.get(name, {}).get(text, text)


def parse_row(
    fields: list[str], cells: list[Any], day: date
) -> tuple[PersonCreate | None, list[ProblemField]]:
    """One row as a record, or the reasons it is bad (field and reason, never the value)."""
    extra = [c for c in cells[len(fields) :] if c not in (None, "")]
    if extra:
        return None, [ProblemField(field="row", reason=f"has more cells than the header's {len(fields)}")]
    data: dict[str, Any] = {}
    errors: list[ProblemField] = []
    for name, value in zip(fields, cells, strict=False):
        if value is None or (isinstance(value, str) and not value.strip()):
            continue
        try:
            data[name] = cell_value(name, value)
        except ValueError as exc:
            errors.append(ProblemField(field=name, reason=str(exc)))
    try:
        person = PersonCreate.model_validate(data)
    except ValidationError as exc:
        failed = {e.field for e in errors}
        for e in exc.errors(include_input=False, include_url=False):
            where = ".".join(str(p) for p in e["loc"])
            if where not in failed:
                errors.append(ProblemField(field=where, reason=str(e["msg"])))
        return None, errors
    errors += check(person, day)
    return (None, errors) if errors else (person, [])


@dataclass
class _Run:
    session: Session
    signer: NodeSigner
    staff_username: str
    dry_run: bool
    report: ImportReport
    pending: list[tuple[int, PersonCreate]] = field(default_factory=list)
    first_line: dict[str, int] = field(default_factory=dict)  # ID number → line it first appeared on

    def bad(self, line: int, errors: list[ProblemField]) -> None:
        self.report.bad_rows.append(BadRow(line=line, errors=errors))

    def flush(self) -> None:
        """Store the pending rows not registered already; report look-alikes; queue arrival notices."""
        known = service.existing_ids(self.session, [d.id_number for _, d in self.pending])
        good: list[tuple[int, dict[str, Any]]] = []
        for line, data in self.pending:
            if data.id_number in known:
                reason = f"duplicate_person: registered already as person {known[data.id_number]}"
                self.bad(line, [ProblemField(field="id_number", reason=reason)])
            else:
                good.append((line, service.person_row(data, self.staff_username)))
        self.pending = []
        ids: list[int | None] = [None] * len(good)
        if good and not self.dry_run:
            # One executemany for the batch (ORM objects row by row cost twice as much), then the ids.
            self.session.execute(sa_insert(Person), [row for _, row in good])
            stored = service.existing_ids(self.session, [row["id_number"] for _, row in good])
            ids = [stored[row["id_number"]] for _, row in good]
        similar = service.lookalikes_of(self.session, {(row["name"], row["birth_date"]) for _, row in good})
        for (line, row), pid in zip(good, ids, strict=True):
            key = (row["name"], row["birth_date"], str(row["sex"]))
            others = [i for i in similar.get(key, []) if i != pid]
            if others:
                match = LookalikeRow(line=line, id=pid, possible_duplicates=others)
                self.report.possible_duplicates.append(match)
            if pid is not None and row["arrived_on"] and row["host_node"] == self.signer.node_id:
                person = self.session.get(Person, pid)
                if person is not None and service.notify_if_arrived(
                    self.session, self.signer, person, self.staff_username
                ):
                    self.report.notifications += 1
            if pid is not None and row["origin_node"] == self.signer.node_id and row["marital_status"]:
                # 信息登记入库即视为婚育证明办理: registered at her origin, she holds the certificate.
                person = self.session.get(Person, pid)
                if person is not None and certificates.sync_certificate(
                    self.session, person, self.staff_username, "registered (import)"
                ):
                    self.report.certificates += 1
        self.report.stored += 0 if self.dry_run else len(good)


def import_people(
    session: Session,
    signer: NodeSigner,
    table: Table,
    staff_username: str,
    *,
    dry_run: bool = False,
    batch_size: int = 1000,
    commit: Callable[[], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Validate every row of ``table``; store the good ones batch by batch (``commit`` after each)."""
    report = ImportReport(format=table.format, encoding=table.encoding, dry_run=dry_run, rows=0, stored=0,
                          bad=0, bad_rows=[], possible_duplicates=[], notifications=0)  # fmt: skip
    run = _Run(session, signer, staff_username, dry_run, report)
    day = today()
    for line, cells in table.rows:
        if all(c is None or (isinstance(c, str) and not c.strip()) for c in cells):
            continue  # blank lines, and the empty rows a spreadsheet keeps at its end
        report.rows += 1
        person, errors = parse_row(table.fields, cells, day)
        if person is None:
            run.bad(line, errors)
        elif person.id_number in run.first_line:
            reason = f"duplicate_person: the same ID number is on line {run.first_line[person.id_number]}"
            run.bad(line, [ProblemField(field="id_number", reason=reason)])
        else:
            run.first_line[person.id_number] = line
            run.pending.append((line, person))
        if len(run.pending) >= batch_size:
            _end_batch(run, commit, progress)
        elif progress is not None and report.rows % 500 == 0:
            progress(report.rows)
    _end_batch(run, commit, progress)
    report.bad_rows.sort(key=lambda b: b.line)
    report.bad = len(report.bad_rows)
    return report


def _end_batch(run: _Run, commit: Callable[[], None] | None, progress: Callable[[int], None] | None) -> None:
    run.flush()
    if commit is not None and not run.dry_run:
        commit()
    if progress is not None:
        progress(run.report.rows)
