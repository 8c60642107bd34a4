"""``perkbridge serve``: the Perkamo v1 HTTP API over the embedded core, served by uvicorn."""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import typer

from bridge.cli import common

if TYPE_CHECKING:
    from config.settings import Settings

AUTH_CACHE_SECONDS = 1.0
"""How long a successful key check is remembered: a revoked key stops working within this time."""


def build_app(
    database_url: str,
    *,
    rate_limit: int | None,
    require_signatures: bool,
    metrics: bool = False,
    dashboard: Settings | None = None,
    loopback: bool = True,
) -> Any:
    """The FastAPI app over a migrated core on ``database_url`` (also used by ``bench/``).

    With ``metrics``, ``GET /metrics`` answers in the Prometheus text format (``bridge.metrics``):
    to anyone when ``loopback``, else only to a key with the ``dashboard`` or ``admin:config``
    scope. With ``dashboard`` (the settings it reads), the operator's pages answer under
    ``/dashboard`` (``bridge.dashboard``).
    """
    from perkamo_core.api import create_app
    from perkamo_core.db import create_db_engine
    from perkamo_core.service import CoreService

    engine = create_db_engine(database_url)
    service = CoreService(engine)
    service.migrate()
    app = create_app(
        service,
        rate_limit=rate_limit,
        require_signatures=require_signatures,
        auth_cache_seconds=AUTH_CACHE_SECONDS,
    )
    if metrics or dashboard is not None:
        from bridge.wiring import open_state

        open_state(engine)  # the bridge's tables, so a page or scrape before any run reads empty ones
    if dashboard is not None:
        from bridge.dashboard.app import make_dashboard, mount

        mount(app, make_dashboard(engine, service, dashboard))
    if metrics:
        from bridge import metrics as prometheus
        from bridge.dashboard.auth import scrape_check

        prometheus.install(app, engine, authorize=None if loopback else scrape_check(service))
    return app


def is_loopback(host: str) -> bool:
    """Whether ``host`` (as given to ``--host``) is a loopback address or ``localhost``."""
    import ipaddress

    if host.strip().lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def _display_url(database_url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(database_url).render_as_string(hide_password=True)
    except Exception:  # an unparsable URL is reported by the engine; never echo it raw
        return "<database url>"


def bind_listener(host: str, port: int) -> socket.socket:
    """A TCP socket listening on ``host:port`` (bound as uvicorn binds it); ``OSError`` when it cannot be had.

    ``serve`` binds before it announces anything, so a busy port is reported instead of a
    "serving on" line followed by a failure.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio switches Nagle off (TCP_NODELAY) only on accepted
    # sockets whose proto says TCP. With Nagle on, a keep-alive client waited ~40 ms (a delayed
    # ACK) for every response written in two parts.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # from here connections queue until uvicorn accepts them
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def _bind_error(host: str, port: int, exc: OSError) -> str:
    where = f"{host}:{port}"
    if exc.errno == errno.EADDRINUSE:
        return f"cannot serve on {where}: the port is already in use; stop the other server or choose another --port"
    if exc.errno == errno.EACCES:
        return f"cannot serve on {where}: permission denied; choose a --port above 1023"
    if exc.errno == errno.EADDRNOTAVAIL or isinstance(exc, socket.gaierror):
        return f"cannot serve on {where}: no such local address; check --host"
    return f"cannot serve on {where}: {exc.strerror or type(exc).__name__}"


def build_dashboard_app(settings: Settings, *, loopback: bool = True) -> Any:
    """The dashboard alone (``perkbridge dashboard``): ``/dashboard`` and ``/metrics`` over the
    state database and the embedded core of ``settings``, without the v1 API."""
    from fastapi import FastAPI

    from bridge.dashboard.app import make_dashboard, mount
    from bridge.wiring import open_state
    from perkamo_core.db import create_db_engine
    from perkamo_core.service import CoreService

    engine = create_db_engine(settings.database_url)
    service = CoreService(engine)
    service.migrate()
    open_state(engine)
    app = FastAPI(title="perkbridge dashboard", docs_url=None, redoc_url=None, openapi_url=None)
    mount(app, make_dashboard(engine, service, settings))
    if settings.serve.metrics:
        from bridge import metrics as prometheus
        from bridge.dashboard.auth import scrape_check

        prometheus.install(app, engine, authorize=None if loopback else scrape_check(service))
    return app


HostOpt = typer.Option("127.0.0.1", "--host", help="Interface to listen on.")
AccessLogOpt = typer.Option(True, "--access-log/--no-access-log", help="Log one line per request.")
LogLevelOpt = typer.Option("info", "--log-level", help="uvicorn log level.")
JsonFirstOpt = typer.Option(False, "--json", help="Print the listening address as one JSON line first.")


def _run(
    name: str, host: str, port: int, *, access_log: bool, log_level: str, as_json: bool,
    make: Callable[[Settings], Any], announce: Callable[[Settings, str], dict[str, Any]], what: str,
) -> None:
    """Bind, build the app, announce the address, and serve until stopped (``serve``, ``dashboard``)."""
    import uvicorn

    from perkamo_core.db import UnsupportedDatabaseError

    cfg = common.settings()
    try:
        listener = bind_listener(host, port)
    except OSError as exc:
        common.fail(_bind_error(host, port, exc), common.EXIT_FAILURE)
    try:
        api = make(cfg)
    except ValueError as exc:
        listener.close()
        if isinstance(exc, UnsupportedDatabaseError):
            common.fail_database(exc)
        common.fail(f"cannot open the database {_display_url(cfg.database_url)}: {exc}", common.EXIT_CONFIG)
    port = listener.getsockname()[1]  # the port the system chose for --port 0
    url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
    if as_json:
        common.print_json(
            {"status": "starting", "url": url, "database": _display_url(cfg.database_url), **announce(cfg, url)},
            indent=None,
        )
    else:
        common.diagnostic(f"perkbridge {name}: {what} on {url} (database {_display_url(cfg.database_url)})")
    # Under PERKBRIDGE_LOG_FORMAT=json uvicorn keeps its hands off logging: its records reach
    # the root logger's JSON handler instead of its own plain-text formatters.
    from uvicorn.config import LOGGING_CONFIG

    log_config = None if common.STATE.log_format == "json" else LOGGING_CONFIG
    config = uvicorn.Config(
        api, host=host, port=port, access_log=access_log, log_level=log_level, log_config=log_config
    )
    uvicorn.Server(config).run(sockets=[listener])


def register(app: typer.Typer) -> None:
    """Add ``serve`` and ``dashboard`` to ``app``."""

    @app.command()
    def serve(
        host: str = HostOpt,
        port: int = typer.Option(4001, "--port", min=0, max=65535, help="TCP port (4001 is the documented local default)."),
        access_log: bool = AccessLogOpt,
        log_level: str = LogLevelOpt,
        as_json: bool = JsonFirstOpt,
    ) -> None:
        """Serve the Perkamo v1 HTTP API over the embedded core (keys: `perkbridge keys create`),
        with the operator's dashboard under /dashboard and Prometheus metrics on /metrics."""

        def make(cfg: Settings) -> Any:
            return build_app(
                cfg.database_url,
                rate_limit=cfg.serve.rate_limit_per_minute,
                require_signatures=cfg.serve.require_signatures,
                metrics=cfg.serve.metrics,
                dashboard=cfg if cfg.serve.dashboard else None,
                loopback=is_loopback(host),
            )

        def announce(cfg: Settings, url: str) -> dict[str, Any]:
            return {
                "rate_limit_per_minute": cfg.serve.rate_limit_per_minute,
                "require_signatures": cfg.serve.require_signatures,
                "metrics": f"{url}/metrics" if cfg.serve.metrics else None,
                "dashboard": f"{url}/dashboard" if cfg.serve.dashboard else None,
            }

        _run("serve", host, port, access_log=access_log, log_level=log_level, as_json=as_json,
             make=make, announce=announce, what="Perkamo v1 API")

    @app.command()
    def dashboard(
        host: str = HostOpt,
        port: int = typer.Option(4002, "--port", min=0, max=65535, help="TCP port."),
        access_log: bool = AccessLogOpt,
        log_level: str = LogLevelOpt,
        as_json: bool = JsonFirstOpt,
    ) -> None:
        """Serve the operator's dashboard alone (/dashboard, /metrics) on the state database;
        sign in with a key holding the dashboard or admin:config scope."""

        def announce(cfg: Settings, url: str) -> dict[str, Any]:
            return {"dashboard": f"{url}/dashboard", "metrics": f"{url}/metrics" if cfg.serve.metrics else None}

        _run("dashboard", host, port, access_log=access_log, log_level=log_level, as_json=as_json,
             make=lambda cfg: build_dashboard_app(cfg, loopback=is_loopback(host)), announce=announce,
             what="dashboard")
