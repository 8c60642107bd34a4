"""Operating the queue: list, retry and cancel jobs, defer a backfill (Procrastinate's job manager),
and ``queue_summary`` — the read ``perkbridge status`` and the dashboard show."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

from procrastinate import App
from procrastinate.exceptions import AlreadyEnqueued
from procrastinate.jobs import Job
from sqlalchemy import Engine, inspect, text

from bridge.queue.app import QUEUE, TASK_PREFIX, build_app, job_lock, queueing_lock, task_name
from config import Settings

JOB_STATUSES = ("todo", "doing", "succeeded", "failed", "cancelled", "aborting", "aborted")
"""Procrastinate's job statuses (3.x no longer sets ``aborting``: a running job asked to stop is
``doing`` with ``abort_requested``)."""


class JobNotFoundError(LookupError):
    """No perkbridge job has this id (or it is not in a state the operation applies to)."""


class BackfillQueuedError(Exception):
    """A backfill of this business is already waiting in the queue."""


@contextmanager
def opened_app(settings: Settings) -> Iterator[App]:
    """The synchronous app, open for the block (``QueueUnavailableError`` unless PostgreSQL).

    The bridge's migrations run first: the queue's schema is one of them."""
    from bridge.state import StateStore
    from perkamo_core.db import create_db_engine

    app = build_app(settings)
    engine = create_db_engine(settings.database_url)
    try:
        StateStore(engine).migrate()
    finally:
        engine.dispose()
    with app.open():
        yield app


def job_json(job: Job) -> dict[str, Any]:
    """A job as ``jobs list --json`` prints it (its arguments hold business ids and options only)."""
    kind = job.task_name.removeprefix(TASK_PREFIX)
    return {
        "id": job.id,
        "kind": kind,
        "task": job.task_name,
        "business": job.task_kwargs.get("business_id"),
        "status": job.status,
        "attempts": job.attempts,
        "abort_requested": job.abort_requested,
        "worker_id": job.worker_id,
        "lock": job.lock,
        "scheduled_at": job.scheduled_at.isoformat() if job.scheduled_at else None,
        "args": dict(job.task_kwargs),
    }


def list_jobs(
    app: App, *, business: str | None = None, status: str | None = None, limit: int = 200
) -> list[dict[str, Any]]:
    """Perkbridge's jobs, newest first, optionally of one business and status."""
    jobs = app.job_manager.list_jobs(queue=QUEUE, status=status)
    chosen = [
        job for job in jobs
        if business is None or str(job.task_kwargs.get("business_id")) == business
    ]
    chosen.sort(key=lambda job: job.id or 0, reverse=True)
    return [job_json(job) for job in chosen[:limit]]


def _job(app: App, job_id: int) -> Job:
    found = app.job_manager.list_jobs(id=job_id, queue=QUEUE)
    if not found:
        raise JobNotFoundError(f"no perkbridge job {job_id}")
    return found[0]


def retry_job(app: App, job_id: int) -> dict[str, Any]:
    """Put a failed (or stalled running) job back in the queue, due now."""
    job = _job(app, job_id)
    if job.status not in ("failed", "doing"):
        raise JobNotFoundError(f"job {job_id} is {job.status}: only a failed or running job can be retried")
    app.job_manager.retry_job_by_id(job_id, retry_at=datetime.now(UTC))
    return job_json(_job(app, job_id))


def cancel_job(app: App, job_id: int) -> dict[str, Any]:
    """Cancel a waiting job; a running one is asked to abort (a backfill stops after its page; a
    sync, write-back or reconcile is short and runs to its end)."""
    job = _job(app, job_id)
    if job.status == "todo":
        done = app.job_manager.cancel_job_by_id(job_id)
    elif job.status == "doing":
        done = app.job_manager.cancel_job_by_id(job_id, abort=True)
    else:
        done = False
    if not done:
        raise JobNotFoundError(f"job {job_id} is {job.status}: only a waiting or running job can be cancelled")
    return job_json(_job(app, job_id))


def enqueue_backfill(app: App, business: str, options: dict[str, Any]) -> int:
    """Defer a backfill of ``business`` onto the workers; its job id."""
    kwargs = {"business_id": business, **{k: v for k, v in options.items() if v not in (None, False)}}
    try:
        job_id = app.configure_task(
            task_name("backfill"),
            lock=job_lock("backfill", business),
            queueing_lock=queueing_lock("backfill", business),
            task_kwargs=kwargs,
        ).defer()
    except AlreadyEnqueued:
        raise BackfillQueuedError(
            f"a backfill of business {business} is already waiting in the queue "
            f"(perkbridge jobs list --business {business})"
        ) from None
    return job_id


def queue_present(engine: Engine) -> bool:
    """Whether this database holds the queue (PostgreSQL, migration 7 applied)."""
    if engine.dialect.name != "postgresql":
        return False
    with engine.connect() as conn:
        return inspect(conn).has_table("procrastinate_jobs")


def live_workers(engine: Engine, within_seconds: float) -> int:
    """How many workers sent a heartbeat in the last ``within_seconds`` (0 without a queue)."""
    if not queue_present(engine):
        return 0
    with engine.connect() as conn:
        return int(conn.execute(
            text(
                "SELECT count(*) FROM procrastinate_workers "
                "WHERE last_heartbeat >= now() - make_interval(secs => :s)"
            ),
            {"s": within_seconds},
        ).scalar_one())


def queue_summary(engine: Engine, *, limit: int = 20) -> dict[str, Any] | None:
    """Queue depth, running jobs with their worker, and the latest failed jobs; ``None`` when the
    database holds no queue (SQLite, or migrations not yet applied).  One plain read, cheap enough
    for a dashboard page.
    """
    if not queue_present(engine):
        return None
    with engine.connect() as conn:
        counts = {
            row.status: int(row.n)
            for row in conn.execute(
                text(
                    "SELECT status::text AS status, count(*) AS n FROM procrastinate_jobs "
                    "WHERE queue_name = :q GROUP BY status"
                ),
                {"q": QUEUE},
            )
        }
        due = conn.execute(
            text(
                "SELECT count(*) FROM procrastinate_jobs WHERE queue_name = :q AND status = 'todo' "
                "AND (scheduled_at IS NULL OR scheduled_at <= now())"
            ),
            {"q": QUEUE},
        ).scalar_one()
        running = conn.execute(
            text(
                "SELECT j.id, j.task_name, j.args, j.attempts, j.worker_id, w.last_heartbeat, "
                "(SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id "
                " AND e.type = 'started') AS started_at "
                "FROM procrastinate_jobs j LEFT JOIN procrastinate_workers w ON w.id = j.worker_id "
                "WHERE j.queue_name = :q AND j.status = 'doing' ORDER BY j.id LIMIT :n"
            ),
            {"q": QUEUE, "n": limit},
        ).mappings().all()
        failed = conn.execute(
            text(
                "SELECT j.id, j.task_name, j.args, j.attempts, "
                "(SELECT max(e.at) FROM procrastinate_events e WHERE e.job_id = j.id) AS at "
                "FROM procrastinate_jobs j WHERE j.queue_name = :q AND j.status = 'failed' "
                "ORDER BY j.id DESC LIMIT :n"
            ),
            {"q": QUEUE, "n": limit},
        ).mappings().all()
        names = _worker_names(conn)
        workers = conn.execute(text("SELECT count(*) FROM procrastinate_workers")).scalar_one()
    return {
        "depth": counts.get("todo", 0),
        "due": int(due),
        "counts": {status: counts.get(status, 0) for status in JOB_STATUSES},
        "workers": int(workers),
        "running": [
            {
                "id": row["id"],
                "kind": row["task_name"].removeprefix(TASK_PREFIX),
                "business": (row["args"] or {}).get("business_id"),
                "attempts": row["attempts"],
                "worker_id": row["worker_id"],
                "worker": names.get(_kind_business(row)),
                "last_heartbeat": _iso(row["last_heartbeat"]),
                "started_at": _iso(row["started_at"]),
            }
            for row in running
        ],
        "failed": [
            {
                "id": row["id"],
                "kind": row["task_name"].removeprefix(TASK_PREFIX),
                "business": (row["args"] or {}).get("business_id"),
                "attempts": row["attempts"],
                "at": _iso(row["at"]),
            }
            for row in failed
        ],
    }


def _kind_business(row: Any) -> tuple[str, str]:
    return row["task_name"].removeprefix(TASK_PREFIX), str((row["args"] or {}).get("business_id"))


def _worker_names(conn: Any) -> dict[tuple[str, str], str]:
    """The worker (``host:pid``) of each unfinished scheduled run, by (kind, business)."""
    if not inspect(conn).has_table("scheduler_job_runs"):
        return {}
    names: dict[tuple[str, str], str] = {}
    rows = conn.execute(
        text("SELECT kind, business_id, worker FROM scheduler_job_runs WHERE finished_at IS NULL ORDER BY id")
    )
    for kind, business, worker in rows:
        names[(str(kind), str(business))] = str(worker)
    return names


def _iso(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None
