"""The Procrastinate app: perkbridge's tasks, their locks, retries and periodic schedules.

Four tasks, each taking the business id (and a backfill its options) — never a secret, never a
config path: a worker reads its own configuration.

| task | lock | queueing lock | deferred by |
|---|---|---|---|
| ``perkbridge.sync`` | ``import:{business}`` | ``sync:{business}`` | periodic, every ``sync_interval_minutes`` |
| ``perkbridge.writeback`` | ``writeback:{business}`` | ``writeback:{business}`` | periodic, every ``writeback_interval_seconds`` (when enabled) |
| ``perkbridge.reconcile`` | ``import:{business}`` | ``reconcile:{business}`` | periodic, on ``reconcile_cron`` |
| ``perkbridge.backfill`` | ``import:{business}`` | ``backfill:{business}`` | ``perkbridge backfill --enqueue`` |

The lock is the name of the run lease the job takes (``bridge.leased``): Procrastinate never
starts two jobs of one business and direction at once, and the lease's fence still guards every
page when a stalled worker wakes up after its job was retried elsewhere.  The queueing lock keeps
one waiting job per business and kind, so jobs never pile up behind a slow run.
"""

from __future__ import annotations

from datetime import UTC, datetime, tzinfo
from functools import cached_property
from typing import Any

import attr
import croniter  # type: ignore[import-untyped]  # Procrastinate's cron library
from procrastinate import App, BaseConnector, PsycopgConnector, SyncPsycopgConnector
from procrastinate.jobs import Job
from procrastinate.periodic import PeriodicTask
from procrastinate.retry import BaseRetryStrategy, RetryDecision
from sqlalchemy.engine import make_url

from bridge.errors import ConfigurationError, LeaseHeldError, LeaseLostError, RetryLater
from bridge.queue import tasks
from config import Settings

QUEUE = "perkbridge"
TASK_PREFIX = "perkbridge."
KINDS = ("sync", "writeback", "reconcile", "backfill")
LOCK_DIRECTION = {"sync": "import", "reconcile": "import", "backfill": "import", "writeback": "writeback"}


class QueueUnavailableError(ConfigurationError):
    """The job queue needs PostgreSQL (the configured database is another one)."""


def task_name(kind: str) -> str:
    return f"{TASK_PREFIX}{kind}"


def job_lock(kind: str, business: str) -> str:
    """The Procrastinate lock of a job: its run lease's name (``import:25``, ``writeback:25``)."""
    return f"{LOCK_DIRECTION[kind]}:{business}"


def queueing_lock(kind: str, business: str) -> str:
    """At most one waiting job per (kind, business)."""
    return f"{kind}:{business}"


def conninfo(database_url: str) -> str:
    """A libpq URI from ``PERKBRIDGE_DATABASE_URL`` (``QueueUnavailableError`` unless PostgreSQL)."""
    url = make_url(database_url)
    if url.get_backend_name() != "postgresql":
        raise QueueUnavailableError(
            f"the job queue (perkbridge worker, jobs, backfill --enqueue) needs PostgreSQL; "
            f"PERKBRIDGE_DATABASE_URL is {url.get_backend_name()}: use perkbridge schedule, which "
            "runs the jobs in its own process"
        )
    return url.set(drivername="postgresql").render_as_string(hide_password=False)


class BridgeRetry(BaseRetryStrategy):
    """Retries for what may pass: an unavailable Perkville or Perkamo, a lease held or lost.

    The n-th retry waits ``base ** n`` seconds, up to ``max_attempts`` attempts.  A backfill
    stopped by a worker's shutdown is retried at once, on whichever worker is free.
    """

    def __init__(self, max_attempts: int, base: int) -> None:
        self.max_attempts = max_attempts
        self.base = base

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        if isinstance(exception, tasks.JobInterrupted):
            return RetryDecision(retry_in={"seconds": 0})
        if job.attempts + 1 >= self.max_attempts:
            return None
        if isinstance(exception, (RetryLater, LeaseHeldError, LeaseLostError)):
            return RetryDecision(retry_in={"seconds": self.base ** (job.attempts + 1)})
        return None


def build_app(settings: Settings, *, worker: bool = False) -> App:
    """The app with perkbridge's tasks.  ``worker``: an asyncio connector (``perkbridge worker``);
    otherwise a synchronous one (the CLI: ``jobs``, ``backfill --enqueue``, ``status``)."""
    info = conninfo(settings.database_url)
    # A worker's own queue connections: the LISTEN connection, the heartbeat, fetching, deferring.
    connector: BaseConnector = (
        PsycopgConnector(conninfo=info, min_size=1, max_size=4)
        if worker
        else SyncPsycopgConnector(conninfo=info, min_size=1, max_size=1)
    )
    app = App(connector=connector)
    retry = BridgeRetry(settings.schedule.job_max_attempts, settings.schedule.job_retry_seconds)
    app.task(name=task_name("sync"), queue=QUEUE, retry=retry, pass_context=True)(tasks.sync_task)
    app.task(name=task_name("writeback"), queue=QUEUE, retry=retry, pass_context=True)(tasks.writeback_task)
    app.task(name=task_name("reconcile"), queue=QUEUE, retry=retry, pass_context=True)(tasks.reconcile_task)
    app.task(name=task_name("backfill"), queue=QUEUE, retry=retry, pass_context=True)(tasks.backfill_task)
    return app


def interval_cron(seconds: float) -> str:
    """A Procrastinate cron (seconds in a 6th column) firing every ``seconds``.

    Cron fires on the clock, so the interval must divide a minute, an hour or a day evenly
    (5 s, 30 s, 1 min, 15 min, 2 h …); anything else is a configuration error.
    """
    whole = round(seconds)
    if whole != seconds or whole <= 0:
        raise ConfigurationError(f"a worker interval must be a whole number of seconds, not {seconds}")
    if whole < 60 and 60 % whole == 0:
        return f"* * * * * */{whole}"
    if whole % 60 == 0 and whole < 3600 and 60 % (whole // 60) == 0:
        return f"*/{whole // 60} * * * * 0"
    if whole % 3600 == 0 and whole < 86400 and 24 % (whole // 3600) == 0:
        return f"0 */{whole // 3600} * * * 0"
    if whole == 86400:
        return "0 0 * * * 0"
    raise ConfigurationError(
        f"perkbridge worker defers periodic jobs on the clock: an interval of {whole} s must divide "
        "a minute, an hour or a day (e.g. 30 s, 1, 5, 15 or 30 min, 1 or 2 h)"
    )


def periodic_crons(settings: Settings) -> dict[str, str]:
    """The cron of each periodic kind under these settings (write-back only when enabled)."""
    crons = {"sync": interval_cron(settings.schedule.sync_interval_minutes * 60)}
    if settings.writeback.enabled:
        crons["writeback"] = interval_cron(settings.schedule.writeback_interval_seconds)
    crons["reconcile"] = settings.schedule.reconcile_cron
    return crons


def register_periodic(app: App, settings: Settings, businesses: list[str]) -> None:
    """One periodic task per (kind, business), ``periodic_id`` the business: whichever worker
    defers a period's job first records it in ``procrastinate_periodic_defers``, so each period's
    job is deferred once, however many workers run.  The reconcile cron is read in
    ``PERKVILLE_TIMEZONE``, as ``perkbridge schedule`` reads it (the business's local night)."""
    registry = app.periodic_registry.periodic_tasks
    for kind, cron in periodic_crons(settings).items():
        task = app.tasks[task_name(kind)]
        for business in businesses:
            app.periodic(
                cron=cron,
                periodic_id=business,
                lock=job_lock(kind, business),
                queueing_lock=queueing_lock(kind, business),
                task_kwargs={"business_id": business},
            )(task)
            if kind == "reconcile":
                key = (task.name, business)
                registry[key] = zoned(registry[key], settings.timezone_info())


def zoned(periodic: PeriodicTask[Any, Any, Any], zone: tzinfo) -> PeriodicTask[Any, Any, Any]:
    """``periodic`` with its cron read in ``zone`` (Procrastinate reads every cron in UTC)."""
    return ZonedPeriodicTask(
        task=periodic.task, cron=periodic.cron, periodic_id=periodic.periodic_id,
        configure_kwargs=periodic.configure_kwargs, zone=zone,
    )


@attr.dataclass(frozen=True)
class ZonedPeriodicTask(PeriodicTask[Any, Any, Any]):
    """A periodic task whose cron is read in ``zone``: Procrastinate asks the task's ``croniter``
    for the times around a timestamp, and a croniter started from an aware datetime turns
    timestamps into that zone's wall clock, daylight saving included, and answers timestamps."""

    zone: tzinfo = UTC

    @cached_property
    def croniter(self) -> croniter.croniter:
        return croniter.croniter(self.cron, datetime.now(self.zone))
