"""``perkbridge worker``: a Procrastinate worker running the jobs of the configured businesses."""

from __future__ import annotations

from pathlib import Path

import typer

from bridge.cli import common


def register(app: typer.Typer) -> None:
    """Add ``worker`` to ``app``."""

    @app.command("worker")
    def worker(
        concurrency: int = typer.Option(
            None, "--concurrency", min=1, max=64, help="Jobs run at once (default schedule.worker_concurrency)."
        ),
        name: str = typer.Option(None, "--name", help="This worker's name in logs and runs (default host:pid)."),
        json_output: bool = typer.Option(False, "--json", help="Log as JSON lines."),
    ) -> None:
        """Run a queue worker in the foreground (PostgreSQL; SIGTERM: finish the page, commit, exit 0).

        Start as many as you like, on any machine, against one database: each defers the periodic
        sync, write-back and reconcile of every configured business (once per period, whichever
        worker gets there first) and runs whatever job is due, backfills from backfill --enqueue
        included.  See docs/scheduling.md, "Workers".
        """
        from bridge.errors import ConfigurationError
        from bridge.queue.app import conninfo
        from bridge.wiring import open_engine
        from config import ConfigError

        settings = common.settings()
        try:
            conninfo(settings.database_url)
        except ConfigurationError as exc:
            common.fail(str(exc), common.EXIT_CONFIG)
        from bridge.cli.schedule_cmd import configure_logging

        configure_logging(json_output, settings.log_format)
        import faulthandler
        import signal

        faulthandler.register(signal.SIGUSR1, all_threads=True)
        from bridge.queue.worker import run_worker

        config_file = common.STATE.config_file
        if config_file is not None:
            config_file = str(Path(config_file).resolve())
        threads = concurrency or settings.schedule.worker_concurrency
        with common.bridge_errors():
            # Every running job holds a connection or two of its own (state, core): the pool grows
            # with the concurrency (up to twice pool_size with its overflow).
            engine = open_engine(settings, pool_size=max(5, threads + 1))
            try:
                outcome = run_worker(
                    settings, engine, config_file=config_file, name=name, concurrency=concurrency
                )
            except ConfigError as exc:
                common.fail(str(exc), common.EXIT_CONFIG)
            finally:
                engine.dispose()
        if outcome.signal is None:
            common.fail(
                "the worker stopped without being asked (its connection to the queue failed; see the log "
                "above); its running jobs committed their page, and other workers retry what it held",
                common.EXIT_FAILURE,
            )
        typer.echo(f"worker stopped by {outcome.signal}; nothing half-written", err=True)
