"""``perkbridge schedule``: run the sync, write-back and reconcile jobs in the foreground."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import typer

from bridge.cli import common

if TYPE_CHECKING:
    from sqlalchemy import Engine

    from config import Settings


def register(app: typer.Typer) -> None:
    """Add ``schedule`` to ``app``."""

    @app.command("schedule")
    def schedule(
        status: bool = typer.Option(
            False, "--status", help="Print each job's last success, last failure and next run, then exit."
        ),
        json_output: bool = typer.Option(False, "--json", help="Machine-readable output."),
    ) -> None:
        """Run the scheduler in the foreground (SIGTERM: finish the current page, commit, exit 0).

        Jobs per business (schedule.businesses, else PERKVILLE_BUSINESS_ID): sync every schedule.sync_interval_minutes, write-back every schedule.writeback_interval_seconds when enabled, reconcile on schedule.reconcile_cron.

        One scheduler per database: for several processes or machines, use perkbridge worker (PostgreSQL).  See docs/scheduling.md.
        """
        from config import ConfigError
        from perkamo_core.db import create_db_engine

        settings = common.settings()
        engine = create_db_engine(settings.database_url)
        try:
            if status:
                _print_status(engine, json_output)
                return
            configure_logging(json_output, settings.log_format)
            import faulthandler
            import signal

            # Operators (and tests) can ask a stuck worker where it is: kill -USR1 PID.
            faulthandler.register(signal.SIGUSR1, all_threads=True)
            config_file = common.STATE.config_file
            if config_file is not None:
                config_file = str(Path(config_file).resolve())
            try:
                run_single(settings, engine, config_file=config_file)
            except ConfigError as exc:
                common.fail(str(exc), common.EXIT_CONFIG)
            except SchedulerRunningError as exc:
                common.fail(str(exc), common.EXIT_FAILURE)
        finally:
            engine.dispose()


class SchedulerRunningError(Exception):
    """Another ``perkbridge schedule`` process already runs against this database."""


def run_single(settings: Settings, engine: Engine, *, config_file: str | None) -> None:
    """The embedded scheduler: every configured business's jobs in this one process, until
    SIGTERM/SIGINT (the running jobs commit their page first)."""
    from datetime import timedelta

    from bridge.queue.ops import live_workers
    from bridge.scheduler import SchedulerRuntime, default_worker_name, prepare_database, run_scheduler
    from bridge.state import LeaseKeeper, LeaseStore, new_owner_id
    from bridge.state.jobs import SCHEDULER_LEASE
    from bridge.wiring import scheduled_businesses

    scheduled_businesses(settings)  # ConfigError before anything starts
    prepare_database(engine)
    workers = live_workers(engine, settings.schedule.stalled_after_seconds)
    if workers:
        raise SchedulerRunningError(
            f"{workers} perkbridge worker processes run against this database: they run the scheduled "
            "jobs; stop them before using perkbridge schedule, or keep to workers"
        )
    store = LeaseStore(engine)
    ttl = timedelta(seconds=settings.schedule.lease_seconds)
    lease = store.try_acquire(SCHEDULER_LEASE, new_owner_id(), ttl)
    if lease is None:
        holder = next((held.owner for held in store.all() if held.name == SCHEDULER_LEASE), "?")
        raise SchedulerRunningError(
            f"perkbridge schedule already runs against this database ({holder}); one scheduler per "
            "database: to share the work between processes or machines use perkbridge worker "
            "(PostgreSQL, docs/scheduling.md)"
        )
    runtime = SchedulerRuntime(worker=default_worker_name(), engine=engine)
    try:
        with LeaseKeeper(store, lease, ttl):
            run_scheduler(settings, engine, runtime, config_file=config_file)
    finally:
        store.release(SCHEDULER_LEASE, lease.owner)


def configure_logging(json_output: bool, log_format: str) -> None:
    root = logging.getLogger()
    if (json_output or log_format == "json") and common.STATE.log_format != "json":
        common.configure_logging("json")
    if common.STATE.log_format != "json":
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        root.addHandler(handler)
    root.setLevel(logging.INFO)
    for noisy in ("apscheduler", "procrastinate", "httpx", "httpcore"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _print_status(engine: Engine, json_output: bool) -> None:
    from bridge.scheduler import job_statuses

    rows = job_statuses(engine)
    if json_output:
        common.print_json({"jobs": rows})
        return
    if not rows:
        typer.echo("no scheduled jobs have run against this database yet")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("job", "worker", "last success", "last failure", "last error", "next run")

    def fmt(value: object) -> str:
        return value.isoformat(timespec="seconds") if hasattr(value, "isoformat") else str(value or "")

    for row in rows:
        table.add_row(
            row["job_id"],
            str(row.get("worker") or ""),
            fmt(row.get("last_success_at")),
            fmt(row.get("last_failure_at")),
            str(row.get("last_error") or ""),
            fmt(row.get("next_run_at")),
        )
    console = Console()
    if not console.is_terminal:
        console = Console(width=100_000)  # a pipe or a file gets whole rows, never cut to 80 columns
    console.print(table)
