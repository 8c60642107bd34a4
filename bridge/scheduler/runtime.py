"""The runtime of one scheduler process and the job entry point.

APScheduler pickles a job as a *reference* to a module-level function plus its arguments, so
every job is ``run_scheduled_job(kind, business_id, config_file)``: it builds its own settings,
engine and clients and then calls the same use case the CLI calls (``bridge.usecases``)."""


from __future__ import annotations

import logging
import os
import socket
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

# APScheduler 3.x ships no type information (import-untyped).
from sqlalchemy import (
    Engine,
)

from bridge.errors import LeaseHeldError
from bridge.state.jobs import (
    JobKind,
    clip,
    describe_error,
    finish_job_run,
    job_id,
    migrate_scheduler,
    record_skip,
    start_job_run,
)
from config import Settings, load_settings

log = logging.getLogger("perkbridge.schedule")



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
    config_file: str | None = None
    """The process's ``--config`` file, for jobs whose arguments carry none (``perkbridge worker``)."""
    gate: Callable[[JobContext], Any] | None = None
    """Optional context-manager factory deciding whether this worker may run the job now
    (a test, or a future policy); raising ``JobSkipped`` skips the run."""


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
    """The scheduled incremental sync: what ``perkbridge sync`` runs for one business (with
    write-back enabled, both directions; ``bridge.usecases.sync``)."""
    from bridge.usecases import sync
    from bridge.wiring import RunParts

    parts = RunParts(context.settings, context.engine, context.business_id)
    try:
        return sync(
            parts.pipeline(stop=context.stop), context.settings, context.engine, space=parts.space,
            client=parts.source,
        ).to_json()
    finally:
        parts.close()


def run_writeback_job(context: JobContext) -> Any:
    """The scheduled write-back pass (Perkamo → Perkville) for one business; off: nothing."""
    from bridge.usecases import writeback

    if not context.settings.writeback.enabled:
        return {"status": "disabled"}
    return writeback(
        context.settings, context.engine, business=context.business_id, stop=context.stop
    ).to_json()


def run_reconcile_job(context: JobContext) -> Any:
    """The scheduled reconcile: under the business's import lease, a sync pass, then the
    comparison, then (``schedule.reconcile_repair``) adjustments for what still differs
    (``bridge.usecases.reconcile``). A sync of the business that is running is waited for, up to
    ``misfire_grace_seconds``."""
    from bridge.errors import LeaseHeldError
    from bridge.usecases import reconcile
    from bridge.wiring import RunParts

    settings = context.settings
    parts = RunParts(settings, context.engine, context.business_id)
    try:
        report = reconcile(
            parts.pipeline(stop=context.stop), parts.reconciler(), mode=settings.sync.mode,
            sync_first=True, repair=settings.schedule.reconcile_repair, wait=True,
            timeout=settings.schedule.misfire_grace_seconds, stop=context.stop,
        )
    except LeaseHeldError as exc:
        if context.stop.is_set():
            return {"status": "stopped"}
        raise JobSkipped(
            f"{exc.name} stayed busy for {settings.schedule.misfire_grace_seconds} s"
        ) from None
    finally:
        parts.close()
    body: dict[str, Any] = report.to_json()
    if not report.ok:
        # A mismatch is a failed job: it shows as the job's last failure in status.
        left = len(report.remaining) + len(report.pending) if report.repair_attempted else len(report.mismatches)
        raise ReconcileMismatch(
            f"reconcile of business {context.business_id}: {left} mismatched of {report.checked}"
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
        return clip(" ".join(parts)) if parts else None
    return clip(str(result))


