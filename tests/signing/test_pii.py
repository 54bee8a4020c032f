"""Personal data at rest (service/signing/pii.py): ciphertext in the file, blind indexes, keys, rotation."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import text
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from service.clock import utcnow
from service.config import Settings
from service.db import make_engine, read_session
from service.migrations import alembic_config, upgrade
from service.models import Child, MaritalStatus, OutboxMessage, Person
from service.signing import pii, pii_rotation
from service.signing.pii import Keyring, PiiKeyError

NUMBER = "411627199503080024"
NAME = "王秀英"
ONE = Keyring({1: b"\x01" * 32})
OTHER = Keyring({1: b"\x02" * 32})


@pytest.fixture
def ring() -> Iterator[Keyring]:
    """A ring of its own for the test, the process's one put back after."""
    pii.install(ONE)
    yield ONE
    pii.install(None)


@pytest.fixture
def engine(tmp_path: Path, ring: Keyring) -> Iterator[Engine]:  # noqa: ARG001
    engine = make_engine(f"sqlite:///{tmp_path / 'yipanqi.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def a_person(seq: int = 24, name: str = NAME) -> Person:
    number = NUMBER[:14] + f"{seq:04d}"
    return Person(
        id_number=number,
        name=name,
        sex="F",
        birth_date=date(1995, 3, 8),
        origin_node="411627",
        host_node="410105",
        marital_status=MaritalStatus.first_marriage,
        marriage_date=date(2019, 5, 1),
    )


def file_bytes(database: Path) -> bytes:
    return b"".join(p.read_bytes() for p in database.parent.glob(database.name + "*") if p.is_file())


# --- the crypto -------------------------------------------------------------------------------------


def test_a_value_comes_back_and_is_bound_to_its_column() -> None:
    sealed = ONE.encrypt_text(NAME, "person.name")
    assert sealed.startswith("v1:")
    assert NAME not in sealed
    assert ONE.decrypt_text(sealed, "person.name") == NAME
    assert ONE.encrypt_text(NAME, "person.name") != sealed  # a nonce of its own each time
    with pytest.raises(PiiKeyError, match=r"child\.name does not decrypt with PII key v1"):
        ONE.decrypt_text(sealed, "child.name")  # copied into another column


def test_a_wrong_key_or_an_unknown_version_is_a_clear_error_without_the_data() -> None:
    sealed = ONE.encrypt_text(NUMBER, "person.id_number")
    with pytest.raises(PiiKeyError, match="the key is not this database's") as wrong:
        OTHER.decrypt_text(sealed, "person.id_number")
    assert NUMBER not in str(wrong.value)
    newer = Keyring({1: b"\x01" * 32, 2: b"\x03" * 32}).encrypt_text(NUMBER, "person.id_number")
    with pytest.raises(PiiKeyError, match=r"PII key v2, which is not in the key ring \(versions \[1\]\)"):
        ONE.decrypt_text(newer, "person.id_number")
    with pytest.raises(PiiKeyError, match="not PII ciphertext"):
        ONE.decrypt_text(NUMBER, "person.id_number")  # a clear value where ciphertext belongs


def test_tampering_with_the_ciphertext_is_detected() -> None:
    sealed = bytearray(ONE.encrypt(b'{"id_number": "x"}', "inbox_message.body"))
    sealed[-1] ^= 1
    with pytest.raises(PiiKeyError, match="altered"):
        ONE.decrypt(bytes(sealed), "inbox_message.body")


def test_the_blind_index_is_keyed_normalised_and_kept_across_rotation() -> None:
    assert ONE.blind_index(NUMBER, pii.ID_NUMBER) != OTHER.blind_index(NUMBER, pii.ID_NUMBER)
    assert ONE.blind_index(NUMBER, pii.ID_NUMBER) != ONE.blind_index(NUMBER, pii.NAME)
    assert ONE.blind_index(NUMBER, pii.ID_NUMBER) == ONE.with_new_version().blind_index(NUMBER, pii.ID_NUMBER)
    assert pii.normalise_name(" 王 秀英 ") == pii.normalise_name("王秀英")
    assert pii.normalise_name("Ｗang Li") == pii.normalise_name("wangli")  # full-width, case
    assert len(ONE.blind_index(NUMBER, pii.ID_NUMBER)) == 64


def test_the_blind_index_of_a_fixed_key_does_not_change() -> None:
    # Stored rows are found by these values: a faster computation must give the same ones (the
    # values were computed with hmac.new(key, data) before the HMAC was keyed once and copied).
    ring = Keyring({1: bytes(range(32))})
    assert ring.blind_index("41162719950308002X", pii.ID_NUMBER) == (
        "b7fbdf0c4c1a7e8a275b489983185efdb856179bf1e1ea9511429fe906661d24"
    )
    assert ring.blind_index("王秀英", pii.NAME) == (
        "fc488705771b1f80c6a7ec35c8dbf41c3e0598ed5cf2f444cb2637e2727a535b"
    )


def test_the_key_ring_text_round_trips_and_bad_text_is_refused() -> None:
    two = ONE.with_new_version()
    again = Keyring.parse(two.dump())
    assert (sorted(again.secrets), again.current) == ([1, 2], 2)
    assert repr(two) == "Keyring(versions=[1, 2])"
    with pytest.raises(PiiKeyError, match="no key"):
        Keyring.parse("# nothing\n")
    with pytest.raises(PiiKeyError, match="v<version>:<32 bytes base64url>"):
        Keyring.parse("v1:short")
    with pytest.raises(PiiKeyError, match="given twice"):
        Keyring.parse(ONE.dump() + ONE.dump().splitlines()[-1])


def test_the_key_file_is_made_0600_refused_when_open_and_required_in_production(tmp_path: Path) -> None:
    development = Settings(data_dir=tmp_path / "dev", pii_keys=None)
    ring = pii.load(development)
    path = development.keys_dir / pii.KEY_FILE
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert pii.load(development).secrets == ring.secrets  # the same file read again
    path.chmod(0o644)
    with pytest.raises(PiiKeyError, match="readable by other users"):
        pii.load(development)
    production = Settings(
        environment="production",
        data_dir=tmp_path / "prod",
        database_url="postgresql+psycopg://x@h/db",
        pii_keys=None,
    )
    with pytest.raises(PiiKeyError, match="no PII key: set YIPANQI_PII_KEYS"):
        pii.load(production)
    assert not (tmp_path / "prod" / "keys" / pii.KEY_FILE).exists()
    given = Settings(
        environment="production", database_url="postgresql+psycopg://x@h/db", pii_keys=ONE.dump()
    )
    assert pii.load(given).secrets == ONE.secrets


# --- in the database -----------------------------------------------------------------------------


def test_the_database_file_holds_no_number_name_or_marriage_in_clear(engine: Engine, tmp_path: Path) -> None:
    with Session(engine) as session:
        person = a_person()
        session.add(person)
        session.flush()
        assert person.id is not None
        session.add(
            Child(person_id=person.id, birth_order=1, birth_date=date(2020, 1, 2), sex="M", name="李小明")
        )
        session.commit()
    with read_session(engine) as session:
        found = session.exec(select(Person)).one()
        assert (found.id_number, found.name, found.marital_status) == (
            NUMBER,
            NAME,
            MaritalStatus.first_marriage,
        )
        assert found.marriage_date == date(2019, 5, 1)
        raw = session.execute(text("SELECT id_number, name, marital_status, marriage_date FROM person")).one()
    assert all(str(value).startswith("v1:") for value in raw)
    stored = file_bytes(tmp_path / "yipanqi.db")
    for clear in (NUMBER, NAME, "李小明", "first_marriage", "2019-05-01"):
        assert clear.encode() not in stored, clear


def test_look_ups_go_by_blind_index_and_an_encrypted_column_refuses_a_comparison(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(a_person(24))
        session.add(a_person(41, name="张丽"))
        session.commit()
    with read_session(engine) as session:
        by_number = select(Person).where(Person.id_number_index == pii.blind_index(NUMBER, pii.ID_NUMBER))
        assert session.exec(by_number).one().name == NAME
        by_name = select(Person).where(Person.name_index == pii.blind_index("王 秀英", pii.NAME))
        assert session.exec(by_name).one().id_number == NUMBER
    with pytest.raises(TypeError, match="use its blind index"):
        select(Person).where(Person.id_number == NUMBER)


def test_the_number_is_unique_by_its_index(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(a_person(24))
        session.commit()
    with Session(engine) as session:
        session.add(a_person(24, name="别人"))
        with pytest.raises(Exception, match=r"UNIQUE constraint failed: person\.id_number_index"):
            session.commit()


def test_a_message_body_is_bytes_at_the_model_and_ciphertext_in_the_file(
    engine: Engine, tmp_path: Path
) -> None:
    body = f'{{"subject": {{"id_number": "{NUMBER}", "name": "{NAME}"}}}}'.encode()
    with Session(engine) as session:
        session.add(
            OutboxMessage(
                message_id="m1",
                type="verification_request",
                recipient="411627",
                path="/peer/v1/x",
                conversation_id="c1",
                body=body,
                digest="sha-256=:x:",
                next_attempt_at=utcnow(),
            )
        )
        session.commit()
    with read_session(engine) as session:
        assert session.get(OutboxMessage, "m1").body == body  # type: ignore[union-attr]
    assert NUMBER.encode() not in file_bytes(tmp_path / "yipanqi.db")


def test_a_node_with_the_wrong_key_does_not_start_serving_it(engine: Engine) -> None:
    with Session(engine) as session:
        session.add(a_person())
        session.commit()
    pii_rotation.check_database(engine)
    pii.install(OTHER)
    with pytest.raises(PiiKeyError, match=r"person\.\w+ does not decrypt with PII key v1"):
        pii_rotation.check_database(engine)
    with read_session(engine) as session, pytest.raises(PiiKeyError):
        session.exec(select(Person)).all()


# --- rotation ------------------------------------------------------------------------------------


def test_rotation_re_encrypts_every_row_and_old_rows_still_read_meanwhile(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path, pii_keys=None)
    pii.write_key_file(pii.key_file(settings), ONE)
    pii.install(ONE)
    engine = make_engine(f"sqlite:///{tmp_path / 'yipanqi.db'}")
    try:
        upgrade(engine)
        with Session(engine) as session:
            for seq in range(1, 8):
                session.add(a_person(seq, name=f"人{seq}"))
            session.commit()
        assert pii_rotation.versions(engine) == {1: 7 * 4}  # number, name, status, marriage date

        ring = pii_rotation.rotate(settings)
        assert ring.current == 2
        assert stat.S_IMODE(pii.key_file(settings).stat().st_mode) == 0o600
        pii.install(pii.read_key_file(pii.key_file(settings)))
        with read_session(engine) as session:  # v1 rows read with the new ring before re-encryption
            assert {p.name for p in session.exec(select(Person))} == {f"人{s}" for s in range(1, 8)}
        report = pii_rotation.reencrypt(engine, batch_size=3)
        assert (report.total, report.skipped) == (28, 0)
        assert report.rewritten["person.id_number"] == 7
        assert pii_rotation.versions(engine) == {2: 28}
        assert pii_rotation.reencrypt(engine, batch_size=3).total == 0  # nothing left to do

        pii.install(Keyring({2: ring.secrets[2]}))  # v1 retired: still every row reads
        with read_session(engine) as session:
            assert len(session.exec(select(Person)).all()) == 7
        pii.install(ring)
        with read_session(engine) as session:  # the blind index did not change
            index = pii.blind_index(NUMBER[:14] + "0003", pii.ID_NUMBER)
            assert session.exec(select(Person).where(Person.id_number_index == index)).one().name == "人3"
    finally:
        engine.dispose()
        pii.install(None)


def test_rotation_refuses_keys_that_come_from_the_environment(tmp_path: Path) -> None:
    with pytest.raises(PiiKeyError, match="YIPANQI_PII_KEYS"):
        pii_rotation.rotate(Settings(data_dir=tmp_path, pii_keys=ONE.dump()))


# --- migration 0011 on a database with clear rows ----------------------------------------------


def test_migration_0011_encrypts_the_rows_that_were_in_clear(tmp_path: Path, ring: Keyring) -> None:
    database = tmp_path / "old.db"
    engine = make_engine(f"sqlite:///{database}")
    try:
        config = alembic_config(str(engine.url))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.upgrade(config, "0010")
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO person (id, id_number, name, sex, birth_date, origin_node, host_node, "
                    "marital_status, marriage_date, created_at, updated_at) VALUES (1, :n, :name, 'F', "
                    "'1995-03-08', '411627', '410105', 'divorced', '2019-05-01', '2026-01-01 00:00:00', "
                    "'2026-01-01 00:00:00')"
                ),
                {"n": NUMBER, "name": NAME},
            )
            connection.execute(
                text(
                    "INSERT INTO child (person_id, birth_order, birth_date, sex, name) "
                    "VALUES (1, 1, '2020-01-02', 'M', '李小明')"
                )
            )
        upgrade(engine)
        with read_session(engine) as session:
            person = session.exec(select(Person)).one()
            assert (person.id_number, person.name, person.marital_status) == (
                NUMBER,
                NAME,
                MaritalStatus.divorced,
            )
            assert person.id_number_index == ring.blind_index(NUMBER, pii.ID_NUMBER)
            assert session.exec(select(Child)).one().name == "李小明"
            assert session.execute(text("PRAGMA foreign_keys")).scalar() == 1  # on again after the rebuild
        engine.dispose()
        # The migration vacuumed the file: the clear values of the old rows are not in free pages either.
        stored = file_bytes(database)
        assert NUMBER.encode() not in stored
        assert NAME.encode() not in stored
    finally:
        engine.dispose()


# --- file modes ----------------------------------------------------------------------------------


def test_the_data_folder_is_0700_and_the_database_files_0600(tmp_path: Path, ring: Keyring) -> None:  # noqa: ARG001
    folder = tmp_path / "data"
    old = os.umask(0o022)  # what a usual shell gives
    try:
        pii.make_data_dir(folder)
        engine = make_engine(f"sqlite:///{folder / 'yipanqi.db'}")
        upgrade(engine)
        with Session(engine) as session:
            session.add(a_person())
            session.commit()
            files = sorted(p.name for p in folder.iterdir())
            modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in folder.iterdir()}
        engine.dispose()
    finally:
        os.umask(old)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert {"yipanqi.db", "yipanqi.db-wal", "yipanqi.db-shm"} <= set(files)
    assert modes["yipanqi.db"] == modes["yipanqi.db-wal"] == modes["yipanqi.db-shm"] == 0o600


def test_files_left_open_by_an_older_install_are_narrowed(tmp_path: Path) -> None:
    folder = tmp_path / "old"
    folder.mkdir(mode=0o755)
    folder.chmod(0o755)
    database = folder / "yipanqi.db"
    database.write_bytes(b"")
    database.chmod(0o644)
    pii.make_data_dir(folder)
    pii.secure_sqlite_files(database)
    assert stat.S_IMODE(folder.stat().st_mode) == 0o700
    assert stat.S_IMODE(database.stat().st_mode) == 0o600


# --- the commands --------------------------------------------------------------------------------


def yipanqi(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "service", *args], env=env, capture_output=True, text=True, check=False
    )


@pytest.mark.slow
def test_init_makes_the_key_rotate_re_encrypts_and_production_needs_a_key(tmp_path: Path) -> None:
    base = {k: v for k, v in os.environ.items() if not k.startswith("YIPANQI_")}
    data = tmp_path / "node"
    env = {**base, "YIPANQI_DATA_DIR": str(data)}
    made = yipanqi(env, "init", "--node-id", "410105", "--name", "金水区")
    assert made.returncode == 0, made.stdout + made.stderr
    key = data / "keys" / pii.KEY_FILE
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert stat.S_IMODE(data.stat().st_mode) == 0o700
    assert stat.S_IMODE((data / "yipanqi.db").stat().st_mode) == 0o600

    pii.install(pii.read_key_file(key))
    engine = make_engine(f"sqlite:///{data / 'yipanqi.db'}")
    try:
        with Session(engine) as session:
            session.add(a_person())
            session.commit()
        rotated = yipanqi(env, "pii", "rotate", "--batch-size", "1")
        assert rotated.returncode == 0, rotated.stdout + rotated.stderr
        assert "4 value(s) re-encrypted with PII key v2" in rotated.stdout
        pii.install(pii.read_key_file(key))
        with read_session(engine) as session:
            assert session.exec(select(Person)).one().name == NAME
            assert session.execute(text("SELECT substr(name, 1, 3) FROM person")).scalar() == "v2:"
        status = yipanqi(env, "pii", "status")
        assert status.stdout.split() == ["v2:", "4", "(current)"], status.stdout
    finally:
        engine.dispose()
        pii.install(None)

    production = {
        **base,
        "YIPANQI_ENVIRONMENT": "production",
        "YIPANQI_DATA_DIR": str(tmp_path / "prod"),
        "YIPANQI_DATABASE_URL": f"sqlite:///{tmp_path / 'prod.db'}",
    }
    refused = yipanqi(production, "migrate")
    assert refused.returncode == 2
    assert "no PII key: set YIPANQI_PII_KEYS" in refused.stdout
    assert not (tmp_path / "prod" / "keys" / pii.KEY_FILE).exists()


def test_a_process_reads_the_key_file_again_when_a_rotation_beside_it_changes_it(tmp_path: Path) -> None:
    path = tmp_path / "keys" / pii.KEY_FILE
    pii.write_key_file(path, ONE)
    active = pii._Active()
    active.RELOAD_SECONDS = 0.0  # check the file at every use
    active.use_file(path)
    assert active.get().current == 1
    rotated = ONE.with_new_version()
    pii.write_key_file(path, rotated, replace=True)
    os.utime(path, (1, 1))  # a different mtime even within the file system's time granularity
    assert active.get().current == 2
    assert active.reload().secrets == rotated.secrets
