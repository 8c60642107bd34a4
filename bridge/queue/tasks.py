"""The job bodies the workers run: thin adapters over what ``perkbridge schedule`` runs.

Sync, write-back and reconcile are ``run_scheduled_job`` (``bridge.scheduler``): the same runners,
the same run leases with their fence, the same ``scheduler_job_runs`` rows with the worker's
name.  A periodic job whose run lease is held (a CLI run, or a stalled worker's run not yet
expired) ends as ``skipped`` with the holder named, and the next period runs it.

A backfill runs the pipeline as ``perkbridge backfill`` does.  If its lease is held it waits up
to ``lease_seconds``, then fails and is retried with backoff.  If the worker is stopped
(SIGTERM) the backfill commits its page and the job is retried at once (``JobInterrupted``):
another worker, or this one when it comes back, resumes from the checkpoint.  ``jobs cancel`` of
a running backfill stops it after its page (the job ends ``aborted``; ``backfill --enqueue``
again resumes).  A running sync, write-back or reconcile is short and runs to its end.

The worker installs its ``SchedulerRuntime`` (engine, stop flag, name, config file) for the
process (``bridge.queue.worker``); job arguments carry business ids and options only.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from procrastinate import JobContext
from procrastinate.exceptions import JobAborted

from bridge.scheduler import current_runtime, run_scheduled_job

log = logging.getLogger("perkbridge.worker")

class JobInterrupted(Exception):
    """The worker stopped while a backfill ran: its page is committed; the job is retried."""


def _config_file() -> str | None:
    """The worker's config file (its installed runtime's; never a job argument)."""
    runtime = current_runtime()
    return runtime.config_file if runtime is not None else None


@contextmanager
def _job_stop(context: JobContext, worker_stop: threading.Event) -> Iterator[threading.Event]:
    """A stop flag for one job: set when the worker stops or ``jobs cancel`` asks this job to abort."""
    stop = threading.Event()
    done = threading.Event()

    def watch() -> None:
        while not done.wait(0.2):
            if worker_stop.is_set() or context.should_abort():
                stop.set()
                return

    watcher = threading.Thread(target=watch, name=f"job-{context.job.id}-stop", daemon=True)
    watcher.start()
    try:
        yield stop
    finally:
        done.set()
        watcher.join()


def _log_start(context: JobContext, business_id: str) -> None:
    job = context.job
    log.info(
        "job %s %s business %s on worker %s (attempt %s)",
        job.id, job.task_name, business_id, context.worker_name, job.attempts + 1,
    )


def sync_task(context: JobContext, business_id: str, timestamp: int | None = None) -> None:
    _log_start(context, business_id)
    run_scheduled_job("sync", business_id, _config_file())


def writeback_task(context: JobContext, business_id: str, timestamp: int | None = None) -> None:
    _log_start(context, business_id)
    run_scheduled_job("writeback", business_id, _config_file())


def reconcile_task(context: JobContext, business_id: str, timestamp: int | None = None) -> None:
    _log_start(context, business_id)
    run_scheduled_job("reconcile", business_id, _config_file())


def backfill_task(
    context: JobContext,
    business_id: str,
    mode: str | None = None,
    since: str | None = None,
    until: str | None = None,
    force: bool = False,
    allow_partial: bool = False,
) -> dict[str, Any]:
    """``perkbridge backfill`` of one business on a worker; the run's summary is the job's result."""
    from datetime import datetime

    from bridge.pipeline import RunOptions
    from bridge.wiring import RunParts
    from config import load_settings
    from perkamo_core.db import create_db_engine

    _log_start(context, business_id)
    settings = load_settings(_config_file())
    runtime = current_runtime()
    stop = runtime.stop if runtime is not None else threading.Event()
    engine = runtime.engine if runtime is not None and runtime.engine is not None else None
    parts = RunParts(
        settings, engine or create_db_engine(settings.database_url), business_id, owns_engine=engine is None
    )
    options = RunOptions(
        kind="backfill",
        mode=(mode or settings.sync.mode),  # type: ignore[arg-type]
        since=datetime.fromisoformat(since) if since else None,
        until=datetime.fromisoformat(until) if until else None,
        wait=True,
        wait_timeout=float(settings.schedule.lease_seconds),
        force=force,
        allow_partial=allow_partial,
    )
    try:
        with _job_stop(context, stop) as job_stop:
            summary = parts.pipeline(stop=job_stop).run(options)
    finally:
        parts.close()
    if summary.status == "stopped" and not stop.is_set():
        raise JobAborted(f"backfill run {summary.run_id} of business {business_id} cancelled after its page")
    if summary.status == "stopped":
        raise JobInterrupted(
            f"backfill run {summary.run_id} of business {business_id} stopped with the worker; "
            "what it read is committed and the job is retried"
        )
    body: dict[str, Any] = summary.to_json()
    return body
