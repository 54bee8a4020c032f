"""Bulk import of the register from CSV (UTF-8 or GBK/GB18030) or XLSX, shared by the CLI and the API.

Every row is validated; a bad row is reported by line with field and reason (never the value) and
nothing of it is stored; good rows are stored in chunks, one short write transaction each, with
set-based statements (``bulk.py``). Rows are read, checked and encoded with no transaction open
(docs/storage.md).
"""

from __future__ import annotations

import csv
import io
import re
import zipfile
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, NamedTuple

from pydantic import ValidationError
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from service.certificates import service as certificates
from service.clock import utcnow
from service.config import Settings
from service.db import get_engine, read_session, transaction
from service.errors import DomainError, ProblemField, ServiceBusy
from service.models import ContraceptionMethod, MaritalStatus, Person
from service.people import bulk, service
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


@dataclass(frozen=True)
class ImportLimits:
    """What a register file may hold, checked before it is parsed (the settings ``people_import_*``;
    these defaults are theirs). A file over one is refused as a whole, before anything is stored,
    except a long cell, which makes its row a bad row."""

    max_unpacked_bytes: int = 256 * 1024 * 1024  # an XLSX's members unpacked, all together
    max_ratio: int = 100  # unpacked : packed, for each member of over RATIO_GRACE bytes unpacked
    max_rows: int = 1_000_000
    max_cell_chars: int = 1000
    max_reported_errors: int = 1000  # bad rows listed in the report; the others are counted

    @classmethod
    def of(cls, settings: Settings) -> ImportLimits:
        return cls(
            max_unpacked_bytes=settings.people_import_max_unpacked_bytes,
            max_ratio=settings.people_import_max_ratio,
            max_rows=settings.people_import_max_rows,
            max_cell_chars=settings.people_import_max_cell_chars,
            max_reported_errors=settings.people_import_max_reported_errors,
        )


RATIO_GRACE = 1024 * 1024  # small members (styles, a short sheet) may be packed tighter than the ratio
MAX_MEMBERS = 1000  # a workbook has a few dozen
_ROW_TAG = re.compile(rb"<(?:[A-Za-z0-9_]{1,10}:)?row[\s>/]")  # <row …> or <x:row …>
_ROW_TAG_MAX = 16  # the longest match: the overlap kept between two chunks of a member


class FileTooLarge(DomainError):
    """The file is within the upload limit but holds more than an import may (unpacked, or rows)."""

    status_code = 413
    code = "payload_too_large"
    title = "Import file too large"


@dataclass
class Table:
    format: str
    encoding: str | None
    fields: list[str]
    rows: Iterator[tuple[int, list[Any]]]  # (line, cells) after the header
    total: int | None  # rows expected (for a progress bar), when known
    limits: ImportLimits = field(default_factory=ImportLimits)


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
    for position, cell in enumerate(cells, start=1):
        text = "" if cell is None else str(cell).strip().lstrip("\ufeff")
        name = HEADERS.get(text, text)
        if name not in FIELDS and _DATA_LIKE.fullmatch(text):
            raise FileRefused("the first row must be the header; it looks like data (an ID number)")
        if name not in FIELDS:
            # Named by its place, never by what it says: a data row taken for the header holds a
            # name or an ID number (docs: import errors name the column and row, never the value).
            where = f"column {position}"
            raise FileRefused(
                f"the header's {where} is not a known column", errors=[_column(where, "unknown column")]
            )
        if name in fields:  # a known column's name (HEADERS), not data
            raise FileRefused(f"column {name!r} appears twice", errors=[_column(name, "repeated")])
        fields.append(name)
    missing = [f for f in REQUIRED if f not in fields]
    if missing:
        errors = [{"field": f, "reason": "required column missing"} for f in missing]
        raise FileRefused(f"required column(s) missing: {', '.join(missing)}", errors=errors)
    return fields


def _csv_rows(text: str, limits: ImportLimits) -> int:
    """The rows after the header, counted before any is parsed for import: too many, or a line the
    csv module cannot read (a cell past its own limit among them), refuse the file as a whole."""
    reader = csv.reader(io.StringIO(text, newline=""))
    count = -1  # the header
    try:
        for _cells in reader:
            count += 1
            if count > limits.max_rows:
                raise FileTooLarge(f"the file has more than {limits.max_rows} rows; split it")
    except csv.Error:
        line = reader.line_num
        raise FileRefused(f"line {line} cannot be read as CSV (or a cell is far too long)") from None
    return max(count, 0)


def read_csv(content: bytes, limits: ImportLimits | None = None) -> Table:
    limits = limits or ImportLimits()
    text, encoding = decode(content)
    total = _csv_rows(text, limits)
    reader = csv.reader(io.StringIO(text, newline=""))
    header = next(reader, None)
    if header is None:
        raise FileRefused("the file is empty: a header row is needed")
    fields = map_header(header)

    def rows() -> Iterator[tuple[int, list[Any]]]:
        for cells in reader:
            yield reader.line_num, cells

    return Table("csv", encoding, fields, rows(), total, limits)


def check_xlsx(content: bytes, limits: ImportLimits) -> int:
    """An XLSX checked from its zip directory and a scan of its members, before it is parsed: the
    unpacked size of all members, each large member's compression ratio (a zip bomb), and the
    rows (``<row>`` elements, in every member: an upper bound for the first sheet's). The sizes
    in the directory bound what is unpacked: Python's zipfile stops at a member's stated size.
    Returns the rows counted (the header among them)."""
    try:
        archive = zipfile.ZipFile(io.BytesIO(content))
    except (zipfile.BadZipFile, ValueError, OSError):
        raise FileRefused("not a readable XLSX workbook (BadZipFile)") from None
    with archive:
        members = archive.infolist()
        if len(members) > MAX_MEMBERS:
            raise FileRefused(f"not a register workbook: more than {MAX_MEMBERS} parts")
        unpacked = sum(m.file_size for m in members)
        if unpacked > limits.max_unpacked_bytes:
            raise FileTooLarge(
                f"the workbook unpacks to more than {limits.max_unpacked_bytes} bytes; split it"
            )
        for member in members:
            if member.file_size > RATIO_GRACE and member.file_size > limits.max_ratio * max(
                member.compress_size, 1
            ):
                raise FileRefused(
                    f"a part of the workbook is packed more than {limits.max_ratio}:1 (a zip bomb?)"
                )
        rows = 0
        try:
            for member in members:
                rows += _count_rows(archive, member)
                if rows > limits.max_rows + 1:
                    raise FileTooLarge(f"the workbook has more than {limits.max_rows} rows; split it")
        except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, OSError, EOFError):
            raise FileRefused("not a readable XLSX workbook (a damaged part)") from None
    return rows


def _count_rows(archive: zipfile.ZipFile, member: zipfile.ZipInfo) -> int:
    count, tail = 0, b""
    with archive.open(member) as part:
        while chunk := part.read(1024 * 1024):
            data = tail + chunk
            count += sum(1 for m in _ROW_TAG.finditer(data) if m.end() > len(tail))
            tail = data[-_ROW_TAG_MAX:]
    return count


def read_xlsx(content: bytes, limits: ImportLimits | None = None) -> Table:
    from openpyxl import load_workbook

    limits = limits or ImportLimits()
    counted = check_xlsx(content, limits)
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
                if line > limits.max_rows + 1:  # rows the scan did not see as <row> elements
                    raise FileTooLarge(f"the workbook has more than {limits.max_rows} rows; split it")
                yield line, list(cells)
        finally:
            workbook.close()

    total = sheet.max_row - 1 if isinstance(sheet.max_row, int) else None
    if total is None or total > counted:  # the sheet's own dimension may say anything
        total = max(counted - 1, 0)
    return Table("xlsx", None, fields, rows(), total, limits)


def read_table(content: bytes, limits: ImportLimits | None = None) -> Table:
    """The file as a table, after the checks of ``limits`` (default: the settings' defaults)."""
    if content.startswith(XLSX_MAGIC):
        return read_xlsx(content, limits)
    return read_csv(content, limits)


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
    fields: list[str], cells: list[Any], day: date, max_cell_chars: int = ImportLimits.max_cell_chars
) -> tuple[PersonCreate | None, list[ProblemField]]:
    """One row as a record, or the reasons it is bad (field and reason, never the value)."""
    extra = [c for c in cells[len(fields) :] if c not in (None, "")]
    if extra:
        return None, [ProblemField(field="row", reason=f"has more cells than the header's {len(fields)}")]
    long = [
        ProblemField(field=name, reason=f"is longer than {max_cell_chars} characters")
        for name, value in zip(fields, cells, strict=False)
        if isinstance(value, str) and len(value) > max_cell_chars
    ]
    if long:
        return None, long
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


# --- the import: rows read and checked outside any transaction, each chunk stored in one short one ---

PROGRESS_EVERY = 500  # rows read between two calls of ``progress`` (and after each chunk)


class _Row(NamedTuple):
    """What storing a good row needs besides its columns (the record itself is let go once
    encoded: a chunk waiting to be stored holds plain values, little for the garbage collector)."""

    line: int
    id_number: str
    id_index: str  # the blind index of the number (registered numbers are found by it)
    name: str  # the blind index of the normalised name (look-alikes are found by it)
    birth_date: date
    sex: str
    arrival_here: bool  # an arrival at this node: may queue the arrival notification
    origin_here: bool  # registered at her origin with a marital status: may issue the certificate

    @property
    def key(self) -> bulk.LookalikeKey:
        return self.name, self.birth_date, self.sex


@dataclass
class _Chunk:
    """Good rows not seen before in the file, in file order, and their columns as stored."""

    rows: list[_Row]
    values: list[tuple[Any, ...]]  # bulk.COLUMNS of each row, encoded for the database


@dataclass
class _Outcome:
    """What storing (or, in a dry run, checking) a chunk adds to the report."""

    bad_rows: list[BadRow] = field(default_factory=list)
    possible_duplicates: list[LookalikeRow] = field(default_factory=list)
    stored: int = 0
    notifications: int = 0
    certificates: int = 0


class _BadRows:
    """The first ``keep`` bad rows by line, the number of them all, and errors counted by column:
    the report of a file with a million bad rows stays small (and so does the memory it takes)."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.rows: list[BadRow] = []
        self.count = 0
        self.by_field: Counter[str] = Counter()
        self._cutoff: int | None = None  # with ``keep`` rows kept, a later line is only counted

    def add(self, line: int, errors: list[ProblemField]) -> None:
        self.count += 1
        for error in errors:
            self.by_field[error.field.split(".", 1)[0]] += 1
        if self._cutoff is not None and line > self._cutoff:
            return
        self.rows.append(BadRow(line=line, errors=errors))
        if len(self.rows) >= 2 * self.keep:
            self._trim()

    def _trim(self) -> None:  # the rows let go have later lines than every row kept
        self.rows.sort(key=lambda b: b.line)
        del self.rows[self.keep :]
        if len(self.rows) == self.keep:
            self._cutoff = self.rows[-1].line

    def first(self) -> list[BadRow]:
        self._trim()
        return self.rows


class _Reader:
    """Reads and checks the rows, handing over chunks of ``batch_size`` good rows encoded for the
    database; bad rows, and numbers repeated within the file, are kept for the report."""

    def __init__(
        self,
        table: Table,
        batch_size: int,
        encoder: bulk.Encoder,
        here: str,
        staff_username: str,
        progress: Callable[[int], None] | None,
    ) -> None:
        self.table = table
        self.batch_size = batch_size
        self.encoder = encoder
        self.here = here
        self.staff_username = staff_username
        self.progress = progress
        self.rows = 0  # rows read so far (blank ones not counted)
        self.bad = _BadRows(table.limits.max_reported_errors)
        self.first_line: dict[str, int] = {}  # ID number → the line it first appeared on

    def chunks(self) -> Iterator[_Chunk]:
        day, here = today(), self.here
        chunk = _Chunk([], [])
        meta: tuple[Any, ...] = ()
        for line, cells in self.table.rows:
            if not any(c is not None and (not isinstance(c, str) or c.strip()) for c in cells):
                continue  # blank lines, and the empty rows a spreadsheet keeps at its end
            self.rows += 1
            person, errors = parse_row(self.table.fields, cells, day, self.table.limits.max_cell_chars)
            if person is None:
                self.bad.add(line, errors)
            elif person.id_number in self.first_line:
                first = self.first_line[person.id_number]
                self.bad.add(line, _duplicate(line, f"the same ID number is on line {first}").errors)
            else:
                self.first_line[person.id_number] = line
                if not chunk.rows:  # the chunk's time stamp
                    meta = self.encoder.meta(utcnow(), self.staff_username)
                origin = person.origin_node or person.id_number[:6]
                values = self.encoder.encode(person, meta)  # the blind indexes too: computed once
                chunk.rows.append(
                    _Row(
                        line,
                        person.id_number,
                        values[bulk.ID_NUMBER_INDEX],
                        values[bulk.NAME_INDEX],
                        person.birth_date,
                        str(person.sex),
                        person.arrived_on is not None and person.host_node == here,
                        origin == here and person.marital_status is not None,
                    )
                )
                chunk.values.append(values)
            if len(chunk.rows) >= self.batch_size:
                yield chunk
                chunk = _Chunk([], [])
            elif self.progress is not None and self.rows % PROGRESS_EVERY == 0:
                self.progress(self.rows)
        if chunk.rows:
            yield chunk

    def close(self) -> None:
        close = getattr(self.table.rows, "close", None)
        if close is not None:
            close()  # an XLSX workbook is closed even when the import stops early


def import_people(
    signer: NodeSigner,
    table: Table,
    staff_username: str,
    *,
    engine: Engine | None = None,
    dry_run: bool = False,
    batch_size: int = 1000,
    progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Check every row of ``table``; store the good ones chunk by chunk, one short transaction each.

    A row is bad when it does not validate, repeats an ID number from an earlier line, or has a
    number that is registered already (reported with that record's id); nothing of a bad row is
    stored, so importing the same file again stores nothing. Look-alikes (same name, birth date
    and sex under another number) are reported for each stored row. Each chunk is read, parsed
    and encoded with no transaction open; its transaction does only the database work. A dry run
    checks the same (numbers registered already and look-alikes included) in read sessions: it
    stores nothing and never takes the write lock. ``progress`` hears the rows read so far.
    """
    engine = engine or get_engine()
    encoder = bulk.Encoder(engine.dialect)
    report = ImportReport(format=table.format, encoding=table.encoding, dry_run=dry_run, rows=0, stored=0,
                          bad=0, bad_rows=[], possible_duplicates=[], notifications=0)  # fmt: skip
    reader = _Reader(table, batch_size, encoder, signer.node_id, staff_username, progress)
    try:
        for chunk in reader.chunks():
            if dry_run:
                with read_session(engine) as session:
                    outcome = _flush(session, encoder, signer, staff_username, chunk, store=False)
            else:
                outcome = _store(engine, encoder, signer, staff_username, chunk)
            for bad in outcome.bad_rows:
                reader.bad.add(bad.line, bad.errors)
            report.possible_duplicates += outcome.possible_duplicates
            report.stored += outcome.stored
            report.notifications += outcome.notifications
            report.certificates += outcome.certificates
            if progress is not None:
                progress(reader.rows)
    finally:
        reader.close()
    report.rows = reader.rows
    report.bad_rows = reader.bad.first()
    report.bad = reader.bad.count
    report.error_counts = dict(sorted(reader.bad.by_field.items()))
    if progress is not None:
        progress(report.rows)
    return report


STORE_ATTEMPTS = 3  # a chunk whose numbers concurrent imports keep registering: then 503, try again


def _store(
    engine: Engine, encoder: bulk.Encoder, signer: NodeSigner, staff_username: str, chunk: _Chunk
) -> _Outcome:
    """The chunk in one write transaction; run again if a concurrent import registered one of its
    numbers after the check (PostgreSQL), which the next check then finds registered already."""
    for _ in range(STORE_ATTEMPTS):
        try:
            with transaction(engine) as session:
                return _flush(session, encoder, signer, staff_username, chunk, store=True)
        except bulk.Conflict:
            continue
    raise ServiceBusy("another import is registering the same ID numbers; try again shortly", retry_after=1)


def _flush(
    session: Session,
    encoder: bulk.Encoder,
    signer: NodeSigner,
    staff_username: str,
    chunk: _Chunk,
    *,
    store: bool,
) -> _Outcome:
    """Store the chunk's rows whose numbers are not registered yet (``store``), or only check them;
    report look-alikes; queue the arrival notices and issue the certificates the stored rows call for.
    Database work only: the rows were parsed and encoded before."""
    outcome = _Outcome()
    rows = chunk.rows
    known = bulk.existing(session, encoder, {row.id_index: row.id_number for row in rows})
    new = [row for row in rows if row.id_number not in known] if known else rows
    # Look-alikes registered before this chunk, read before it is stored; the chunk's own rows are
    # matched among themselves below: the answer a query after the insert gives, with fewer rows.
    values = chunk.values
    if known:
        values = [v for row, v in zip(rows, values, strict=True) if row.id_number not in known]
    similar = bulk.lookalikes(session, encoder, values)
    ids: dict[str, int] = {}
    if store and new:
        ids = bulk.insert(session, encoder, values, [row.id_number for row in new])
        if len(ids) < len(new):  # registered meanwhile by another import (the insert skipped them)
            raced = {row.id_index: row.id_number for row in new if row.id_number not in ids}
            known.update(bulk.existing(session, encoder, raced))
            new = [row for row in new if row.id_number in ids]
    for row in rows if known else ():
        if row.id_number in known:
            outcome.bad_rows.append(
                _duplicate(row.line, f"registered already as person {known[row.id_number]}")
            )
    own: dict[bulk.LookalikeKey, list[int]] = {}  # the chunk's stored rows by look-alike key
    for row in new:
        if row.id_number in ids:
            own.setdefault(row.key, []).append(ids[row.id_number])
    stored = _load(
        session, [ids[r.id_number] for r in new if r.id_number in ids and (r.arrival_here or r.origin_here)]
    )
    for row in new:
        pid = ids.get(row.id_number)
        mine, theirs = own.get(row.key, ()), similar.get(row.key, ())
        if len(mine) > 1 or theirs:
            others = sorted({*theirs, *mine} - {pid})
            if others:
                match = LookalikeRow(line=row.line, id=pid, possible_duplicates=others)
                outcome.possible_duplicates.append(match)
        record = stored.get(pid) if pid is not None else None
        if record is None:
            continue
        if row.arrival_here and service.notify_if_arrived(session, signer, record, staff_username):
            outcome.notifications += 1
        if row.origin_here and certificates.sync_certificate(
            session, record, staff_username, "registered (import)"
        ):
            # 信息登记入库即视为婚育证明办理: registered at her origin, she holds the certificate.
            outcome.certificates += 1
    outcome.stored = len(new) if store else 0
    return outcome


def _duplicate(line: int, why: str) -> BadRow:
    # Built without validation (the fields are ours, and right): a file imported again makes one
    # for every row, and validating them took a fifth of that import's time.
    problem = ProblemField.model_construct(field="id_number", reason=f"duplicate_person: {why}")
    return BadRow.model_construct(line=line, errors=[problem])


def _load(session: Session, ids: list[int]) -> dict[int, Person]:
    if not ids:
        return {}
    return {p.id: p for p in session.exec(select(Person).where(col(Person.id).in_(ids))) if p.id is not None}
