"""``perkbridge schedule``: APScheduler 3.x jobs per business (sync, write-back, reconcile).

Each configured business gets three jobs with stable ids (``perkbridge:{kind}:{business}``):
the incremental sync on an interval, write-back on a shorter interval when it is enabled, and
the reconcile on a cron.  Jobs live in a ``SQLAlchemyJobStore`` in the project database.
APScheduler pickles a job as a *reference* to a module-level function plus its arguments, so
every job is ``run_scheduled_job(kind, business_id, config_file)``: it builds its own settings,
engine and clients and then calls the same function the CLI calls.

The scheduler runs in the foreground.  SIGTERM (and SIGINT) set a stop flag that the running
jobs check between pages; the scheduler then waits for them to commit and returns, so the
process exits 0 with nothing half-written.  Each job's last success, last failure and next run
are kept in ``scheduler_job_status``; every job execution is one row of ``scheduler_job_runs``.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from threading import TIMEOUT_MAX
from types import FrameType
from typing import Any, Literal

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
from apscheduler.triggers.base import BaseTrigger
from apscheduler.triggers.cron import CronTrigger
from apscheduler.triggers.interval import IntervalTrigger
from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Float,
    Integer,
    MetaData,
    String,
    Table,
    delete,
    select,
    update,
)

from bridge.errors import LeaseHeldError, describe_failure
from bridge.state.schema import as_utc
from bridge.state.sql import upsert
from config import ConfigError, Settings, load_settings
from perkamo_core.migrations import Migration, migrate

log = logging.getLogger("perkbridge.schedule")

JobKind = Literal["sync", "writeback", "reconcile"]
JOB_KINDS: tuple[JobKind, ...] = ("sync", "writeback", "reconcile")
JOB_ID_PREFIX = "perkbridge"
JOBSTORE_TABLE = "apscheduler_jobs"
"""APScheduler's own table (its default name); a worker slot ``n > 1`` uses ``_{n}`` after it."""

# --------------------------------------------------------------------------------------------
# Job ids and triggers (pure)
# --------------------------------------------------------------------------------------------


def job_id(kind: JobKind, business_id: str) -> str:
    """The stable id of one business's job, e.g. ``perkbridge:sync:4242``."""
    return f"{JOB_ID_PREFIX}:{kind}:{business_id}"


def parse_job_id(value: str) -> tuple[JobKind, str]:
    """Inverse of ``job_id``; raises ``ValueError`` for ids this module did not make."""
    prefix, _, rest = value.partition(":")
    kind, _, business_id = rest.partition(":")
    if prefix != JOB_ID_PREFIX or kind not in JOB_KINDS or not business_id:
        raise ValueError(f"not a perkbridge job id: {value!r}")
    return kind, business_id


def scheduled_businesses(settings: Settings) -> list[str]:
    """``schedule.businesses``, else ``PERKVILLE_BUSINESS_ID``; ``ConfigError`` when neither."""
    chosen = [b.strip() for b in settings.schedule.businesses if b.strip()]
    if not chosen and settings.perkville_business_id:
        chosen = [settings.perkville_business_id.strip()]
    if not chosen:
        raise ConfigError(
            "no business to schedule: set schedule.businesses in the config file "
            "or PERKVILLE_BUSINESS_ID"
        )
    return list(dict.fromkeys(chosen))


_DAY_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")


def _crontab_days(field_text: str) -> str:
    """A crontab day-of-week field (0 or 7 = Sunday) as APScheduler 3.x day names.

    APScheduler 3.x numbers days from Monday = 0, so ``from_crontab("0 3 * * 1")`` would run on
    Tuesdays; expanding the field to names keeps the standard crontab meaning.
    """
    if field_text == "*":
        return "*"
    days: set[int] = set()
    for part in field_text.lower().split(","):
        body, _, step_text = part.partition("/")
        step = int(step_text) if step_text else 1
        if body == "*":
            low, high = 0, 6
        elif "-" in body:
            low_text, high_text = body.split("-", 1)
            low, high = _day_number(low_text), _day_number(high_text)
            if high == 0 and low > 0:
                high = 7
        else:
            low = high = _day_number(body)
            if step_text:
                high = 6
        if step < 1 or low > high:
            raise ValueError(f"bad day-of-week {part!r}")
        days.update(day % 7 for day in range(low, high + 1, step))
    return ",".join(_DAY_NAMES[day] for day in sorted(days))


def _day_number(text: str) -> int:
    if text in _DAY_NAMES:
        return _DAY_NAMES.index(text)
    value = int(text)
    if not 0 <= value <= 7:
        raise ValueError(f"day-of-week {value} out of range 0-7")
    return value


def reconcile_trigger(settings: Settings) -> CronTrigger:
    """The nightly reconcile cron, read in ``PERKVILLE_TIMEZONE`` (the business's local night)."""
    expression = settings.schedule.reconcile_cron
    try:
        fields = expression.split()
        if len(fields) != 5:
            raise ValueError(f"wrong number of fields; got {len(fields)}, expected 5")
        minute, hour, day, month, day_of_week = fields
        return CronTrigger(
            minute=minute,
            hour=hour,
            day=day,
            month=month,
            day_of_week=_crontab_days(day_of_week),
            timezone=settings.timezone_info(),
        )
    except ValueError as exc:
        raise ConfigError(
            f"schedule.reconcile_cron {expression!r} is not a valid 5-field crontab "
            f"expression: {exc}"
        ) from None


def build_triggers(
    settings: Settings, *, start: datetime | None = None
) -> dict[str, BaseTrigger]:
    """Every job id of the configured businesses → its trigger; touches nothing.

    ``start`` anchors the interval triggers (default: APScheduler's "now + one interval"), so a
    test can ask each trigger for its next fire times deterministically.
    """
    schedule = settings.schedule
    anchor = start.astimezone(UTC) if start is not None else None
    triggers: dict[str, BaseTrigger] = {}
    for business_id in scheduled_businesses(settings):
        triggers[job_id("sync", business_id)] = IntervalTrigger(
            seconds=schedule.sync_interval_minutes * 60, start_date=anchor, timezone=UTC
        )
        if settings.writeback.enabled:
            triggers[job_id("writeback", business_id)] = IntervalTrigger(
                seconds=schedule.writeback_interval_seconds, start_date=anchor, timezone=UTC
            )
        triggers[job_id("reconcile", business_id)] = reconcile_trigger(settings)
    return triggers


def next_fire_times(trigger: BaseTrigger, now: datetime, count: int) -> list[datetime]:
    """The next ``count`` fire times of ``trigger`` after ``now`` (pure; for tests and status)."""
    times: list[datetime] = []
    previous: datetime | None = None
    current = now
    for _ in range(count):
        fire = trigger.get_next_fire_time(previous, current)
        if fire is None:
            break
        times.append(fire)
        previous = fire
        current = fire
    return times


# --------------------------------------------------------------------------------------------
# Job status tables
# --------------------------------------------------------------------------------------------

_meta = MetaData()

job_status = Table(
    "scheduler_job_status",
    _meta,
    Column("job_id", String(200), primary_key=True),
    Column("kind", String(20), nullable=False),
    Column("business_id", String(100), nullable=False),
    Column("worker", String(200)),
    Column("last_started_at", DateTime(timezone=True)),
    Column("last_finished_at", DateTime(timezone=True)),
    Column("last_outcome", String(20)),
    Column("last_success_at", DateTime(timezone=True)),
    Column("last_failure_at", DateTime(timezone=True)),
    Column("last_error", String(1000)),
    Column("next_run_at", DateTime(timezone=True)),
)

job_runs = Table(
    "scheduler_job_runs",
    _meta,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("job_id", String(200), nullable=False, index=True),
    Column("kind", String(20), nullable=False),
    Column("business_id", String(100), nullable=False, index=True),
    Column("worker", String(200), nullable=False),
    Column("started_at", DateTime(timezone=True), nullable=False),
    Column("finished_at", DateTime(timezone=True)),
    Column("outcome", String(20)),
    Column("detail", String(1000)),
)


def _create_status_tables(conn: Connection) -> None:
    job_status.create(conn)
    job_runs.create(conn)


SCHEDULER_MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "scheduler job status and job runs", _create_status_tables),
)


def migrate_scheduler(engine: Engine) -> None:
    """Apply the scheduler's own migrations (component ``scheduler``)."""
    migrate(engine, "scheduler", SCHEDULER_MIGRATIONS)


def prepare_database(engine: Engine) -> None:
    """Bring the core, the bridge state and the scheduler tables up to date (idempotent)."""
    from bridge.state import StateStore
    from perkamo_core.storage import migrate_core

    migrate_core(engine)
    StateStore(engine).migrate()
    migrate_scheduler(engine)


def _clip(message: str, limit: int = 1000) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def describe_error(exc: BaseException) -> str:
    """A one-line description for the status table: never a traceback, SQL or its parameters."""
    return _clip(describe_failure(exc))


def _upsert_status(conn: Connection, job: str, values: Mapping[str, Any]) -> None:
    # One atomic INSERT … ON CONFLICT: several workers write the same job's row.
    kind, business_id = parse_job_id(job)
    upsert(
        conn,
        job_status,
        {"job_id": job, "kind": kind, "business_id": business_id, **values},
        keys=("job_id",),
        update=tuple(values),
    )


def record_next_run(engine: Engine, job: str, next_run_at: datetime | None) -> None:
    """Store when ``job`` runs next (``None``: paused or removed)."""
    with engine.begin() as conn:
        _upsert_status(conn, job, {"next_run_at": as_utc(next_run_at)})


@dataclass(frozen=True)
class JobRun:
    """One execution of a job, as recorded in ``scheduler_job_runs``."""

    id: int
    job_id: str
    kind: str
    business_id: str
    worker: str
    started_at: datetime
    finished_at: datetime | None
    outcome: str | None
    detail: str | None


def start_job_run(engine: Engine, job: str, worker: str, now: datetime) -> int:
    """Record that ``worker`` started ``job``; returns the run row id."""
    kind, business_id = parse_job_id(job)
    with engine.begin() as conn:
        run_id = conn.execute(
            job_runs.insert()
            .values(job_id=job, kind=kind, business_id=business_id, worker=worker, started_at=now)
            .returning(job_runs.c.id)
        ).scalar_one()
        _upsert_status(conn, job, {"worker": worker, "last_started_at": now})
    return int(run_id)


def finish_job_run(
    engine: Engine,
    run_id: int,
    job: str,
    outcome: Literal["success", "failure", "skipped", "stopped"],
    now: datetime,
    detail: str | None = None,
) -> None:
    """Close a run row and update the job's last success/failure."""
    values: dict[str, Any] = {"last_finished_at": now, "last_outcome": outcome}
    if outcome == "success":
        values["last_success_at"] = now
    elif outcome == "failure":
        values["last_failure_at"] = now
        values["last_error"] = _clip(detail or "")
    with engine.begin() as conn:
        conn.execute(
            update(job_runs)
            .where(job_runs.c.id == run_id)
            .values(finished_at=now, outcome=outcome, detail=_clip(detail) if detail else None)
        )
        _upsert_status(conn, job, values)


def record_skip(engine: Engine, job: str, worker: str, now: datetime, reason: str) -> None:
    """A due job this worker did not run (another worker owns the business); no run row."""
    with engine.begin() as conn:
        _upsert_status(conn, job, {"last_outcome": "skipped", "last_finished_at": now})
    log.debug("%s skipped on %s: %s", job, worker, reason)


def job_statuses(engine: Engine) -> list[dict[str, Any]]:
    """Every known job's last success, last failure and next run (for ``perkbridge status``).

    Returns an empty list when the scheduler has never run against this database.
    """
    with engine.connect() as conn:
        if not engine.dialect.has_table(conn, job_status.name):
            return []
        rows = conn.execute(select(job_status).order_by(job_status.c.job_id)).mappings().all()
    result: list[dict[str, Any]] = []
    for row in rows:
        item = dict(row)
        for key, value in item.items():
            if isinstance(value, datetime):
                item[key] = as_utc(value)
        result.append(item)
    return result


def job_run_log(engine: Engine, business_id: str | None = None) -> list[JobRun]:
    """Recorded job executions in start order, optionally for one business."""
    query = select(job_runs).order_by(job_runs.c.started_at, job_runs.c.id)
    if business_id is not None:
        query = query.where(job_runs.c.business_id == business_id)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [
        JobRun(
            id=row["id"],
            job_id=row["job_id"],
            kind=row["kind"],
            business_id=row["business_id"],
            worker=row["worker"],
            started_at=as_utc(row["started_at"]) or row["started_at"],
            finished_at=as_utc(row["finished_at"]),
            outcome=row["outcome"],
            detail=row["detail"],
        )
        for row in rows
    ]


# --------------------------------------------------------------------------------------------
# The runtime of one scheduler process and the job entry point
# --------------------------------------------------------------------------------------------


class ReconcileMismatch(Exception):
    """The scheduled reconcile found members whose balances differ."""


class JobSkipped(Exception):
    """A job had nothing it was allowed to do now (another worker holds the business)."""


JobRunner = Callable[["JobContext"], Any]
"""Executes one kind of job; returns a JSON-able summary or raises."""


@dataclass
class JobContext:
    """What a job needs: settings, engine, its business, the stop flag and the worker name."""

    kind: JobKind
    business_id: str
    settings: Settings
    engine: Engine
    stop: threading.Event
    worker: str
    config_file: str | None


@dataclass
class SchedulerRuntime:
    """Per-process state shared by the jobs of one running scheduler.

    APScheduler stores jobs as pickled references with plain arguments, so a job cannot carry
    the stop flag, the engine or the lease holder; the scheduler installs this runtime for its
    process while it runs (``installed_runtime``) and jobs look it up.
    """

    worker: str
    stop: threading.Event = field(default_factory=threading.Event)
    engine: Engine | None = None
    runners: Mapping[str, JobRunner] | None = None
    gate: Callable[[JobContext], Any] | None = None
    """Optional context-manager factory deciding whether this worker may run the job now
    (several workers: a business lease); raising ``JobSkipped`` skips the run."""


_runtime_lock = threading.Lock()
_installed: list[SchedulerRuntime] = []
# Process-wide on purpose: see SchedulerRuntime.  A stack, so tests can nest.


@contextmanager
def installed_runtime(runtime: SchedulerRuntime) -> Iterator[SchedulerRuntime]:
    """Make ``runtime`` the one jobs of this process see while the block runs."""
    with _runtime_lock:
        _installed.append(runtime)
    try:
        yield runtime
    finally:
        with _runtime_lock:
            _installed.remove(runtime)


def current_runtime() -> SchedulerRuntime | None:
    with _runtime_lock:
        return _installed[-1] if _installed else None


def default_worker_name() -> str:
    """``host:pid`` — unique among live processes, readable in the run log."""
    return f"{socket.gethostname()}:{os.getpid()}"


def run_sync_job(context: JobContext) -> Any:
    """The scheduled incremental sync: the same pass ``perkbridge sync`` runs for one business.

    With write-back enabled the pass then writes back (both directions, as ``sync`` does).
    """
    from bridge.pipeline import Pipeline, RunOptions
    from bridge.wiring import build_target, open_state, perkville_client, pipeline_config
    from bridge.writeback import run_writeback, space_for

    settings, engine = context.settings, context.engine
    space = space_for(settings, context.business_id)
    bundle = build_target(settings, engine, space=space)
    client = perkville_client(settings)
    try:
        summary = Pipeline(
            state=open_state(engine),
            source=client,
            target=bundle.target,
            config=pipeline_config(settings, context.business_id),
            stop=context.stop,
        ).run(RunOptions(kind="sync", mode=settings.sync.mode))
        body: dict[str, Any] = summary.to_json()
        if settings.writeback.enabled and not context.stop.is_set():
            back = run_writeback(
                settings, engine, business_id=context.business_id, space=space,
                stop=context.stop, client=client,
            )
            body["written_back"] = back.written_back
            body["writeback_dead_lettered"] = back.dead_lettered
        return body
    finally:
        client.close()
        bundle.close()


def run_writeback_job(context: JobContext) -> Any:
    """The scheduled write-back pass (Perkamo → Perkville) for one business."""
    from bridge.writeback import run_writeback_for_settings

    return run_writeback_for_settings(
        context.settings, context.engine, business_id=context.business_id, stop=context.stop
    )


def run_reconcile_job(context: JobContext) -> Any:
    """The scheduled reconcile (report only, no repair): what ``perkbridge reconcile`` runs."""
    from bridge.reconcile import Reconciler
    from bridge.wiring import build_target, open_state, perkville_client
    from bridge.writeback import space_for

    from datetime import timedelta

    from bridge.state import LeaseKeeper, lease_name, new_owner_id

    settings, engine = context.settings, context.engine
    state = open_state(engine)
    # Compare only while no sync of this business is half-way through a pass (a mid-pass
    # comparison would report members whose new rows are not applied yet): hold its lease.
    ttl = timedelta(seconds=settings.schedule.lease_seconds)
    name, owner = lease_name(context.business_id, "import"), new_owner_id()
    deadline = time.monotonic() + settings.schedule.misfire_grace_seconds
    while (lease := state.leases.try_acquire(name, owner, ttl)) is None:
        # A sync is running: wait for it (a stop request ends the wait at once).
        if time.monotonic() >= deadline:
            raise JobSkipped(f"{name} stayed busy for {settings.schedule.misfire_grace_seconds} s")
        if context.stop.wait(1.0):
            return {"status": "stopped"}
    bundle = build_target(settings, engine, space=space_for(settings, context.business_id))
    client = perkville_client(settings)
    try:
        with LeaseKeeper(state.leases, lease, ttl):
            report = Reconciler(
                state=state,
                source=client,
                target=bundle.target,
                business=context.business_id,
                timezone=settings.perkville_timezone,
                id_strategy=settings.sync.id_strategy,
                lease_seconds=settings.schedule.lease_seconds,
            ).run(repair=False)
    finally:
        client.close()
        bundle.close()
    body: dict[str, Any] = report.to_json()
    if not report.ok:
        # A mismatch is a failed job: it shows as the job's last failure in status.
        raise ReconcileMismatch(
            f"reconcile of business {context.business_id}: {len(report.mismatches)} "
            f"mismatched of {report.checked}"
        )
    return body


def _default_runners() -> Mapping[str, JobRunner]:
    return {"sync": run_sync_job, "writeback": run_writeback_job, "reconcile": run_reconcile_job}


def run_scheduled_job(kind: JobKind, business_id: str, config_file: str | None) -> Any:
    """The function every scheduled job references (picklable arguments only).

    Builds settings and an engine of its own unless a scheduler runtime is installed, records
    the run, and calls the runner of ``kind``; a job whose business is held by another worker
    is recorded as ``skipped``.  Exceptions are recorded and re-raised so APScheduler logs them.
    """
    runtime = current_runtime()
    settings = load_settings(config_file)
    own_engine = runtime is None or runtime.engine is None
    if own_engine:
        from perkamo_core.db import create_db_engine

        engine = create_db_engine(settings.database_url)
        migrate_scheduler(engine)
    else:
        assert runtime is not None and runtime.engine is not None
        engine = runtime.engine
    worker = runtime.worker if runtime else default_worker_name()
    stop = runtime.stop if runtime else threading.Event()
    runners = (runtime.runners if runtime and runtime.runners else None) or _default_runners()
    context = JobContext(kind, business_id, settings, engine, stop, worker, config_file)
    job = job_id(kind, business_id)
    try:
        if stop.is_set():
            return None
        with ExitStack() as held:
            try:
                if runtime is not None and runtime.gate is not None:
                    held.enter_context(runtime.gate(context))
            except JobSkipped as exc:
                record_skip(engine, job, worker, datetime.now(UTC), str(exc))
                return None
            run_id = start_job_run(engine, job, worker, datetime.now(UTC))
            try:
                result = runners[kind](context)
            except (JobSkipped, LeaseHeldError) as exc:
                # Another runner holds this (business, direction) right now: not a failure.
                finish_job_run(engine, run_id, job, "skipped", datetime.now(UTC), str(exc))
                return None
            except BaseException as exc:
                finish_job_run(
                    engine, run_id, job, "failure", datetime.now(UTC), describe_error(exc)
                )
                raise
            outcome: Literal["success", "stopped"] = "stopped" if stop.is_set() else "success"
            finish_job_run(engine, run_id, job, outcome, datetime.now(UTC), _summary(result))
            return result
    finally:
        if own_engine:
            engine.dispose()


def _summary(result: Any) -> str | None:
    if result is None:
        return None
    if isinstance(result, Mapping):
        keys = ("status", "read", "applied", "duplicate", "skipped", "dead_lettered",
                "written_back", "checked", "matched")
        parts = [f"{k}={result[k]}" for k in keys if k in result]
        return _clip(" ".join(parts)) if parts else None
    return _clip(str(result))


# --------------------------------------------------------------------------------------------
# The scheduler
# --------------------------------------------------------------------------------------------


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


def jobstore_table(slot: int) -> str:
    """The job-store table of worker slot ``slot`` (slot 1 uses APScheduler's default name)."""
    return JOBSTORE_TABLE if slot == 1 else f"{JOBSTORE_TABLE}_{slot}"


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
    slot: int = 1,
    start: datetime | None = None,
) -> ForegroundScheduler:
    """A scheduler with every job of the configured businesses (nothing runs until ``start``).

    APScheduler job stores must not be shared between schedulers, so each worker slot has a
    table of its own; the jobs are the same in every slot and leases decide who runs them.
    """
    triggers = build_triggers(settings, start=start)
    scheduler = ForegroundScheduler(
        jobstores={
            "default": SQLAlchemyJobStore(
                engine=_jobstore_engine(engine), tablename=jobstore_table(slot)
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
    slot: int = 1,
    install_signals: bool = True,
    on_started: Callable[[ForegroundScheduler], None] | None = None,
) -> ScheduleOutcome:
    """Run the jobs in the foreground until SIGTERM/SIGINT or ``runtime.stop`` is set.

    On a signal the stop flag is set first, so running jobs finish their current page, commit
    and return; then the scheduler shuts down waiting for them and this function returns.
    """
    migrate_scheduler(engine)
    scheduler = build_scheduler(settings, engine, config_file=config_file, slot=slot)
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
        _status_listener(_jobstore_engine(engine), jobstore_table(slot)),
        # Both are dispatched from the executor thread, never blocking the scheduler loop.
        EVENT_JOB_EXECUTED | EVENT_JOB_ERROR,
    )
    create_jobstore_table(engine, jobstore_table(slot))
    keep = list(build_triggers(settings).keys())
    for removed in remove_stale_jobs(engine, jobstore_table(slot), keep):
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

