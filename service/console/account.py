"""Sign-in, sign-out, password change and the home page (登录、退出、修改密码、首页)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import HTMLResponse, Response
from starlette.concurrency import run_in_threadpool

from service.clock import utcnow
from service.config import Settings
from service.console.auth import (
    COOKIE,
    LOGIN_PATH,
    PASSWORD_PATH,
    PREFIX,
    ConsoleUser,
    SignedIn,
    audit,
    end_session,
    safe_next,
    see_other,
    source,
    start_session,
)
from service.console.templating import local_time, render
from service.staff.passwords import (
    AccountLocked,
    LockoutPolicy,
    PasswordRejected,
    SignInFailed,
    check_password,
    set_password,
)

router = APIRouter(prefix=PREFIX, include_in_schema=False)
Text = Annotated[str, Form(max_length=200)]
Secret = Annotated[str, Form(max_length=200)]


def _set_cookie(response: Response, cookie: str, settings: Settings) -> None:
    response.set_cookie(
        COOKIE,
        cookie,
        max_age=settings.console_session_hours * 3600,
        path=PREFIX,
        httponly=True,
        secure=settings.console_cookies_secure,
        samesite="strict",
    )


@router.get("/login")
def login_page(request: Request, next: str = "") -> HTMLResponse:
    notice = "您已退出。" if request.query_params.get("bye") else None
    return render(request, "login.html", {"next": safe_next(next), "username": "", "notice": notice})


@router.post("/login")
def login(request: Request, username: Text, password: Secret, next: Text = "") -> Response:
    settings: Settings = request.app.state.settings
    policy = LockoutPolicy(settings.console_lockout_failures, settings.console_lockout_minutes)
    now, address = utcnow(), source(request)
    username = username.strip()
    try:
        staff = check_password(username, password, now=now, policy=policy)
    except AccountLocked as exc:
        audit("locked_out", username, address, until=exc.until.isoformat())
        error = f"密码错误次数过多，账户已锁定，请于 {local_time(exc.until)} 后再试，或请管理员解锁。"
        context = {"error": error, "username": username, "next": safe_next(next)}
        return render(request, "login.html", context, status_code=423)
    except SignInFailed:
        audit("sign_in_failed", username, address)
        context = {"error": "用户名或密码错误。", "username": username, "next": safe_next(next)}
        return render(request, "login.html", context, status_code=401)
    assert staff.id is not None
    cookie = start_session(staff.id, now)
    audit("signed_in", staff.username, address)
    response = see_other(PASSWORD_PATH if staff.must_change_password else safe_next(next))
    _set_cookie(response, cookie, settings)
    return response


@router.post("/logout")
def logout(request: Request, user: SignedIn) -> Response:
    end_session(request.cookies.get(COOKIE, ""), utcnow())
    audit("signed_out", user.staff.username, source(request))
    response = see_other(f"{LOGIN_PATH}?bye=1")
    response.delete_cookie(COOKIE, path=PREFIX)
    return response


@router.get("/password")
def password_page(request: Request, user: SignedIn) -> HTMLResponse:
    return render(request, "password.html", user=user)


@router.post("/password")
async def change_password(
    request: Request, user: SignedIn, current: Secret, new: Secret, again: Secret
) -> Response:
    settings: Settings = request.app.state.settings
    policy = LockoutPolicy(settings.console_lockout_failures, settings.console_lockout_minutes)
    errors: list[str] = []
    if new != again:
        errors.append("两次输入的新密码不一致")
    else:
        try:
            await run_in_threadpool(check_password, user.staff.username, current, now=utcnow(), policy=policy)
        except (SignInFailed, AccountLocked):
            errors.append("当前密码不正确")
    if not errors:
        try:
            await run_in_threadpool(_change, user, new)
        except PasswordRejected as exc:
            errors.extend(exc.detail.split("；"))
    if errors:
        return render(request, "password.html", {"errors": errors}, user=user, status_code=422)
    audit("password_changed", user.staff.username, source(request))
    # Every session of the account ended with the change: this browser gets a new one.
    assert user.staff.id is not None
    cookie = await run_in_threadpool(start_session, user.staff.id, utcnow())
    response = see_other(f"{PREFIX}/")
    _set_cookie(response, cookie, settings)
    return response


def _change(user: ConsoleUser, new: str) -> None:
    assert user.staff.id is not None
    set_password(user.staff.id, new, must_change=False, now=utcnow())


@router.get("/")
def home(request: Request, user: SignedIn) -> HTMLResponse:
    node = request.app.state.signer  # its code and name only (NodeSigner)
    return render(request, "home.html", {"node_id": node.node_id, "node_name": node.name}, user=user)
