"""Rotating the PII key: a new version becomes current, then every encrypted value is re-encrypted.

``rotate`` adds a key version to the key file (written aside and renamed, mode 0600) and makes it
current; a running node beside it reads the file again within a few seconds (and at once when it
meets a value of a version it does not hold). ``reencrypt`` then works through every encrypted
column of every table in bounded batches: each batch is read in a read session, decrypted and
encrypted again outside any transaction, and written in one short transaction of its own, each
row only if it still holds what was read (a row the node changed meanwhile is left for the next
run). The blind indexes do not change (their key derives from the lowest version).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import func, literal, select, type_coerce, update
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from service.config import Settings
from service.db import read_session, transaction
from service.signing import pii


@dataclass
class Reencrypted:
    current: int
    rewritten: Counter[str] = field(default_factory=Counter)  # "table.column" → values rewritten
    skipped: int = 0  # rows changed while they were being re-encrypted (run again)

    @property
    def total(self) -> int:
        return sum(self.rewritten.values())


def rotate(settings: Settings) -> pii.Keyring:
    """Add a new key version to the key file and make it current (nothing is re-encrypted yet)."""
    if settings.pii_keys is not None:
        raise pii.PiiKeyError(
            "the PII keys come from YIPANQI_PII_KEYS: add a new highest version to it on every replica "
            "(`yipanqi pii new-key` prints one), restart them, then run `yipanqi pii reencrypt`"
        )
    path = pii.key_file(settings)
    if not path.exists():
        raise pii.PiiKeyError(f"no PII key file at {path}: `yipanqi init` makes it")
    ring = pii.read_key_file(path).with_new_version()
    pii.write_key_file(path, ring, replace=True)
    pii.install(None)  # this process reads the file again
    return ring


def versions(engine: Engine | None = None) -> Counter[int]:
    """How many stored values are encrypted with each key version (0: not ciphertext)."""
    found: Counter[int] = Counter()
    for _table, columns in pii.encrypted_columns(SQLModel.metadata):
        for column in columns:
            head = func.substr(type_coerce(column, column.type.impl), 1, 8)  # the version prefix only
            with read_session(engine) as session:
                prefixes = session.execute(select(head).where(column.is_not(None))).scalars()
                for value in prefixes:
                    if value in (b"", ""):
                        continue
                    found[pii.version_of(value) or 0] += 1
    return found


def reencrypt(engine: Engine | None = None, *, batch_size: int = 500) -> Reencrypted:
    """Re-encrypt every value not under the current key version, ``batch_size`` rows at a time."""
    ring = pii.keyring()
    report = Reencrypted(current=ring.current)
    for table, columns in pii.encrypted_columns(SQLModel.metadata):
        (key,) = table.primary_key.columns
        raws = [type_coerce(c, c.type.impl) for c in columns]
        after: Any = None
        rows_at_once = min(batch_size, table.info.get("pii_rows_at_once", batch_size))  # big values: fewer
        while True:
            query = select(key, *raws).order_by(key).limit(rows_at_once)
            if after is not None:
                query = query.where(key > after)
            with read_session(engine) as session:
                rows = session.execute(query).all()
            if not rows:
                break
            after = rows[-1][0]
            changes = []  # (key, {column: (old, new)}), computed outside any transaction
            for row in rows:
                changed: dict[Any, tuple[Any, Any]] = {}
                for column, value in zip(columns, row[1:], strict=True):
                    if value is None or value in (b"", "") or pii.version_of(value) == ring.current:
                        continue
                    context = column.type.context
                    if isinstance(column.type, pii.EncryptedBytes):
                        new: Any = ring.encrypt(ring.decrypt(bytes(value), context), context)
                    else:
                        new = ring.encrypt_text(ring.decrypt_text(value, context), context)
                    changed[column] = (value, new)
                if changed:
                    changes.append((row[0], changed))
            if not changes:
                continue
            with transaction(engine) as tx:
                connection = tx.connection()
                for row_key, changed in changes:
                    statement = (
                        update(table)
                        .where(key == row_key)
                        .where(
                            *(
                                type_coerce(c, c.type.impl) == literal(old, c.type.impl)
                                for c, (old, _) in changed.items()
                            )
                        )
                        .values({c.name: literal(new, c.type.impl) for c, (_, new) in changed.items()})
                    )
                    if connection.execute(statement).rowcount == 1:
                        for column in changed:
                            report.rewritten[f"{table.name}.{column.name}"] += 1
                    else:
                        report.skipped += 1
    return report


def check_database(engine: Engine | None = None) -> None:
    """At start: the key ring is there and decrypts the newest stored value of every encrypted
    column (PiiKeyError, naming the column and the key version, if not): a wrong key stops the
    node before it serves, not at the first request that reads a record."""
    ring = pii.keyring()
    for table, columns in pii.encrypted_columns(SQLModel.metadata):
        (key,) = table.primary_key.columns
        for column in columns:
            raw = type_coerce(column, column.type.impl)
            query = select(raw).where(column.is_not(None)).order_by(key.desc()).limit(1)
            with read_session(engine) as session:
                value = session.execute(query).scalar()
            if value is None or value in (b"", ""):
                continue
            if pii.version_of(value) not in ring.secrets:
                ring = pii.reload()
            if isinstance(column.type, pii.EncryptedBytes):
                ring.decrypt(bytes(value), column.type.context)
            else:
                ring.decrypt_text(value, column.type.context)
