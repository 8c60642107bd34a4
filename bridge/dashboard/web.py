"""Rendering: the Jinja2 environment of the dashboard's templates, its filters, and ``render``."""

from __future__ import annotations

from datetime import datetime, timezone
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from bridge.dashboard.context import dashboard_of
from bridge.state.members import plain_decimal

SECURITY_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",
    # Only the package's own script and style; no inline script, no third party.
    "Content-Security-Policy": (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
}


def num(value: Any) -> str:
    """A count with thousands separators (``—`` for none)."""
    if value is None or value == "":
        return "—"
    try:
        return f"{int(value):,}"
    except (TypeError, ValueError):
        return str(value)


def points(value: Any) -> str:
    """A points amount as a plain decimal with thousands separators (``—`` for none)."""
    if value is None or value == "":
        return "—"
    try:
        amount = Decimal(str(value))
    except InvalidOperation:
        return str(value)
    text = format(plain_decimal(amount), "f")
    whole, _, fraction = text.lstrip("-").partition(".")
    sign = "-" if text.startswith("-") else ""
    return f"{sign}{int(whole):,}" + (f".{fraction}" if fraction else "")


def duration(ms: Any) -> str:
    """Milliseconds as ``850 ms``, ``12.3 s``, ``4 min 05 s`` or ``2 h 03 min``."""
    if ms is None:
        return "—"
    ms = int(ms)
    if ms < 1000:
        return f"{ms} ms"
    seconds = ms / 1000
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, sec = divmod(int(seconds), 60)
    if minutes < 60:
        return f"{minutes} min {sec:02d} s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours} h {minutes:02d} min"


@cache
def environment() -> Environment:
    env = Environment(
        loader=PackageLoader("bridge.dashboard", "templates"),
        autoescape=select_autoescape(["html", "xml"], default=True),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(num=num, points=points, duration=duration)
    return env


def render(request: Request, template: str, *, status_code: int = 200, **context: Any) -> HTMLResponse:
    """``template`` rendered with ``context``; every template also gets ``session``,
    ``csrf_token``, ``dashboard``, ``path`` and the filter ``when`` (a time in the business's zone)."""
    dashboard = dashboard_of(request)
    session = getattr(request.state, "session", None)

    def when(value: Any, business: str | None = None) -> str:
        if value is None:
            return "—"
        if isinstance(value, str):
            try:
                value = datetime.fromisoformat(value)
            except ValueError:
                return str(value)
        if value.tzinfo is None:
            value = value.replace(tzinfo=timezone.utc)
        shown: datetime = value.astimezone(dashboard.zone(business))
        return shown.strftime("%Y-%m-%d %H:%M:%S %Z")

    body = environment().get_template(template).render(
        session=session,
        csrf_token=dashboard.signer.csrf_token(session) if session is not None else "",
        dashboard=dashboard,
        path=request.url.path,
        when=when,
        **context,
    )
    return HTMLResponse(body, status_code=status_code, headers=SECURITY_HEADERS)
