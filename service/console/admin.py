"""管理 (admins only): staff accounts, the directory of peers and their keys, and the node's status.

Every route depends on ``Admin`` (the role is checked on every request, GET and POST alike). A
secret — a new bearer token, a one-time console password — is made in the POST and shown only in
that POST's answer page: never in a URL, a redirect or a log line. Each change is audited (here with
the source address, and by ``service.staff.service`` after its commit). An account holds one or
more roles (the 角色 checkboxes); admin handles no case unless it holds a case role as well.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from sqlalchemy import ColumnElement, func, or_, text
from sqlmodel import Session, col, select

from service.clock import utcnow
from service.console.auth import PREFIX, Admin, ConsoleUser, audit, see_other, source
from service.console.templating import add_nav, render
from service.db import get_engine, read_session, transaction
from service.directory import service as directory
from service.errors import DomainError, NotFound, ValidationFailed
from service.exchange import outbox
from service.models import OutboxMessage, OutboxStatus, PeerKey, Role, Staff
from service.names import ROLES as ROLE_NAMES
from service.scheduler import stale_after_seconds
from service.schemas import DbId
from service.signing.keys import is_node_id, split_keyid
from service.staff import service as accounts
from service.staff.passwords import set_password

router = APIRouter(prefix=PREFIX, include_in_schema=False)
PATH = f"{PREFIX}/admin"

add_nav(90, "管理", PATH, "账户、对端与公钥、节点状态（仅管理员）", (Role.admin,))

Text = Annotated[str, Form(max_length=200)]
KeyText = Annotated[str, Form(max_length=300)]

NOTICES = {
    "deactivated": "已停用该账户：其登录会话已结束，令牌已失效。",
    "reactivated": "已启用该账户。如忘记密码，请为其重置密码。",
    "role": "已修改角色。",
    "revoked": "已吊销接口令牌：该令牌立即失效，需要时可重置令牌获取新令牌。",
    "unlocked": "已解锁该账户。",
    "peer": "已保存对端。",
    "key": "已新增公钥。",
    "retired": "已停用该公钥：用它签名的消息将被拒收。",
}
ROLE_ORDER = (Role.operator, Role.supervisor, Role.auditor, Role.admin)
Roles = Annotated[list[str] | None, Form()]  # checkboxes: each a role name, checked in _roles()
TOKEN_STATES = {"active": "有效", "expired": "已过期", "revoked": "已吊销", "deactivated": "账户已停用"}


@router.get("/admin")
def admin_home(request: Request, user: Admin) -> HTMLResponse:
    return render(request, "admin/index.html", user=user)


# --- staff accounts ------------------------------------------------------------------------------


@dataclass(frozen=True)
class AccountRow:
    id: int
    username: str
    role: Role
    roles: tuple[Role, ...]  # in ROLE_ORDER
    active: bool
    token_state: str  # in Chinese (TOKEN_STATES)
    token_expires_at: datetime | None
    locked_until: datetime | None  # set while locked out
    password_changed_at: datetime | None
    has_password: bool
    must_change_password: bool
    created_at: datetime

    @classmethod
    def of(cls, staff: Staff, now: datetime) -> AccountRow:
        assert staff.id is not None
        locked = staff.locked_until if staff.locked_until is not None and staff.locked_until > now else None
        return cls(
            staff.id,
            staff.username,
            staff.role,
            tuple(role for role in ROLE_ORDER if role in staff.role_set),
            staff.active,
            TOKEN_STATES[accounts.token_state(staff, now)],
            staff.token_expires_at,
            locked,
            staff.password_changed_at,
            staff.password_hash is not None,
            staff.must_change_password,
            staff.created_at,
        )

    @property
    def role_names(self) -> str:
        return "、".join(ROLE_NAMES[role] for role in self.roles)


def _staff_page(
    request: Request,
    user: ConsoleUser,
    *,
    error: str | None = None,
    form: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    now = utcnow()
    with read_session() as session:
        rows = [AccountRow.of(s, now) for s in accounts.list_staff(session)]
    context = {"rows": rows, "error": error, "form": form or {}, "ROLE_ORDER": ROLE_ORDER}
    return render(request, "admin/staff.html", context, user=user, status_code=status_code)


@router.get("/admin/staff")
def staff_list(request: Request, user: Admin) -> HTMLResponse:
    return _staff_page(request, user)


def _roles(role: str, roles: list[str] | None) -> frozenset[Role] | None:
    """The roles ticked (``roles``, several) or chosen (``role``, one: the former form), or None."""
    names = [*(roles or []), *([role] if role else [])]
    if not names or len(names) > len(Role) or any(name not in Role.__members__ for name in names):
        return None
    return frozenset(Role(name) for name in names)


@router.post("/admin/staff")
def staff_add(
    request: Request, user: Admin, username: Text, role: Text = "", roles: Roles = None
) -> HTMLResponse:
    """A new account: its bearer token and a one-time console password, both shown once, here."""
    username = username.strip()
    held = _roles(role, roles)
    form = {"username": username, "roles": ",".join(sorted(held or ()))}
    if not accounts.USERNAME.fullmatch(username):
        error = "用户名须为 2–64 位英文字母、数字或 . _ -（不能用中文或空格）。"
        return _staff_page(request, user, error=error, form=form, status_code=422)
    if held is None:
        return _staff_page(request, user, error="请选择角色。", form=form, status_code=422)
    new = accounts.new_token()  # argon2 before the transaction
    try:
        with transaction() as tx:
            staff, token = accounts.create_staff(tx, username=username, roles=held, by=_name(user), new=new)
            staff_id = staff.id
    except ValidationFailed:  # the name is taken (the format was checked above)
        error = f"用户名 {username} 已被使用，请换一个。"
        return _staff_page(request, user, error=error, form=form, status_code=409)
    assert staff_id is not None
    password = accounts.one_time_password(username)
    set_password(staff_id, password, must_change=True, now=utcnow())
    audit("staff_added", user.staff.username, source(request), account=username, roles=staff.roles)
    return _secret_page(request, user, staff_id, "已新增账户", token=token, password=password)


def _secret_page(
    request: Request,
    user: ConsoleUser,
    staff_id: int,
    title: str,
    *,
    token: str | None = None,
    password: str | None = None,
) -> HTMLResponse:
    with read_session() as session:
        staff = accounts.get_staff(session, staff_id)
    row = AccountRow.of(staff, utcnow())
    context = {"title": title, "account": row, "token": token, "password": password}
    return render(request, "admin/secret.html", context, user=user)


def _account_page(
    request: Request, user: ConsoleUser, staff_id: int, *, error: str | None = None, status_code: int = 200
) -> HTMLResponse:
    with read_session() as session:
        staff = accounts.get_staff(session, staff_id)  # NotFound: the 404 page
    context = {
        "account": AccountRow.of(staff, utcnow()),
        "own": staff_id == user.staff.id,
        "notice": NOTICES.get(request.query_params.get("done", "")),
        "error": error,
        "ROLE_ORDER": ROLE_ORDER,
    }
    return render(request, "admin/account.html", context, user=user, status_code=status_code)


@router.get("/admin/staff/{staff_id:int}")
def account(request: Request, staff_id: DbId, user: Admin) -> HTMLResponse:
    return _account_page(request, user, staff_id)


def _done(staff_id: int, what: str) -> RedirectResponse:
    return see_other(f"{PATH}/staff/{staff_id}?done={what}")


def _me(user: ConsoleUser) -> int:
    assert user.staff.id is not None
    return user.staff.id


def _name(user: ConsoleUser) -> str:
    return f"console:{user.staff.username}"


@router.post("/admin/staff/{staff_id:int}/deactivate")
def deactivate(request: Request, staff_id: DbId, user: Admin) -> Response:
    try:
        with transaction() as tx:
            staff = accounts.set_active(tx, staff_id, False, by=_me(user), now=utcnow(), by_name=_name(user))
    except accounts.OwnAccount:
        error = "不能停用自己的账户。请由另一位管理员操作。"
        return _account_page(request, user, staff_id, error=error, status_code=409)
    audit("staff_deactivated", user.staff.username, source(request), account=staff.username)
    return _done(staff_id, "deactivated")


@router.post("/admin/staff/{staff_id:int}/reactivate")
def reactivate(request: Request, staff_id: DbId, user: Admin) -> RedirectResponse:
    with transaction() as tx:
        staff = accounts.set_active(tx, staff_id, True, by=_me(user), now=utcnow(), by_name=_name(user))
    audit("staff_reactivated", user.staff.username, source(request), account=staff.username)
    return _done(staff_id, "reactivated")


@router.post("/admin/staff/{staff_id:int}/role")
def change_role(
    request: Request,
    staff_id: DbId,
    user: Admin,
    role: Text = "",
    roles: Roles = None,
) -> Response:
    """The roles the account holds from now on: the ticked ones (or one ``role``, the former form)."""
    held = _roles(role, roles)
    if held is None:
        return _account_page(request, user, staff_id, error="请至少选择一个角色。", status_code=422)
    try:
        with transaction() as tx:
            staff = accounts.set_roles(tx, staff_id, held, by=_me(user), by_name=_name(user))
    except accounts.OwnAccount:
        error = "不能取消自己的管理员角色，也不能给自己增加角色。请由另一位管理员操作。"
        return _account_page(request, user, staff_id, error=error, status_code=409)
    audit("staff_role_set", user.staff.username, source(request), account=staff.username, roles=staff.roles)
    return _done(staff_id, "role")


@router.post("/admin/staff/{staff_id:int}/unlock")
def unlock(request: Request, staff_id: DbId, user: Admin) -> RedirectResponse:
    with transaction() as tx:
        staff = accounts.unlock(tx, staff_id, by=_name(user))
    audit("staff_unlocked", user.staff.username, source(request), account=staff.username)
    return _done(staff_id, "unlocked")


@router.post("/admin/staff/{staff_id:int}/password")
def reset_password(request: Request, staff_id: DbId, user: Admin) -> HTMLResponse:
    """A new one-time password (shown once); the account's console sessions end."""
    with read_session() as session:
        username = accounts.get_staff(session, staff_id).username
    password = accounts.one_time_password(username)
    set_password(staff_id, password, must_change=True, now=utcnow())
    audit("staff_password_reset", user.staff.username, source(request), account=username)
    return _secret_page(request, user, staff_id, "已重置登录密码", password=password)


@router.post("/admin/staff/{staff_id:int}/token")
def revoke_tokens(request: Request, staff_id: DbId, user: Admin) -> HTMLResponse:
    """The old bearer token stops working; the new one is shown once."""
    new = accounts.new_token()  # argon2 before the transaction
    with transaction() as tx:
        token = accounts.replace_token(tx, staff_id, new, by=_name(user))
        username = accounts.get_staff(tx, staff_id).username
    audit("staff_token_replaced", user.staff.username, source(request), account=username)
    return _secret_page(request, user, staff_id, "已重置接口令牌", token=token)


@router.post("/admin/staff/{staff_id:int}/revoke")
def revoke_token(request: Request, staff_id: DbId, user: Admin) -> RedirectResponse:
    """The bearer token stops working at once and no new one is made (重置令牌 makes one)."""
    with transaction() as tx:
        staff = accounts.revoke_token(tx, staff_id, by=_name(user), now=utcnow())
    audit("staff_token_revoked", user.staff.username, source(request), account=staff.username)
    return _done(staff_id, "revoked")


# --- peers and their keys ------------------------------------------------------------------------


@dataclass(frozen=True)
class KeyRow:
    keyid: str
    public_key: str
    not_before: datetime | None
    not_after: datetime | None
    state: str  # 有效 / 未生效 / 已停用


def _key_row(key: PeerKey, now: datetime) -> KeyRow:
    if key.not_after is not None and key.not_after <= now:
        state = "已停用"
    elif key.not_before is not None and key.not_before > now:
        state = "未生效"
    else:
        state = "有效"
    return KeyRow(key.keyid, key.public_key, key.not_before, key.not_after, state)


def _peers_page(
    request: Request,
    user: ConsoleUser,
    *,
    error: str | None = None,
    error_for: str = "",
    form: dict[str, str] | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    now = utcnow()
    with read_session() as session:
        peers = [(peer, [_key_row(k, now) for k in keys]) for peer, keys in directory.list_peers(session)]
    context = {
        "peers": peers,
        "error": error,
        "error_for": error_for,  # "new" (the add-peer form) or a peer's node id (its add-key form)
        "form": form or {},
        "notice": NOTICES.get(request.query_params.get("done", "")),
    }
    return render(request, "admin/peers.html", context, user=user, status_code=status_code)


@router.get("/admin/peers")
def peers(request: Request, user: Admin) -> HTMLResponse:
    return _peers_page(request, user)


KEY_FORMAT = (
    "公钥格式不对：应为「节点代码/标签=公钥」，如 411627/k1=后接 43 位字母、数字、- 或 _。"
    "请完整复制对方县 yipanqi init 或 yipanqi public-key 打印的 --key 值。"
)


def _parse_key(text_value: str, node_id: str) -> tuple[directory.KeySpec | None, str | None]:
    """The key, or a message in Chinese saying what is wrong with it."""
    try:
        spec = directory.KeySpec.parse(text_value.strip())
    except (ValueError, DomainError):
        return None, KEY_FORMAT
    if split_keyid(spec.keyid)[0] != node_id:
        return None, f"公钥编号 {spec.keyid} 不属于节点 {node_id}：编号须以该县代码开头。"
    return spec, None


def _check_url(url: str) -> str | None:
    scheme, sep, rest = url.partition("://")
    if scheme not in ("http", "https") or not sep or not rest or any(c.isspace() for c in url):
        return "地址须以 http:// 或 https:// 开头，如 https://yipanqi.taikang.example。"
    return None


def _refusal(exc: DomainError) -> str:
    """add_peer's own refusals (this node itself, its own key) in Chinese."""
    field = exc.extra.get("field")
    if field == "node_id":
        return "这是本节点自己的代码：请填写对方县的节点代码。"
    if field == "key":
        return "该公钥是本节点自己的公钥，或不属于该县：请核对后重新复制。"
    return "对端信息未通过校验，请检查后重试。"


class _Exists(Exception):
    """The peer is in the directory already (the add form is for new peers)."""


@router.post("/admin/peers")
def add_peer(
    request: Request,
    user: Admin,
    node_id: Text,
    name: Text,
    url: Annotated[str, Form(max_length=500)],
    key: KeyText,
) -> Response:
    node_id, name, url = node_id.strip(), name.strip(), url.strip()
    form = {"node_id": node_id, "name": name, "url": url, "key": key.strip()}
    problems = []
    if not is_node_id(node_id):
        problems.append("节点代码须为 6 位数字的县级行政区划代码（GB/T 2260），如 411627。")
    if not name or len(name) > 64:
        problems.append("请填写对方县名称（最多 64 个字）。")
    if (problem := _check_url(url)) is not None:
        problems.append(problem)
    spec = None
    if is_node_id(node_id):
        spec, problem = _parse_key(key, node_id)
        if problem is not None:
            problems.append(problem)
    if problems:
        error = "".join(problems)
        return _peers_page(request, user, error=error, error_for="new", form=form, status_code=422)
    assert spec is not None
    try:
        with transaction() as tx:
            if directory.get_peer(tx, node_id) is not None:
                raise _Exists
            directory.add_peer(tx, node_id=node_id, name=name, url=url, keys=[spec])
    except _Exists:
        error = f"节点 {node_id} 已在目录中。如需轮换公钥，请在下方该县的「新增公钥」中填写。"
        return _peers_page(request, user, error=error, error_for="new", form=form, status_code=409)
    except DomainError as exc:
        return _peers_page(request, user, error=_refusal(exc), error_for="new", form=form, status_code=422)
    audit("peer_added", user.staff.username, source(request), peer=node_id, keyid=spec.keyid)
    return see_other(f"{PATH}/peers?done=peer")


@router.post("/admin/peers/{node_id}/keys")
def add_key(request: Request, node_id: str, user: Admin, key: KeyText) -> Response:
    """Rotation: a further key for a peer (its other keys are kept until retired)."""
    form = {"key": key.strip()}
    with read_session() as session:
        peer = directory.get_peer(session, node_id) if is_node_id(node_id) else None
        if peer is None:
            raise NotFound(f"no peer {node_id}")
        name, url = peer.name, peer.url
        spec, problem = _parse_key(key, node_id)
        if spec is not None and session.get(PeerKey, spec.keyid) is not None:
            problem = f"公钥编号 {spec.keyid} 已在目录中：新公钥请用新的标签（如 k2）。"
    if problem is not None or spec is None:
        return _peers_page(request, user, error=problem, error_for=node_id, form=form, status_code=422)
    try:
        with transaction() as tx:
            directory.add_peer(tx, node_id=node_id, name=name, url=url, keys=[spec])
    except DomainError as exc:
        return _peers_page(request, user, error=_refusal(exc), error_for=node_id, form=form, status_code=422)
    audit("peer_key_added", user.staff.username, source(request), peer=node_id, keyid=spec.keyid)
    return see_other(f"{PATH}/peers?done=key")


@router.post("/admin/peers/keys/retire")
def retire_key(request: Request, user: Admin, keyid: Annotated[str, Form(max_length=40)]) -> RedirectResponse:
    with transaction() as tx:
        directory.retire_key(tx, keyid, utcnow())  # NotFound: the 404 page
    audit("peer_key_retired", user.staff.username, source(request), keyid=keyid)
    return see_other(f"{PATH}/peers?done=retired")


# --- node status (read-only) ---------------------------------------------------------------------


@dataclass(frozen=True)
class QueueDepth:
    queued: int  # waiting for an attempt
    in_flight: int  # leased to a relay right now
    dead: int  # given up on: an admin may re-run them
    delivered: int


def queue_depth(session: Session, now: datetime) -> QueueDepth:
    def count(*where: ColumnElement[bool]) -> int:
        return int(session.exec(select(func.count()).select_from(OutboxMessage).where(*where)).one())

    pending = col(OutboxMessage.status) == OutboxStatus.pending
    leased = col(OutboxMessage.lease_until) > now
    return QueueDepth(
        queued=count(pending, or_(col(OutboxMessage.lease_until).is_(None), ~leased)),
        in_flight=count(pending, leased),
        dead=count(col(OutboxMessage.status) == OutboxStatus.dead),
        delivered=count(col(OutboxMessage.status) == OutboxStatus.delivered),
    )


def _ago(seconds: float) -> str:
    if seconds < 60:
        return f"{int(seconds)} 秒前"
    if seconds < 3600:
        return f"{int(seconds // 60)} 分钟前"
    return f"{seconds / 3600:.1f} 小时前"


def _scheduler(state: Any, now: datetime) -> dict[str, Any]:
    """The SLA sweep's last heartbeat, read as /readyz reads it."""
    scheduler, heartbeat = getattr(state, "scheduler", None), getattr(state, "sla_heartbeat", None)
    if scheduler is None or heartbeat is None:
        return {"ok": False, "text": "未启动"}
    fresh = scheduler.running and heartbeat.fresh(stale_after_seconds(state.settings))
    if heartbeat.last is None:
        return {"ok": fresh, "text": "启动后尚未完成第一次巡检"}
    seconds = time.monotonic() - heartbeat.last
    at = now - timedelta(seconds=seconds)
    return {"ok": fresh, "text": _ago(seconds), "at": at}


def _relay(state: Any, now: datetime) -> dict[str, Any]:
    worker = getattr(state, "relay_worker", None)
    if worker is None or not state.settings.relay_enabled:
        return {"ok": True, "text": "未启用"}
    beat = worker.relay.heartbeat
    stale_after = max(
        30.0, 3 * state.settings.peer_timeout_seconds, 10 * state.settings.relay_interval_seconds
    )
    fresh = bool(worker.alive and beat is not None and (now - beat).total_seconds() < stale_after)
    return {"ok": fresh, "text": _ago((now - beat).total_seconds()) if beat else "尚无", "at": beat}


@router.get("/admin/status")
def status(request: Request, user: Admin) -> HTMLResponse:
    now = utcnow()
    engine = get_engine()
    backend = {"sqlite": "SQLite", "postgresql": "PostgreSQL"}.get(engine.dialect.name, engine.dialect.name)
    database: dict[str, Any] = {"backend": backend, "where": engine.url.render_as_string(hide_password=True)}
    depth: QueueDepth | None = None
    dead: list[OutboxMessage] = []
    try:
        with read_session() as session:
            session.exec(text("SELECT 1"))  # type: ignore[call-overload]
            depth = queue_depth(session, now)
            dead, _total = outbox.list_messages(session, status=OutboxStatus.dead, page=1, page_size=10)
        database["ok"] = True
    except Exception as exc:  # the page says the database is unreachable, and which kind of error
        database.update(ok=False, error=type(exc).__name__)
    state = request.app.state
    context = {
        "depth": depth,
        "dead": dead,
        "database": database,
        "scheduler": _scheduler(state, now),
        "relay": _relay(state, now),
        "node_id": state.signer.node_id,
        "node_name": state.signer.name,
    }
    return render(request, "admin/status.html", context, user=user)
