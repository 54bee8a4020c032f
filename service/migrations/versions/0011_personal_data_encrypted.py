"""personal data encrypted at rest (issue 10 item 2): blind indexes, encrypted columns, rows encrypted

ID numbers, names, marital and contraception fields, certificate contents and message bodies become
AES-256-GCM ciphertext (service/signing/pii.py) with the node's PII key; ID numbers and names are
found by HMAC blind indexes, which replace the unique constraint and the indexes on the clear values.
Existing rows are encrypted in batches. Needs the PII key (YIPANQI_PII_KEYS or keys/pii.key).

SQLite: the tables whose column types change are rebuilt; with foreign keys on, dropping a table
that others reference fails, so they are turned off around the rebuild (SQLite's documented
12-step procedure; foreign_key_check must then find nothing) and on again after; the file is then
vacuumed so that no clear value is left in its free pages. PostgreSQL keeps the old row versions
until they are vacuumed: run ``VACUUM FULL`` on the encrypted tables after this upgrade.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-01 19:00:00
"""

from collections.abc import Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

from service.signing import pii

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

BATCH = 500
UQ = {"uq": "uq_%(table_name)s_%(column_0_name)s"}  # names SQLite's unnamed UNIQUE for the rebuild

# table → (primary key, {column: "text" | "bytes"}, {index column: (source column, purpose)})
ENCRYPT: dict[str, tuple[str, dict[str, str], dict[str, tuple[str, str]]]] = {
    "person": (
        "id",
        {
            "id_number": "text",
            "name": "text",
            "marital_status": "text",
            "marriage_date": "text",
            "contraception_method": "text",
            "contraception_since": "text",
        },
        {"id_number_index": ("id_number", pii.ID_NUMBER), "name_index": ("name", pii.NAME)},
    ),
    "child": ("id", {"name": "text"}, {}),
    "verification_case": (
        "id",
        {"subject_id_number": "text", "subject_name": "text", "question": "text", "findings": "text"},
        {"subject_id_number_index": ("subject_id_number", pii.ID_NUMBER)},
    ),
    "notification": (
        "id",
        {"subject_id_number": "text", "subject_name": "text", "details": "text"},
        {"subject_id_number_index": ("subject_id_number", pii.ID_NUMBER)},
    ),
    "certificate_version": ("id", {"snapshot": "text"}, {}),
    "birth_registration": ("id", {"review_note": "text"}, {}),
    "certificate_check": (
        "id",
        {"id_number": "text", "subject_name": "text", "discrepancy": "text", "response_body": "bytes"},
        {"id_number_index": ("id_number", pii.ID_NUMBER)},
    ),
    "outbox_message": ("message_id", {"body": "bytes", "receipt_body": "bytes"}, {}),
    "inbox_message": ("message_id", {"body": "bytes"}, {}),
}
INDEX = sa.String(length=64)


def _foreign_keys(on: bool) -> None:
    """SQLite: foreign keys off for the rebuild (``on=False``); then (``on=True``) checked, the
    work committed, the file vacuumed and the WAL emptied, so that the clear values of the old rows
    are not left in free pages, and foreign keys on again."""
    bind = op.get_bind()
    if bind.dialect.name != "sqlite":
        return
    if on:
        problems = bind.exec_driver_sql("PRAGMA foreign_key_check").fetchall()
        if problems:
            raise RuntimeError(f"migration 0011 broke {len(problems)} foreign key(s): not committed")
    bind.exec_driver_sql("COMMIT")  # PRAGMA foreign_keys is a no-op inside a transaction
    if on:
        bind.exec_driver_sql("VACUUM")
        bind.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)")
    bind.exec_driver_sql(f"PRAGMA foreign_keys={'ON' if on else 'OFF'}")
    bind.exec_driver_sql("BEGIN IMMEDIATE")


def upgrade() -> None:
    ring = pii.keyring()  # fails here, before anything changes, when there is no key
    postgres = op.get_bind().dialect.name == "postgresql"
    _foreign_keys(False)
    with op.batch_alter_table("person", naming_convention=UQ) as b:
        b.add_column(sa.Column("id_number_index", INDEX, nullable=True))
        b.add_column(sa.Column("name_index", INDEX, nullable=True))
        b.drop_index("ix_person_lookalike")
        b.drop_constraint("person_id_number_key" if postgres else "uq_person_id_number", type_="unique")
        for column in ("id_number", "name"):
            b.alter_column(
                column, type_=sa.Text(), existing_nullable=False, postgresql_using=f"{column}::text"
            )
        for column in ("marital_status", "marriage_date", "contraception_method", "contraception_since"):
            b.alter_column(
                column, type_=sa.Text(), existing_nullable=True, postgresql_using=f"{column}::text"
            )
    with op.batch_alter_table("child") as b:
        b.alter_column("name", type_=sa.Text(), existing_nullable=True)
    for table, index in (
        ("verification_case", "ix_verification_case_subject_id_number"),
        ("notification", "ix_notification_subject_id_number"),
    ):
        with op.batch_alter_table(table) as b:
            b.add_column(sa.Column("subject_id_number_index", INDEX, nullable=True))
            b.drop_index(index)
            b.alter_column("subject_id_number", type_=sa.Text(), existing_nullable=False)
            b.alter_column("subject_name", type_=sa.Text(), existing_nullable=False)
    with op.batch_alter_table("certificate_check") as b:
        b.add_column(sa.Column("id_number_index", INDEX, nullable=True))
        b.drop_index("ix_certificate_check_id_number")
        b.alter_column("id_number", type_=sa.Text(), existing_nullable=False)
        b.alter_column("subject_name", type_=sa.Text(), existing_nullable=False)
    if postgres:
        op.execute("DROP TYPE IF EXISTS maritalstatus")
        op.execute("DROP TYPE IF EXISTS contraceptionmethod")

    for table, (key, columns, indexes) in ENCRYPT.items():
        _encrypt_rows(ring, table, key, columns, indexes)

    with op.batch_alter_table("person") as b:
        b.alter_column("id_number_index", existing_type=INDEX, nullable=False)
        b.alter_column("name_index", existing_type=INDEX, nullable=False)
        b.create_unique_constraint("person_id_number_index_key", ["id_number_index"])
        b.create_index("ix_person_lookalike", ["name_index", "birth_date", "sex"], unique=False)
    for table in ("verification_case", "notification"):
        with op.batch_alter_table(table) as b:
            b.alter_column("subject_id_number_index", existing_type=INDEX, nullable=False)
            b.create_index(f"ix_{table}_subject_id_number_index", ["subject_id_number_index"], unique=False)
    with op.batch_alter_table("certificate_check") as b:
        b.alter_column("id_number_index", existing_type=INDEX, nullable=False)
        b.create_index("ix_certificate_check_id_number_index", ["id_number_index"], unique=False)
    _foreign_keys(True)


def _encrypt_rows(
    ring: pii.Keyring, table: str, key: str, columns: dict[str, str], indexes: dict[str, tuple[str, str]]
) -> None:
    """Encrypt the clear values of ``columns`` and fill ``indexes``, ``BATCH`` rows a statement."""
    bind = op.get_bind()
    names = list(columns)
    select = sa.text(
        f"SELECT {key}, {', '.join(names)} FROM {table} WHERE {key} > :after ORDER BY {key} LIMIT {BATCH}"
    )
    targets = names + list(indexes)
    update = sa.text(f"UPDATE {table} SET {', '.join(f'{c} = :{c}' for c in targets)} WHERE {key} = :k")
    after: Any = 0 if key == "id" else ""
    while True:
        rows = bind.execute(select, {"after": after}).all()
        if not rows:
            return
        params = []
        for row in rows:
            clear = dict(zip(names, row[1:], strict=True))
            values: dict[str, Any] = {"k": row[0]}
            for index, (source, purpose) in indexes.items():
                value = clear[source]
                if value is not None and pii.version_of(value) is not None:
                    raise RuntimeError(f"{table}.{source} is encrypted already but {index} is empty")
                normal = pii.normalise_name(value) if purpose == pii.NAME else pii.normalise_id_number(value)
                values[index] = ring.blind_index(normal, purpose)
            for name, kind in columns.items():
                value = clear[name]
                context = f"{table}.{name}"
                if value is None or pii.version_of(value) is not None:
                    values[name] = value
                elif kind == "bytes":
                    values[name] = ring.encrypt(bytes(value), context)
                else:
                    values[name] = ring.encrypt_text(str(value), context)
            params.append(values)
        bind.execute(
            update.bindparams(
                *(sa.bindparam(n, type_=sa.LargeBinary()) for n, k in columns.items() if k == "bytes")
            ),
            params,
        )
        after = rows[-1][0]


def downgrade() -> None:
    raise NotImplementedError("0011 encrypts personal data: to go back, restore the backup taken before it")
