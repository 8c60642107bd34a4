"""Puts the dashboard on a FastAPI app: its routers, its static files, and the answers to a
request without a session (a page: to sign-in; anything else: 401) or with a bad form (403)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib.resources import files
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from fastapi.staticfiles import StaticFiles
from sqlalchemy import Engine
from starlette.concurrency import run_in_threadpool

from bridge.dashboard import auth, deadletters, overview, reconcile, runs
from bridge.dashboard.auth import BadForm, NotSignedIn, login_redirect
from bridge.dashboard.context import Dashboard
from bridge.dashboard.sessions import SessionSigner
from bridge.dashboard.web import SECURITY_HEADERS
from bridge.state import StateStore

if TYPE_CHECKING:
    from config.settings import Settings
    from perkamo_core.service import CoreService

ROUTERS: list[APIRouter] = [auth.router, overview.router, runs.router, deadletters.router, reconcile.router]
"""Every page module's router; a new page adds its own here."""


def make_dashboard(engine: Engine, service: CoreService, settings: Settings) -> Dashboard:
    """The dashboard's parts over a migrated state database and core."""
    secret = settings.dashboard_secret.get_secret_value() if settings.dashboard_secret is not None else None
    signer = SessionSigner.from_setting(secret, ttl_seconds=settings.serve.session_minutes * 60)
    return Dashboard(engine=engine, state=StateStore(engine), service=service, settings=settings, signer=signer)


def mount(app: Any, dashboard: Dashboard) -> None:
    """Serve the dashboard under ``/dashboard`` on the FastAPI ``app``."""
    app.state.dashboard = dashboard
    _stop_background_runs_on_shutdown(app, dashboard)
    for router in ROUTERS:
        app.include_router(router, include_in_schema=False)
    static = files("bridge.dashboard") / "static"
    app.mount("/dashboard/static", StaticFiles(directory=str(static)), name="dashboard-static")

    async def not_signed_in(request: Request, exc: Exception) -> Response:
        wants_page = request.method in ("GET", "HEAD") and not request.url.path.endswith((".json", ".csv", ".zip"))
        if wants_page:
            return login_redirect(request)
        return Response(status_code=401, headers=SECURITY_HEADERS)

    async def bad_form(request: Request, exc: Exception) -> Response:
        return Response(
            f"refused: {exc}; nothing was changed. Reload the page and try again.\n",
            status_code=403, media_type="text/plain", headers=SECURITY_HEADERS,
        )

    app.add_exception_handler(NotSignedIn, not_signed_in)
    app.add_exception_handler(BadForm, bad_form)


def _stop_background_runs_on_shutdown(app: Any, dashboard: Dashboard) -> None:
    """The app's lifespan, then the dashboard's background runs stopped and waited for."""
    previous = app.router.lifespan_context

    @asynccontextmanager
    async def lifespan(served: Any) -> AsyncIterator[Any]:
        async with previous(served) as state:
            try:
                yield state
            finally:
                await run_in_threadpool(dashboard.background.stop_all)

    app.router.lifespan_context = lifespan
