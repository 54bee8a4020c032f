"""Personal data at rest: AES-256-GCM with versioned keys, a keyed blind index, SQLAlchemy column types.

What is encrypted (ID numbers, names, marital and contraception fields, certificate contents, message
bodies) is stored as ``v<version>:`` followed by the 12-byte nonce and the ciphertext with its tag
(base64 in a text column, raw bytes in a binary one). The associated data is the column's context
(``person.id_number``): a value copied into another column does not decrypt there.

Keys: a key ring of 32-byte secrets by version, from ``YIPANQI_PII_KEYS`` or the key file
``<data_dir>/keys/pii.key`` (mode 0600), one ``v<n>:<base64url>`` a line. The highest version
encrypts; every version in the ring decrypts. The AES key of a version and the blind-index key are
derived from the secrets with HKDF-SHA256 under distinct labels; the blind-index key from the
lowest version's secret, so that rotating the encryption key leaves the indexes as they are.

The blind index (HMAC-SHA256, hex) finds a row by an exact value (an ID number, a normalised name)
without decrypting; an encrypted column itself refuses to be compared in SQL.
"""

from __future__ import annotations

import base64
import binascii
import enum
import hashlib
import hmac
import logging
import os
import re
import secrets
import stat
import threading
import time
import unicodedata
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING, Any, overload

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from sqlalchemy import LargeBinary, Text
from sqlalchemy.engine import Dialect
from sqlalchemy.types import TypeDecorator

if TYPE_CHECKING:
    from service.config import Settings

log = logging.getLogger(__name__)

KEY_FILE = "pii.key"
KEY_BYTES = 32
NONCE_BYTES = 12
_ENTRY = re.compile(r"v([1-9][0-9]{0,5}):([A-Za-z0-9_-]{43}=?)")
_PREFIX = re.compile(rb"v([1-9][0-9]{0,5}):")
_AES_LABEL = b"yipanqi pii aes-256-gcm"
_INDEX_LABEL = b"yipanqi pii blind index"
# Blind-index purposes: one per kind of value (not per column), so that two tables' indexes of the
# same ID number are equal and can be joined.
ID_NUMBER = "id_number"
NAME = "name"


class PiiKeyError(RuntimeError):
    """No usable PII key, or data that the configured keys cannot decrypt (never carries the data)."""


def _derive(secret: bytes, label: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=label).derive(secret)


def new_secret() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def normalise_name(name: str) -> str:
    """The form a name is indexed in: NFKC, no spaces at all, case-folded (``王 秀英`` = ``王秀英``)."""
    return "".join(unicodedata.normalize("NFKC", name).split()).casefold()


def normalise_id_number(id_number: str) -> str:
    return id_number.strip().upper()


@dataclass
class Keyring:
    """The secrets by version; the highest is current."""

    secrets: dict[int, bytes]
    _aes: dict[int, AESGCM] = field(default_factory=dict, repr=False)
    _index_mac: hmac.HMAC = field(init=False, repr=False)  # keyed once; each blind index copies it

    def __post_init__(self) -> None:
        if not self.secrets:
            raise PiiKeyError("the PII key ring is empty")
        for version, secret in self.secrets.items():
            if len(secret) != KEY_BYTES:
                raise PiiKeyError(f"PII key v{version} is not {KEY_BYTES} bytes")
            self._aes[version] = AESGCM(_derive(secret, _AES_LABEL))
        index_key = _derive(self.secrets[min(self.secrets)], _INDEX_LABEL)
        self._index_mac = hmac.new(index_key, digestmod=hashlib.sha256)

    def __repr__(self) -> str:  # never the secrets
        return f"Keyring(versions={sorted(self.secrets)})"

    @property
    def current(self) -> int:
        return max(self.secrets)

    # --- text form of the ring (the key file and YIPANQI_PII_KEYS) ---

    @classmethod
    def parse(cls, text: str, *, source: str = "the PII keys") -> Keyring:
        keys: dict[int, bytes] = {}
        for raw in re.split(r"[\s,]+", "\n".join(line.split("#", 1)[0] for line in text.splitlines())):
            if not raw:
                continue
            match = _ENTRY.fullmatch(raw)
            if match is None:
                raise PiiKeyError(f"{source}: an entry is not v<version>:<32 bytes base64url>")
            version = int(match.group(1))
            if version in keys:
                raise PiiKeyError(f"{source}: version {version} is given twice")
            value = match.group(2)
            keys[version] = base64.urlsafe_b64decode(value + "=" * (-len(value) % 4))
        if not keys:
            raise PiiKeyError(f"{source}: no key in it")
        return cls(keys)

    def dump(self) -> str:
        lines = [
            "# yipanqi PII keys (docs/security.md): keep secret, back up apart from the database.",
            "# The highest version encrypts; keep every older one until `yipanqi pii rotate` has finished.",
        ]
        for version in sorted(self.secrets):
            text = base64.urlsafe_b64encode(self.secrets[version]).rstrip(b"=").decode("ascii")
            lines.append(f"v{version}:{text}")
        return "\n".join(lines) + "\n"

    def with_new_version(self) -> Keyring:
        return Keyring({**self.secrets, self.current + 1: new_secret()})

    # --- encryption ---

    def _seal(self, plaintext: bytes, context: str) -> tuple[int, bytes]:
        """The current version, and a fresh nonce + ciphertext and tag."""
        version = self.current
        nonce = os.urandom(NONCE_BYTES)
        return version, nonce + self._aes[version].encrypt(nonce, plaintext, context.encode("ascii"))

    def encrypt(self, plaintext: bytes, context: str) -> bytes:
        """``v<n>:`` + nonce + ciphertext and tag (raw bytes)."""
        version, sealed = self._seal(plaintext, context)
        return b"v%d:" % version + sealed

    def decrypt(self, blob: bytes, context: str) -> bytes:
        version, rest = split_version(blob, context)
        aes = self._aes.get(version)
        if aes is None:
            raise PiiKeyError(
                f"{context} is encrypted with PII key v{version}, which is not in the key ring "
                f"(versions {sorted(self.secrets)}): YIPANQI_PII_KEYS or keys/{KEY_FILE} "
                "is not this database's"
            )
        try:
            return aes.decrypt(rest[:NONCE_BYTES], rest[NONCE_BYTES:], context.encode("ascii"))
        except InvalidTag:
            raise PiiKeyError(
                f"{context} does not decrypt with PII key v{version}: the key is not this database's "
                f"(YIPANQI_PII_KEYS or keys/{KEY_FILE}), or the stored value was altered"
            ) from None

    def encrypt_text(self, value: str, context: str) -> str:
        """``v<n>:`` + base64 of nonce + ciphertext and tag (``encrypt``'s blob, its body in base64)."""
        version, sealed = self._seal(value.encode("utf-8"), context)
        return f"v{version}:" + base64.b64encode(sealed).decode("ascii")

    def decrypt_text(self, value: str, context: str) -> str:
        head, sep, body = value.partition(":")
        try:
            raw = base64.b64decode(body.encode("ascii"), validate=True)
        except (binascii.Error, UnicodeEncodeError):
            raise PiiKeyError(f"{context} holds a value that is not PII ciphertext") from None
        if not sep:
            raise PiiKeyError(f"{context} holds a value that is not PII ciphertext")
        return self.decrypt(head.encode("ascii", "replace") + b":" + raw, context).decode("utf-8")

    def blind_index(self, value: str, purpose: str) -> str:
        """HMAC-SHA256 of the normalised value under the blind-index key, hex (64 characters)."""
        mac = self._index_mac.copy()  # the key's pads computed once, not for every value
        mac.update(purpose.encode("ascii") + b"\x00" + value.encode("utf-8"))
        return mac.hexdigest()


def split_version(blob: bytes, context: str) -> tuple[int, bytes]:
    match = _PREFIX.match(blob)
    if match is None or len(blob) < match.end() + NONCE_BYTES + 16:
        raise PiiKeyError(f"{context} holds a value that is not PII ciphertext")
    return int(match.group(1)), blob[match.end() :]


def version_of(stored: bytes | str) -> int | None:
    """The key version a stored value was encrypted with (None if it is not ciphertext)."""
    head = stored[:8].encode("ascii", "replace") if isinstance(stored, str) else stored[:8]
    match = _PREFIX.match(head)
    return int(match.group(1)) if match else None


# --- the data folder and the SQLite files: the owner's only ---

SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def make_data_dir(path: Path) -> None:
    """Create the data folder 0700 (an existing one open to others is closed to them)."""
    path.mkdir(parents=True, exist_ok=True, mode=0o700)
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        path.chmod(mode & 0o700 | 0o700)
        log.warning("data folder was open to other users (mode %04o): now 0700 path=%s", mode, path)


def secure_sqlite_files(database: Path) -> None:
    """The database file exists 0600 before SQLite opens it (its -wal and -shm take its mode), and
    any of the files left from an older install with a wider mode is narrowed."""
    database.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    try:
        os.close(os.open(database, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
    except FileExistsError:
        pass
    for suffix in SQLITE_SUFFIXES:
        path = database.with_name(database.name + suffix)
        try:
            mode = stat.S_IMODE(path.stat().st_mode)
            if mode & 0o077:
                path.chmod(0o600)
        except FileNotFoundError:
            continue


# --- where the ring comes from ---


def key_file(settings: Settings) -> Path:
    return settings.keys_dir / KEY_FILE


def write_key_file(path: Path, ring: Keyring, *, replace: bool = False) -> None:
    """Write the ring, mode 0600 from its creation (a replacement is written aside, then renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    target = path.with_name(path.name + ".new") if replace else path
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL
    if replace and target.exists():
        target.unlink()
    fd = os.open(target, flags, 0o600)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(ring.dump())
        f.flush()
        os.fsync(f.fileno())
    if replace:
        os.replace(target, path)


def read_key_file(path: Path) -> Keyring:
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o007:  # group read is allowed: a Kubernetes Secret mounted 0440 with an fsGroup
        raise PiiKeyError(f"{path} is readable by other users (mode {mode:04o}): chmod 600 it")
    return Keyring.parse(path.read_text(encoding="ascii"), source=str(path))


def load(settings: Settings, *, create: bool | None = None) -> Keyring:
    """The ring from ``YIPANQI_PII_KEYS`` or the key file; ``create`` (by default: outside production)
    makes a key file with one new key if there is none. PiiKeyError if there is no key."""
    if settings.pii_keys is not None:
        return Keyring.parse(settings.pii_keys.get_secret_value(), source="YIPANQI_PII_KEYS")
    path = key_file(settings)
    if path.exists():
        return read_key_file(path)
    if create is None:
        create = settings.environment != "production"
    if not create:
        raise PiiKeyError(
            f"no PII key: set YIPANQI_PII_KEYS or put the key file at {path} "
            "(`yipanqi init` makes one; in Kubernetes mount it from a Secret)"
        )
    try:
        write_key_file(path, Keyring({1: new_secret()}))
        log.info("PII key file created path=%s", path)
    except FileExistsError:
        pass  # another process made it first
    return read_key_file(path)


class _Active:
    """The process's key ring: loaded from the settings at first use, reloaded when the key file
    changes (a rotation run beside the node) or when a value names a version it does not hold."""

    RELOAD_SECONDS = 3.0

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ring: Keyring | None = None
        self._loader: Callable[[], Keyring] | None = None
        self._stamp: tuple[float, int] | None = None
        self._checked = 0.0
        self._path: Path | None = None

    def install(self, ring: Keyring | None, loader: Callable[[], Keyring] | None = None) -> None:
        with self._lock:
            self._ring, self._loader, self._stamp, self._path = ring, loader, None, None

    def use_file(self, path: Path) -> None:
        """Read the ring from ``path``, and again whenever the file changes."""
        with self._lock:
            self._ring, self._stamp, self._path = None, None, path
            self._loader = lambda: read_key_file(path)

    def _default_loader(self) -> Keyring:
        from service.config import get_settings  # the settings import the models: not at import time

        settings = get_settings()
        ring = load(settings)
        self._path = None if settings.pii_keys is not None else key_file(settings)
        return ring

    def _file_stamp(self) -> tuple[float, int] | None:
        if self._path is None:
            return None
        try:
            st = self._path.stat()
        except OSError:
            return None
        return (st.st_mtime, st.st_size)

    def get(self) -> Keyring:
        ring = self._ring
        fresh = self._path is None or time.monotonic() - self._checked < self.RELOAD_SECONDS
        if ring is not None and fresh:
            return ring
        with self._lock:
            if self._ring is None:
                self._ring = (self._loader or self._default_loader)()
                self._stamp = self._file_stamp()
            elif self._path is not None:
                self._checked = time.monotonic()
                stamp = self._file_stamp()
                if stamp is not None and stamp != self._stamp:
                    self._ring = read_key_file(self._path)
                    self._stamp = stamp
            self._checked = time.monotonic()
            return self._ring

    def reload(self) -> Keyring:
        with self._lock:
            if self._path is not None:
                self._ring = read_key_file(self._path)
                self._stamp = self._file_stamp()
            elif self._ring is None:
                self._ring = (self._loader or self._default_loader)()
            return self._ring


_active = _Active()


def keyring() -> Keyring:
    return _active.get()


def reload() -> Keyring:
    """Read the key ring again (a rotation by another process)."""
    return _active.reload()


def install(ring: Keyring | None) -> None:
    """Use this ring in this process (None: load from the settings again at the next use)."""
    _active.install(ring)


def _decrypt(stored: bytes, context: str) -> bytes:
    ring = keyring()
    version, _ = split_version(stored, context)
    if version not in ring.secrets:  # rotated by another process a moment ago
        ring = _active.reload()
    return ring.decrypt(stored, context)


def _decrypt_text(stored: str, context: str) -> str:
    ring = keyring()
    version = version_of(stored)
    if version is not None and version not in ring.secrets:
        ring = _active.reload()
    return ring.decrypt_text(stored, context)


@overload
def blind_index(value: str, purpose: str) -> str: ...
@overload
def blind_index(value: None, purpose: str) -> None: ...
def blind_index(value: str | None, purpose: str) -> str | None:
    """The blind index of an ID number (``ID_NUMBER``) or a name (``NAME``, normalised first)."""
    if value is None:
        return None
    normalised = normalise_name(value) if purpose == NAME else normalise_id_number(value)
    return keyring().blind_index(normalised, purpose)


# --- SQLAlchemy column types ---


class _NoSqlComparison(TypeDecorator[Any]):
    """An encrypted column compares only with NULL: equal values have different ciphertexts."""

    impl = Text
    cache_ok = True

    class comparator_factory(TypeDecorator.Comparator[Any]):
        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            if op.__name__ in ("is_", "is_not", "isnot", "asc_op", "desc_op"):
                return super().operate(op, *other, **kwargs)
            raise TypeError("an encrypted column cannot be compared in SQL: use its blind index")


class EncryptedText(_NoSqlComparison):
    """A str, stored as ``v<n>:<base64>``; ``context`` (``table.column``) is the associated data."""

    impl = Text
    cache_ok = True

    def __init__(self, context: str) -> None:
        super().__init__()
        self.context = context

    def to_text(self, value: Any) -> str:
        return str(value)

    def from_text(self, value: str) -> Any:
        return value

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:  # noqa: ARG002
        if value is None:
            return None
        return keyring().encrypt_text(self.to_text(value), self.context)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:  # noqa: ARG002
        if value is None:
            return None
        return self.from_text(_decrypt_text(value, self.context))


class EncryptedDate(EncryptedText):
    cache_ok = True

    def to_text(self, value: Any) -> str:
        if not isinstance(value, date):
            raise TypeError("a date column takes a date")
        return value.isoformat()

    def from_text(self, value: str) -> date:
        return date.fromisoformat(value)


class EncryptedEnum(EncryptedText):
    cache_ok = True

    def __init__(self, context: str, enum_class: type[enum.Enum]) -> None:
        super().__init__(context)
        self.enum_class = enum_class

    def to_text(self, value: Any) -> str:
        return str(self.enum_class(value).value)

    def from_text(self, value: str) -> Any:
        return self.enum_class(value)


class EncryptedBytes(TypeDecorator[bytes]):
    """Bytes, stored as ``v<n>:`` + nonce + ciphertext (raw)."""

    impl = LargeBinary
    cache_ok = True

    class comparator_factory(TypeDecorator.Comparator[bytes]):
        def operate(self, op: Any, *other: Any, **kwargs: Any) -> Any:
            if op.__name__ in ("is_", "is_not", "isnot"):
                return super().operate(op, *other, **kwargs)
            raise TypeError("an encrypted column cannot be compared in SQL")

    def __init__(self, context: str) -> None:
        super().__init__()
        self.context = context

    def process_bind_param(self, value: bytes | None, dialect: Dialect) -> bytes | None:  # noqa: ARG002
        if value is None or value == b"":  # empty stays empty: a purged body (service/evidence)
            return value
        return keyring().encrypt(bytes(value), self.context)

    def process_result_value(self, value: bytes | None, dialect: Dialect) -> bytes | None:  # noqa: ARG002
        if value is None or value == b"":
            return value
        return _decrypt(bytes(value), self.context)


ENCRYPTED_TYPES = (EncryptedText, EncryptedBytes)


def encrypted_columns(metadata: Any) -> Iterable[tuple[Any, list[Any]]]:
    """(table, its encrypted columns) for every table of ``metadata`` that has any."""
    for table in metadata.sorted_tables:
        columns = [c for c in table.columns if isinstance(c.type, ENCRYPTED_TYPES)]
        if columns:
            yield table, columns


def blind_index_default(source: str, purpose: str) -> Callable[[Any], str | None]:
    """A column default (core inserts too) that indexes the row's ``source`` value."""

    def default(context: Any) -> str | None:
        value: str | None = context.get_current_parameters().get(source)
        return blind_index(value, purpose)

    return default


def keep_indexed(model: type[Any], pairs: Iterable[tuple[str, str, str]]) -> None:
    """ORM inserts and updates of ``model`` set each (source, index column, purpose) index."""
    from sqlalchemy import event

    pairs = tuple(pairs)

    def fill(_mapper: Any, _connection: Any, target: Any) -> None:
        for source, column, purpose in pairs:
            setattr(target, column, blind_index(getattr(target, source), purpose))

    event.listen(model, "before_insert", fill)
    event.listen(model, "before_update", fill)
