"""The scheduler's tables: each job's last outcome (``scheduler_job_status``) and one row per
execution (``scheduler_job_runs``), migrated as the ``scheduler`` component."""


from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from sqlalchemy import (
    Column,
    Connection,
    DateTime,
    Engine,
    Integer,
    MetaData,
    String,
    Table,
    select,
    update,
)

from bridge.errors import describe_failure
from bridge.state.schema import as_utc
from bridge.state.sql import upsert
from perkamo_core.migrations import Migration, migrate

log = logging.getLogger("perkbridge.schedule")

JobKind = Literal["sync", "writeback", "reconcile"]
JOB_KINDS: tuple[JobKind, ...] = ("sync", "writeback", "reconcile")
JOB_ID_PREFIX = "perkbridge"
SCHEDULER_LEASE = "scheduler"
"""Held by the one ``perkbridge schedule`` of a database while it runs (its APScheduler job table
is not shareable, and workers must not run the same jobs beside it)."""
JOBSTORE_TABLE = "apscheduler_jobs"
"""APScheduler's own table (its default name), of the one ``perkbridge schedule`` of a database."""


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


def clip(message: str, limit: int = 1000) -> str:
    return message if len(message) <= limit else message[: limit - 1] + "…"


def describe_error(exc: BaseException) -> str:
    """A one-line description for the status table: never a traceback, SQL or its parameters."""
    return clip(describe_failure(exc))


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
        values["last_error"] = clip(detail or "")
    with engine.begin() as conn:
        conn.execute(
            update(job_runs)
            .where(job_runs.c.id == run_id)
            .values(finished_at=now, outcome=outcome, detail=clip(detail) if detail else None)
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


