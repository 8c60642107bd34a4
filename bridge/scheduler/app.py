"""The scheduler itself: APScheduler in the foreground, its job store, SIGTERM handling."""


from __future__ import annotations

import logging
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from threading import TIMEOUT_MAX
from types import FrameType
from typing import Any

# APScheduler 3.x ships no type information (import-untyped).
from apscheduler.events import (
    EVENT_JOB_ERROR,
    EVENT_JOB_EXECUTED,
    EVENT_SCHEDULER_STARTED,
    JobEvent,
    SchedulerEvent,
)
from apscheduler.executors.pool import ThreadPoolExecutor
from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.base import STATE_STOPPED
from apscheduler.schedulers.blocking import BlockingScheduler
from sqlalchemy import (
    Column,
    Engine,
    Float,
    MetaData,
    String,
    Table,
    delete,
    select,
)

from bridge.scheduler.runtime import (
    SchedulerRuntime,
    installed_runtime,
    run_scheduled_job,
)
from bridge.scheduler.triggers import build_triggers
from bridge.state.jobs import (
    JOB_ID_PREFIX,
    JOBSTORE_TABLE,
    migrate_scheduler,
    parse_job_id,
    record_next_run,
)
from config import Settings

log = logging.getLogger("perkbridge.schedule")



class ForegroundScheduler(BlockingScheduler):  # type: ignore[misc]
    """``BlockingScheduler`` whose loop leaves at once after ``shutdown``.

    The stock loop processes due jobs once more after being woken by ``shutdown``, which would
    submit them to an executor that is already shut down.
    """

    def _main_loop(self) -> None:
        wait_seconds: float | None = TIMEOUT_MAX
        while self.state != STATE_STOPPED:
            self._event.wait(wait_seconds)
            self._event.clear()
            if self.state == STATE_STOPPED:
                break
            wait_seconds = self._process_jobs()


def _jobstore_engine(engine: Engine) -> Engine:
    """The engine the job store uses: on SQLite its transactions begin ``DEFERRED``.

    The job store opens a transaction even to read due jobs; with the project's default
    ``BEGIN IMMEDIATE`` the scheduler's loop would queue behind every page a job is writing,
    and a blocked main thread cannot even run the SIGTERM handler.
    """
    if engine.dialect.name == "sqlite":
        return engine.execution_options(sqlite_begin="DEFERRED")
    return engine


def build_scheduler(
    settings: Settings,
    engine: Engine,
    *,
    config_file: str | None,
    start: datetime | None = None,
) -> ForegroundScheduler:
    """A scheduler with every job of the configured businesses (nothing runs until ``start``).

    APScheduler job stores must not be shared between schedulers: one ``perkbridge schedule``
    per database (several processes: ``perkbridge worker``)."""
    triggers = build_triggers(settings, start=start)
    scheduler = ForegroundScheduler(
        jobstores={
            "default": SQLAlchemyJobStore(
                engine=_jobstore_engine(engine), tablename=JOBSTORE_TABLE
            )
        },
        executors={"default": ThreadPoolExecutor(max_workers=max(2, min(8, len(triggers))))},
        job_defaults={
            "coalesce": True,
            "max_instances": 1,
            "misfire_grace_time": settings.schedule.misfire_grace_seconds,
        },
        timezone=UTC,
    )
    for job, trigger in triggers.items():
        kind, business_id = parse_job_id(job)
        scheduler.add_job(
            run_scheduled_job,
            trigger=trigger,
            args=(kind, business_id, config_file),
            id=job,
            name=f"{kind} {business_id}",
            replace_existing=True,
        )
    return scheduler


def create_jobstore_table(engine: Engine, table: str) -> None:
    """Create the job store's table (if missing) in a writing transaction, before the scheduler
    starts.

    APScheduler would create it itself on ``start()``, through the job store's engine, whose SQLite
    transactions begin ``DEFERRED``: its "does the table exist?" read followed by the
    ``CREATE TABLE`` then has to turn a read transaction into a write one, which SQLite refuses at
    once ("database is locked", no busy wait) when another connection wrote in between.  The
    project engine's ``BEGIN IMMEDIATE`` takes the write lock first (waiting its turn), so the
    check and the creation cannot be overtaken; the job store then finds the table there.
    """
    SQLAlchemyJobStore(engine=engine, tablename=table).jobs_t.create(engine, checkfirst=True)


def remove_stale_jobs(engine: Engine, table: str, keep: Sequence[str]) -> list[str]:
    """Delete stored jobs this configuration no longer defines (a business was dropped)."""
    with engine.begin() as conn:
        if not engine.dialect.has_table(conn, table):
            return []
        jobs = Table(table, MetaData(), Column("id", String(191), primary_key=True))
        stale = [
            row[0]
            for row in conn.execute(select(jobs.c.id))
            if row[0] not in keep and row[0].startswith(f"{JOB_ID_PREFIX}:")
        ]
        if stale:
            conn.execute(delete(jobs).where(jobs.c.id.in_(stale)))
    return stale


def stored_next_run(engine: Engine, table: str, job: str) -> datetime | None:
    """A job's next run time as the job store holds it (read without the scheduler's locks)."""
    jobs = Table(table, MetaData(), Column("id", String(191)), Column("next_run_time", Float))
    with engine.connect() as conn:
        value = conn.execute(select(jobs.c.next_run_time).where(jobs.c.id == job)).scalar()
    return None if value is None else datetime.fromtimestamp(float(value), UTC)


def _status_listener(engine: Engine, table: str) -> Callable[[JobEvent], None]:
    # Never call back into the scheduler here: shutdown(wait=True) holds the job-store lock
    # while it waits for the very job whose completion fires this listener.
    def listener(event: JobEvent) -> None:
        try:
            record_next_run(engine, event.job_id, stored_next_run(engine, table, event.job_id))
        except Exception:  # the status table must never take the scheduler down
            log.warning("could not record the next run of %s", event.job_id, exc_info=True)

    return listener


@dataclass(frozen=True)
class ScheduleOutcome:
    """How ``run_scheduler`` ended."""

    signal: str | None
    jobs: tuple[str, ...]


def run_scheduler(
    settings: Settings,
    engine: Engine,
    runtime: SchedulerRuntime,
    *,
    config_file: str | None,
    install_signals: bool = True,
    on_started: Callable[[ForegroundScheduler], None] | None = None,
) -> ScheduleOutcome:
    """Run the jobs in the foreground until SIGTERM/SIGINT or ``runtime.stop`` is set.

    On a signal the stop flag is set first, so running jobs finish their current page, commit
    and return; then the scheduler shuts down waiting for them and this function returns.
    """
    migrate_scheduler(engine)
    scheduler = build_scheduler(settings, engine, config_file=config_file)
    received: list[str] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        # Signal-safe: only set flags; the watcher thread does the shutdown.
        received.append(signal.Signals(signum).name)
        runtime.stop.set()

    previous: dict[int, Any] = {}
    if install_signals:
        for wanted in (signal.SIGTERM, signal.SIGINT):
            previous[int(wanted)] = signal.signal(wanted, on_signal)

    watcher_done = threading.Event()

    def watch_stop_flag() -> None:
        # Started once the scheduler runs; a signal or an in-process stop request ends up here.
        while not watcher_done.wait(0.1):
            if runtime.stop.is_set():
                log.info("stop requested: letting the running jobs finish their page")
                try:
                    scheduler.shutdown(wait=True)
                except Exception:
                    log.debug("scheduler already stopped", exc_info=True)
                return

    watcher = threading.Thread(target=watch_stop_flag, name="perkbridge-stopwatch", daemon=True)
    scheduler.add_listener(
        _status_listener(_jobstore_engine(engine), JOBSTORE_TABLE),
        # Both are dispatched from the executor thread, never blocking the scheduler loop.
        EVENT_JOB_EXECUTED | EVENT_JOB_ERROR,
    )
    create_jobstore_table(engine, JOBSTORE_TABLE)
    keep = list(build_triggers(settings).keys())
    for removed in remove_stale_jobs(engine, JOBSTORE_TABLE, keep):
        log.info("removed job %s: its business is no longer configured", removed)

    def on_scheduler_started(_event: SchedulerEvent) -> None:
        # Runs inside start(), after the job store holds the (replaced) jobs.  The watcher
        # starts first: whatever fails below, SIGTERM must still stop the process.
        watcher.start()
        try:
            for job in scheduler.get_jobs():
                record_next_run(engine, job.id, job.next_run_time)
        except Exception:
            log.warning("could not record the jobs' next runs", exc_info=True)
        if on_started is not None:
            on_started(scheduler)

    scheduler.add_listener(on_scheduler_started, EVENT_SCHEDULER_STARTED)
    try:
        with installed_runtime(runtime):
            scheduler.start()  # blocks until shutdown
    finally:
        watcher_done.set()
        if watcher.is_alive():
            watcher.join()
        for number, handler in previous.items():
            signal.signal(number, handler)
    return ScheduleOutcome(received[0] if received else None, tuple(keep))

