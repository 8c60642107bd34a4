"""Signing in and out, and the two guards every page uses: ``current_session`` and ``checked_form``.

An operator signs in with a server key of the bridge's Space holding ``admin:config`` or
``dashboard``. The key is checked once, then forgotten: the session cookie names the key by id,
and every request checks that key is still unrevoked, so revoking it ends its sessions.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated
from urllib.parse import parse_qs, quote

from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import RedirectResponse, Response

from bridge.dashboard.context import dashboard_of
from bridge.dashboard.sessions import COOKIE_NAME, DASHBOARD_SCOPES, Session
from bridge.dashboard.web import SECURITY_HEADERS, render
from perkamo_core.errors import AuthenticationError
from perkamo_core.models import ApiKeyInfo

if TYPE_CHECKING:
    from perkamo_core.service import CoreService

MAX_FORM_BYTES = 1 << 20
LOGIN_PATH = "/dashboard/login"

router = APIRouter()


class NotSignedIn(Exception):
    """No valid session: pages redirect to sign-in, anything else answers 401 (``app.py``)."""


class BadForm(Exception):
    """A POST whose CSRF token is missing or wrong, or whose body is not a form: 403, nothing done."""


def may_watch(info: ApiKeyInfo) -> bool:
    """Whether a key may sign in to the dashboard and read ``/metrics`` beyond loopback."""
    return bool(info.scopes & DASHBOARD_SCOPES)


def scrape_check(service: CoreService) -> Callable[[str], bool]:
    """``/metrics``' check of a Bearer key: an unrevoked key that ``may_watch``."""

    def allowed(key: str) -> bool:
        try:
            return may_watch(service.authenticate(key))
        except AuthenticationError:
            return False

    return allowed


def current_session(request: Request) -> Session:
    """The request's session (also ``request.state.session``); ``NotSignedIn`` without a valid one."""
    dashboard = dashboard_of(request)
    session = dashboard.signer.read(request.cookies.get(COOKIE_NAME), dashboard.clock())
    if session is None:
        raise NotSignedIn()
    key = dashboard.service.active_key(session.key_id)
    if key is None or key.space != session.space or not may_watch(key):
        raise NotSignedIn()  # revoked, or no longer allowed in
    request.state.session = session
    return session


SessionDep = Annotated[Session, Depends(current_session)]


async def read_form(request: Request) -> dict[str, list[str]]:
    """An ``application/x-www-form-urlencoded`` body (``BadForm`` for anything else or too large)."""
    kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if kind != "application/x-www-form-urlencoded":
        raise BadForm("expected a form")
    body = await request.body()
    if len(body) > MAX_FORM_BYTES:
        raise BadForm("form too large")
    try:
        return parse_qs(body.decode("utf-8"), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError:
        raise BadForm("form is not UTF-8") from None


async def checked_form(request: Request, session: SessionDep) -> dict[str, list[str]]:
    """The POSTed form of a signed-in operator, once its ``csrf_token`` field is checked."""
    form = await read_form(request)
    token = next(iter(form.get("csrf_token", [])), None)
    if not dashboard_of(request).signer.csrf_ok(session, token):
        raise BadForm("missing or wrong CSRF token")
    return form


FormDep = Annotated[dict[str, list[str]], Depends(checked_form)]


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a dashboard path only (never another site)."""
    if target and target.startswith("/dashboard") and not target.startswith("//") and "\\" not in target:
        return target
    return "/dashboard"


def login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"{LOGIN_PATH}?next={quote(target, safe='')}", status_code=303, headers=SECURITY_HEADERS)


@router.get(LOGIN_PATH)
def login_page(request: Request, after: Annotated[str | None, Query(alias="next")] = None) -> Response:
    return render(request, "login.html", next=safe_next(after), error=None)


@router.post(LOGIN_PATH)
async def login(request: Request) -> Response:
    dashboard = dashboard_of(request)
    try:
        form = await read_form(request)
    except BadForm:
        form = {}
    key = (form.get("key") or [""])[0].strip()
    target = safe_next(next(iter(form.get("next", [])), None))
    error: str | None = None
    info = None
    if not key:
        error = "Enter a server key."
    else:
        try:
            info = dashboard.service.authenticate(key)
        except AuthenticationError:
            error = "That key is not a valid, unrevoked server key of this bridge."
    if info is not None and not may_watch(info):
        error = "That key has neither the admin:config nor the dashboard scope."
    elif info is not None and info.space != dashboard.space:
        error = f"That key belongs to Space {info.space}; this dashboard shows Space {dashboard.space}."
    if error is not None or info is None:
        return render(request, "login.html", status_code=401, next=target, error=error)
    _, cookie = dashboard.signer.issue(info.key_id, info.space, dashboard.clock())
    response = RedirectResponse(target, status_code=303, headers=SECURITY_HEADERS)
    response.set_cookie(
        COOKIE_NAME, cookie, max_age=dashboard.signer.ttl_seconds, path="/dashboard",
        httponly=True, samesite="strict", secure=request.url.scheme == "https",
    )
    return response


@router.post("/dashboard/logout")
def logout(request: Request, form: FormDep) -> Response:
    response = RedirectResponse(LOGIN_PATH, status_code=303, headers=SECURITY_HEADERS)
    response.delete_cookie(COOKIE_NAME, path="/dashboard", httponly=True, samesite="strict")
    return response
