"""The migrant register (流动人口个案): one record per person, by 18-character ID number."""

from __future__ import annotations

from datetime import date, datetime
from enum import StrEnum

from sqlalchemy import Index, UniqueConstraint
from sqlmodel import Field, SQLModel

from service.models.base import utc_field
from service.models.verification import Sex
from service.signing import pii
from service.signing.pii import EncryptedDate, EncryptedEnum, EncryptedText


class MaritalStatus(StrEnum):  # 婚姻状况
    unmarried = "unmarried"  # 未婚
    first_marriage = "first_marriage"  # 初婚
    remarried = "remarried"  # 再婚
    divorced = "divorced"  # 离婚
    widowed = "widowed"  # 丧偶


class ContraceptionMethod(StrEnum):  # 避孕节育措施
    iud = "iud"  # 宫内节育器 (上环)
    female_sterilization = "female_sterilization"  # 女性绝育
    male_sterilization = "male_sterilization"  # 男性绝育
    implant = "implant"  # 皮下埋植
    injection = "injection"  # 避孕针
    oral = "oral"  # 口服药
    condom = "condom"  # 避孕套
    other = "other"  # 其他
    none = "none"  # 未避孕


class Person(SQLModel, table=True):  # 流动人口个案
    """ID number, name, marital and contraception fields encrypted (service/signing/pii.py); the
    ID number and the normalised name are found by their blind indexes, set on every write."""

    __tablename__ = "person"
    __table_args__ = (Index("ix_person_lookalike", "name_index", "birth_date", "sex"),)

    id: int | None = Field(default=None, primary_key=True)
    id_number: str = Field(max_length=18, sa_type=EncryptedText("person.id_number"))
    id_number_index: str | None = Field(
        default=None,
        max_length=64,
        unique=True,
        nullable=False,
        sa_column_kwargs={"default": pii.blind_index_default("id_number", pii.ID_NUMBER)},
    )
    name: str = Field(max_length=64, sa_type=EncryptedText("person.name"))
    name_index: str | None = Field(
        default=None,
        max_length=64,
        nullable=False,
        sa_column_kwargs={"default": pii.blind_index_default("name", pii.NAME)},
    )
    sex: Sex = Field(max_length=1)
    birth_date: date
    origin_node: str = Field(max_length=6, index=True)  # 户籍地
    host_node: str = Field(max_length=6, index=True)  # 现居住地
    arrived_on: date | None = None  # 流入日期
    departed_on: date | None = None  # 流出日期
    # What the 婚育证明 needs, for women of childbearing age (15–49).
    marital_status: MaritalStatus | None = Field(
        default=None, sa_type=EncryptedEnum("person.marital_status", MaritalStatus)
    )
    marriage_date: date | None = Field(default=None, sa_type=EncryptedDate("person.marriage_date"))
    contraception_method: ContraceptionMethod | None = Field(
        default=None, sa_type=EncryptedEnum("person.contraception_method", ContraceptionMethod)
    )
    contraception_since: date | None = Field(
        default=None, sa_type=EncryptedDate("person.contraception_since")
    )
    merged_into: int | None = Field(default=None, foreign_key="person.id")  # 清理重复: kept, not deleted
    created_at: datetime = utc_field(default_now=True)
    updated_at: datetime = utc_field(default_now=True)
    updated_by: str | None = Field(default=None, max_length=64)


class Child(SQLModel, table=True):  # 子女
    __tablename__ = "child"
    __table_args__ = (UniqueConstraint("person_id", "birth_order"),)

    id: int | None = Field(default=None, primary_key=True)
    person_id: int = Field(foreign_key="person.id", index=True)
    birth_order: int = Field(ge=1, le=20)
    birth_date: date
    sex: Sex = Field(max_length=1)
    name: str | None = Field(default=None, max_length=64, sa_type=EncryptedText("child.name"))


pii.keep_indexed(Person, [("id_number", "id_number_index", pii.ID_NUMBER), ("name", "name_index", pii.NAME)])
