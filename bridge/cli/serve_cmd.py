"""``perkbridge serve``: the Perkamo v1 HTTP API over the embedded core, served by uvicorn."""

from __future__ import annotations

import errno
import socket
from typing import Any

import typer

from bridge.cli import common

AUTH_CACHE_SECONDS = 1.0
"""How long a successful key check is remembered: a revoked key stops working within this time."""


def build_app(
    database_url: str, *, rate_limit: int | None, require_signatures: bool, metrics: bool = False
) -> Any:
    """The FastAPI app over a migrated core on ``database_url`` (also used by ``bench/``).

    With ``metrics``, ``GET /metrics`` answers in the Prometheus text format (``bridge.metrics``).
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
    if metrics:
        from bridge import metrics as prometheus
        from bridge.wiring import open_state

        open_state(engine)  # the bridge's tables, so a scrape before any run reads empty ones
        prometheus.install(app, engine)
    return app


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
    sock = socket.socket(family, socket.SOCK_STREAM)
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


def register(app: typer.Typer) -> None:
    """Add ``serve`` to ``app``."""

    @app.command()
    def serve(
        host: str = typer.Option("127.0.0.1", "--host", help="Interface to listen on."),
        port: int = typer.Option(4001, "--port", min=0, max=65535, help="TCP port (4001 is the documented local default)."),
        access_log: bool = typer.Option(True, "--access-log/--no-access-log", help="Log one line per request."),
        log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
        as_json: bool = typer.Option(False, "--json", help="Print the listening address as one JSON line first."),
    ) -> None:
        """Serve the Perkamo v1 HTTP API over the embedded core (keys: `perkbridge keys create`)."""
        import uvicorn

        from perkamo_core.db import UnsupportedDatabaseError

        cfg = common.settings()
        try:
            listener = bind_listener(host, port)
        except OSError as exc:
            common.fail(_bind_error(host, port, exc), common.EXIT_FAILURE)
        try:
            api = build_app(
                cfg.database_url,
                rate_limit=cfg.serve.rate_limit_per_minute,
                require_signatures=cfg.serve.require_signatures,
                metrics=cfg.serve.metrics,
            )
        except ValueError as exc:
            listener.close()
            if isinstance(exc, UnsupportedDatabaseError):
                common.fail_database(exc)
            common.fail(f"cannot open the database {_display_url(cfg.database_url)}: {exc}", common.EXIT_CONFIG)
        port = listener.getsockname()[1]  # the port the system chose for --port 0
        url = f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"
        if as_json:
            common.print_json(
                {
                    "status": "starting",
                    "url": url,
                    "database": _display_url(cfg.database_url),
                    "rate_limit_per_minute": cfg.serve.rate_limit_per_minute,
                    "require_signatures": cfg.serve.require_signatures,
                    "metrics": f"{url}/metrics" if cfg.serve.metrics else None,
                },
                indent=None,
            )
        else:
            common.diagnostic(f"perkbridge serve: Perkamo v1 API on {url} (database {_display_url(cfg.database_url)})")
        # Under PERKBRIDGE_LOG_FORMAT=json uvicorn keeps its hands off logging: its records reach
        # the root logger's JSON handler instead of its own plain-text formatters.
        from uvicorn.config import LOGGING_CONFIG

        log_config = None if common.STATE.log_format == "json" else LOGGING_CONFIG
        config = uvicorn.Config(
            api, host=host, port=port, access_log=access_log, log_level=log_level, log_config=log_config
        )
        uvicorn.Server(config).run(sockets=[listener])
