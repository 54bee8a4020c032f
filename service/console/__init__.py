"""The staff web console (控制台): Chinese pages under /console over the same services as the staff API.

``install(app)`` adds the pages, the static files, the CSRF middleware and the console's error
pages. Each page module is thin: it reads the form, calls a service function, renders a template.
"""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.middleware import Middleware

from service.clock import utcnow
from service.config import Settings
from service.console import account, admin, cases, outgoing, pending, people
from service.console import stats as stats_pages
from service.console import warnings as early_warnings
from service.console.auth import (
    COOKIE,
    PREFIX,
    ConsoleForbidden,
    ConsoleUser,
    LoginRequired,
    csrf_middleware,
    find_session,
    login_url,
)
from service.console.templating import HERE, render

ERRORS = {
    400: ("请求有误", "提交的内容无法处理，请检查后重试。"),
    401: ("请先登录", "登录已失效，请重新登录。"),
    403: ("无权访问", "您的角色无权打开此页面或执行此操作。"),
    404: ("页面不存在", "您要找的页面不存在，或记录已不存在。"),
    405: ("请求有误", "此页面不接受这种请求。"),
    408: ("提交超时", "提交的内容未能在规定时间内传完，请检查网络后重试。"),
    409: ("操作冲突", "该事项已被他人或在其他标签页中处理，请刷新后查看最新状态。"),
    413: ("内容过大", "提交的内容超过了允许的大小。"),
    422: ("填写有误", "提交的内容未通过校验，请检查后重试。"),
    429: ("操作太频繁", "请稍后再试。"),
    503: ("系统繁忙", "系统正忙，请稍后再试。"),
}


_UNEXPECTED = ("出错了", "系统未能完成此操作，错误已记录，请稍后再试或联系管理员。")


def is_console(request: Request) -> bool:
    return request.url.path == PREFIX or request.url.path.startswith(PREFIX + "/")


def _signed_in(request: Request) -> ConsoleUser | None:
    """Who is signed in, for the menu of an error page; None if unknown or the database is down."""
    cookie = request.cookies.get(COOKIE)
    if not cookie:
        return None
    try:
        return find_session(cookie, utcnow(), request.app.state.settings)
    except Exception:  # an error page must render whatever the database does
        return None


def error_page(
    request: Request, status: int, headers: dict[str, str] | None = None, message: str | None = None
) -> Response:
    """The console's answer for an error the API would answer with problem+json (with the menu
    of whoever is signed in, so they can go on from it); ``message`` in place of the status's own."""
    title, default = ERRORS.get(status, _UNEXPECTED)
    message = message or default
    user = _signed_in(request) if status < 500 else None
    context = {"title": title, "message": message}
    response = render(request, "error.html", context, user=user, status_code=status)
    for key in ("Retry-After", "Allow"):
        if headers and key in headers:
            response.headers[key] = headers[key]
    return response


def _login_required(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LoginRequired)
    target = exc.next_path if exc.next_path.endswith("/password") else login_url(exc.next_path)
    if request.headers.get("HX-Request"):  # htmx: the whole page goes to the sign-in form
        return Response(status_code=204, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def _forbidden(request: Request, _exc: Exception) -> Response:
    return error_page(request, 403)


def middleware(settings: Settings) -> Middleware:
    return Middleware(csrf_middleware(settings))


def install(app: FastAPI) -> None:
    app.include_router(account.router)
    app.include_router(pending.router)
    app.include_router(cases.router)
    app.include_router(people.router)
    app.include_router(outgoing.router)
    app.include_router(admin.router)
    app.include_router(stats_pages.router)
    app.include_router(early_warnings.router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.add_exception_handler(LoginRequired, _login_required)
    app.add_exception_handler(ConsoleForbidden, _forbidden)

    @app.get(PREFIX, include_in_schema=False)
    def console_root() -> RedirectResponse:
        return RedirectResponse(f"{PREFIX}/", status_code=308)
