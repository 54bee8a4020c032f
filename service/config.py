"""Settings of one node: one pydantic-settings class, env prefix ``YIPANQI_``."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Iterator, Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.clock import OFFSET_ENV, offset_from_env
from service.directory.authority import parse_authority_keys
from service.notifications.kinds import NotificationKind
from service.sla.deadlines import DeadlineRule

ENV_PREFIX = "YIPANQI_"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_nested_delimiter="__", extra="ignore")

    environment: Literal["development", "production"] = "development"
    data_dir: Path = Path("./yipanqi-data")
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite file yipanqi.db in data_dir"
    )
    log_level: str = "INFO"
    # /docs, /openapi.json and /metrics (service/production.py): served when enabled; by default in
    # development only. With metrics_token set, /metrics asks for "Authorization: Bearer <token>".
    docs_enabled: bool | None = None
    metrics_enabled: bool | None = None
    metrics_token: SecretStr | None = None

    # Peer protocol limits (PROTOCOL.md).
    max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    clock_skew_seconds: int = Field(default=300, gt=0)
    max_signature_lifetime_seconds: int = Field(default=300, gt=0)
    peer_timeout_seconds: float = Field(default=10.0, gt=0)
    # A peer's answer (service/exchange/client.py): read up to this many bytes, all of it within
    # peer_call_deadline_seconds (connect, send, read; a synchronous look-up), before its signature
    # is checked. The relay's deliveries have relay_delivery_deadline_seconds instead.
    peer_max_response_bytes: int = Field(default=8 * 1024 * 1024, gt=0)
    peer_call_deadline_seconds: float = Field(default=15.0, gt=0, le=600)

    # Request bodies, every route (service/limits.py, before authentication and before the body is
    # read): the staff API and the console take at most staff_max_body_bytes (register uploads
    # people_import_max_bytes, the peer API max_body_bytes); a larger Content-Length is answered
    # 413 at once, a chunked body is cut at the limit. A body must arrive whole within
    # request_body_seconds (register uploads: people_import_body_seconds) of the request's start: 408.
    staff_max_body_bytes: int = Field(default=1024 * 1024, gt=0)
    request_body_seconds: float = Field(default=30.0, gt=0, le=3600)
    people_import_body_seconds: float = Field(default=300.0, gt=0, le=3600)

    # Load (docs/storage.md): requests handled at once, the others wait in line up to
    # admission_wait_seconds, at most admission_queue of them, and are then answered 503 with
    # Retry-After. The database pool holds a connection for each admitted request, the relay and
    # the scheduler (db_pool_size, by default derived from them).
    max_concurrent_requests: int = Field(default=32, gt=0, le=1024)
    admission_queue: int = Field(default=2048, ge=0)
    admission_wait_seconds: float = Field(default=10.0, gt=0, le=300)
    db_pool_size: int | None = Field(default=None, gt=0, le=1000)
    # Longest wait for SQLite's writer lock in this process (and for a pool connection): then 503.
    write_lock_wait_seconds: float = Field(default=10.0, gt=0, le=300)
    # Peer keys and staff accounts are read from memory; a change made by another replica (or by
    # a CLI command) is seen within this many seconds, at once in the process that made it.
    directory_refresh_seconds: float = Field(default=3.0, gt=0, le=300)
    # Failed staff authentications allowed per minute from one address and against one account.
    auth_failures_per_minute: int = Field(default=10, gt=0, le=10_000)
    # How long a staff write's Idempotency-Key and its first answer are kept (service/staff/idempotency.py).
    idempotency_key_hours: int = Field(default=24, gt=0, le=30 * 24)
    # A staff bearer token's lifetime unless given when it is issued (`yipanqi staff add --token-days`).
    staff_token_days: int = Field(default=90, gt=0, le=3650)

    # The signed directory (service/directory/signed.py, docs/security/directory.md): the authority keys
    # this node trusts to sign it, each '<keyid>=<base64url Ed25519 public key>' (a JSON list), the
    # URL it is fetched from every directory_fetch_interval_seconds (none: imported from files only),
    # the largest document taken and the whole fetch's deadline, and how many days before its expiry
    # the node starts to warn.
    directory_authority_keys: list[str] = Field(default_factory=list)
    directory_url: str | None = None
    directory_fetch_interval_seconds: float = Field(default=3600.0, ge=10, le=7 * 86_400)
    directory_max_bytes: int = Field(default=4 * 1024 * 1024, gt=0, le=256 * 1024 * 1024)
    directory_fetch_deadline_seconds: float = Field(default=30.0, gt=0, le=600)
    directory_warn_days: int = Field(default=7, ge=0, le=365)

    # The staff console (service/console/): a session ends after console_idle_minutes without a
    # request and console_session_hours after sign-in; console_lockout_failures wrong passwords in a
    # row lock the account for console_lockout_minutes. console_secret signs the CSRF cookie
    # (default: a random one in keys/console.secret; replicas on several hosts must share one).
    # Cookies are Secure in production (behind TLS) unless console_secure_cookies says otherwise.
    console_idle_minutes: int = Field(default=30, gt=0, le=24 * 60)
    console_session_hours: int = Field(default=10, gt=0, le=7 * 24)
    console_lockout_failures: int = Field(default=5, gt=0, le=100)
    console_lockout_minutes: int = Field(default=15, gt=0, le=24 * 60)
    console_secret: SecretStr | None = None
    console_secure_cookies: bool | None = None

    # Personal data at rest (service/signing/pii.py): the PII key ring, ``v<n>:<base64url>`` entries
    # separated by commas or lines (the highest version encrypts). Unset: the key file
    # keys/pii.key (0600), made by `yipanqi init`, or at first start outside production.
    pii_keys: SecretStr | None = None
    pii_rotate_batch_size: int = Field(default=500, gt=0, le=100_000)

    # Outbox relay (service/exchange/relay.py).
    relay_enabled: bool = True
    relay_interval_seconds: float = Field(default=1.0, gt=0)
    relay_batch_size: int = Field(default=20, gt=0)
    relay_concurrency: int = Field(default=8, gt=0, le=64)
    relay_peer_concurrency: int = Field(default=4, gt=0, le=64)  # per peer, in each replica
    # The whole of one delivery: connect, send, read all of the answer (peer_timeout_seconds is per step).
    relay_delivery_deadline_seconds: float = Field(default=30.0, gt=0, le=3600)
    # Renewed every quarter of it while the delivery runs: a crashed replica's messages are free after it.
    relay_lease_seconds: float = Field(default=10.0, ge=1, le=3600)
    relay_max_attempts: int = Field(default=30, gt=0)
    relay_backoff_base_seconds: float = Field(default=2.0, gt=0)
    relay_backoff_cap_seconds: float = Field(default=3600.0, gt=0)
    # Circuit breaker per peer: opened by this many failed deliveries in a row, probed after a wait
    # growing from the backoff base up to relay_circuit_max_open_seconds.
    relay_circuit_failures: int = Field(default=3, gt=0, le=1000)
    relay_circuit_max_open_seconds: float = Field(default=60.0, gt=0)

    # Batch exchange (docs/protocol.md section 18). Receiving: serve and advertise POST /peer/v1/batch,
    # with at most this many items. Sending: the relay sends a peer that advertises it up to this many
    # messages in one request (each batch takes one of the peer's relay_peer_concurrency slots),
    # reading the peer's GET /peer/v1/node again after relay_capability_ttl_seconds.
    peer_batch_enabled: bool = True
    peer_batch_max_items: int = Field(default=1000, ge=1, le=1000)
    relay_batch_enabled: bool = True
    # 500: a batch's answer comes back within a few seconds even on a busy node (peer_timeout_seconds).
    relay_batch_max_items: int = Field(default=500, ge=2, le=1000)
    relay_capability_ttl_seconds: float = Field(default=300.0, gt=0, le=86_400)

    # Register import (流动人口个案): largest upload the staff API takes, rows per transaction.
    people_import_max_bytes: int = Field(default=64 * 1024 * 1024, gt=0)
    people_import_batch_size: int = Field(default=1000, gt=0, le=100_000)
    # Checked before a file is parsed (importer.read_table): an XLSX's members unpacked, in all and
    # each against its packed size (a zip bomb), the rows, one cell; then the report lists the first
    # people_import_max_reported_errors bad rows and counts the others by column.
    people_import_max_unpacked_bytes: int = Field(default=256 * 1024 * 1024, gt=0)
    people_import_max_ratio: int = Field(default=100, gt=1)
    people_import_max_rows: int = Field(default=1_000_000, gt=0)
    people_import_max_cell_chars: int = Field(default=1000, gt=0)
    people_import_max_reported_errors: int = Field(default=1000, gt=0)

    # Deadlines (PROTOCOL.md "Delivery"): calendar or working days, Asia/Shanghai.
    deadline_urgent: DeadlineRule = DeadlineRule(days=15)
    deadline_normal: DeadlineRule = DeadlineRule(days=30)
    deadline_discrepancy: DeadlineRule = DeadlineRule(days=7)
    deadline_notification_birth: DeadlineRule = DeadlineRule(days=30)  # 通报 ack: birth
    deadline_notification_other: DeadlineRule = DeadlineRule(days=30)  # 通报 ack: every other kind

    # 通报 kinds acknowledged (接收确认) on receipt, without staff: e.g. '["arrival", "departure"]'.
    notification_auto_ack_kinds: list[NotificationKind] = Field(default_factory=list)

    # 婚育证明查验: send the certificate_discrepancy 协查 by itself (otherwise staff are offered it).
    certificate_discrepancy_auto_send: bool = False
    # 婚育证明查验, origin side (docs/protocol.md "Standing"): "standing" answers only a node with
    # standing for the person and purpose (her registered host, a node that notified her arrival,
    # or one in an open 协查 about her, residence_check only) and refuses any other with a signed 403;
    # "any_trusted" answers every node in the directory and flags those without standing to the
    # staff (a flagged_lookup notice). Either way each peer's look-ups are limited per replica:
    # lookup_rate_limit (limits' notation, e.g. "60/minute;1000/hour") and at most
    # lookup_peer_concurrency at once; past them a signed 429 with Retry-After.
    lookup_standing: Literal["standing", "any_trusted"] = "standing"
    lookup_rate_limit: str = "60/minute;1000/hour"
    lookup_peer_concurrency: int = Field(default=4, gt=0, le=1024)

    # SLA sweeps (service/sla/sweeps.py): remind staff this many (working) days before the due day,
    # mark items overdue once due_at has passed and, if escalate_overdue, tell the supervisor too.
    reminder_before: DeadlineRule = DeadlineRule(days=2, unit="working")
    sweep_interval_seconds: float = Field(default=60.0, gt=0)
    escalate_overdue: bool = True

    # Evidence log (service/evidence/): new messages are sealed into the hash chain every
    # evidence_seal_interval_seconds, at most evidence_seal_chunk per transaction; the node signs a
    # checkpoint of the chain head every evidence_checkpoint_interval_seconds (when it moved).
    evidence_seal_interval_seconds: float = Field(default=30.0, gt=0, le=86_400)
    evidence_seal_chunk: int = Field(default=500, ge=1, le=10_000)
    evidence_seal_margin_seconds: float = Field(default=600.0, ge=0, le=7 * 86_400)
    evidence_checkpoint_interval_seconds: float = Field(default=3600.0, gt=0, le=7 * 86_400)
    # Message bodies (inbox, delivered outbox, certificate answers) are emptied this many days after
    # they were received/delivered/answered, once sealed; None keeps them. Digests stay in the chain.
    message_body_retention_days: int | None = Field(default=None, ge=1, le=36_500)

    # Monthly report targets (DOMAIN.md "Targets"), each a share in (0, 1]; rows below are marked.
    target_feedback_rate: float = Field(default=0.96, gt=0, le=1)  # 重点服务对象协查信息反馈率
    target_processing_rate: float = Field(default=0.96, gt=0, le=1)  # 待办事宜处理率
    target_send_receive_rate: float = Field(default=0.96, gt=0, le=1)  # 信息发送接收率
    target_check_rate: float = Field(default=0.92, gt=0, le=1)  # 婚育证明查验率 (no figure in 004)
    target_accuracy_rate: float = Field(default=0.96, gt=0, le=1)  # 个案信息准确率

    @field_validator(
        "deadline_urgent",
        "deadline_normal",
        "deadline_discrepancy",
        "deadline_notification_birth",
        "deadline_notification_other",
        "reminder_before",
        mode="before",
    )
    @classmethod
    def _deadline_over_default(cls, value: Any, info: ValidationInfo) -> Any:
        """``YIPANQI_DEADLINE_NORMAL__UNIT=working`` alone keeps the default number of days."""
        if isinstance(value, dict) and info.field_name is not None:
            default = cls.model_fields[info.field_name].default
            return {**default.model_dump(), **value}
        return value

    @field_validator("directory_authority_keys")
    @classmethod
    def _authority_keys_parse(cls, value: list[str]) -> list[str]:
        parse_authority_keys(value)  # ValueError: refused at start, with the variable's name
        return value

    @field_validator("directory_url")
    @classmethod
    def _directory_url_is_http(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith(("http://", "https://")):
            raise ValueError("must start with https:// (or http://)")
        return value or None

    @field_validator("lookup_rate_limit")
    @classmethod
    def _rate_limit_notation(cls, value: str) -> str:
        from limits import parse_many

        try:
            parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit like '60/minute;1000/hour': {exc}") from None
        return value

    @property
    def effective_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'yipanqi.db').resolve()}"

    @property
    def effective_db_pool_size(self) -> int:
        return self.db_pool_size or self.max_concurrent_requests + self.relay_concurrency + 8

    @property
    def sqlite_file(self) -> Path | None:
        """The default SQLite database in the data folder; None when ``database_url`` is set."""
        return None if self.database_url else self.data_dir / "yipanqi.db"

    @property
    def console_cookies_secure(self) -> bool:
        if self.console_secure_cookies is not None:
            return self.console_secure_cookies
        return self.environment == "production"

    @property
    def keys_dir(self) -> Path:
        return self.data_dir / "keys"

    @property
    def docs_served(self) -> bool:
        return self.docs_enabled if self.docs_enabled is not None else self.environment != "production"

    @property
    def metrics_served(self) -> bool:
        return self.metrics_enabled if self.metrics_enabled is not None else self.environment != "production"

    @model_validator(mode="after")
    def _production_needs_real_database(self) -> Settings:
        if self.environment == "production" and not self.database_url:
            raise ValueError("YIPANQI_DATABASE_URL must be set in production (SQLite is for one-node use)")
        return self

    @model_validator(mode="after")
    def _production_keeps_the_real_clock(self) -> Settings:
        if self.environment == "production" and offset_from_env().total_seconds() != 0:
            raise ValueError(f"{OFFSET_ENV} is for tests and demos: production runs on the real clock")
        return self


@lru_cache
def get_settings() -> Settings:
    return Settings()


# Read by the process outside Settings: the clock offset for tests and demos (service/clock.py).
OTHER_VARIABLES = frozenset({OFFSET_ENV})
# The test suite's own variables (YIPANQI_TEST_DATABASE_URL, …), present while tests start nodes.
TEST_PREFIX = ENV_PREFIX + "TEST_"
# Kubernetes adds <SERVICE>_SERVICE_HOST, <SERVICE>_PORT_8100_TCP, … for a Service named yipanqi.
SERVICE_LINK = re.compile(
    ENV_PREFIX + r"(SERVICE_HOST|SERVICE_PORT(_\w+)?|PORT(_\d+_(TCP|UDP|SCTP)(_\w+)?)?)"
)


def known_variables() -> frozenset[str]:
    """Every ``YIPANQI_*`` name a node reads, nested settings as ``…__DAYS`` and ``…__UNIT`` too."""
    names = set(OTHER_VARIABLES)
    for name, field in Settings.model_fields.items():
        names.update(_variables(ENV_PREFIX + name.upper(), field.annotation))
    return frozenset(names)


def _variables(variable: str, annotation: Any) -> Iterator[str]:
    yield variable  # a nested setting may also be given whole, as JSON
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        for name, field in annotation.model_fields.items():
            yield from _variables(f"{variable}__{name.upper()}", field.annotation)


def unknown_variables(environ: Mapping[str, str] = os.environ) -> list[str]:
    """One line for each ``YIPANQI_*`` variable no setting reads, with the closest known name.

    Settings ignore names they do not know, so a misspelt one (``YIPANQI_DEADLINE_NORMAL_DAYS``)
    would leave the default in force without a word. Names are compared as pydantic-settings
    reads them, case-insensitively.
    """
    known = known_variables()
    stems = {name.removeprefix(ENV_PREFIX): name for name in known}
    problems = []
    for variable in sorted(environ):
        name = variable.upper()
        if not name.startswith(ENV_PREFIX) or name in known or name.startswith(TEST_PREFIX):
            continue
        if SERVICE_LINK.fullmatch(name):
            continue
        close = difflib.get_close_matches(name.removeprefix(ENV_PREFIX), list(stems), n=1)
        hint = f"did you mean {stems[close[0]]}?" if close else "no such setting (README.md, Configuration)"
        problems.append(f"{variable}: {hint}")
    return problems
