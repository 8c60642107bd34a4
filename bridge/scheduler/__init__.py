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

| module | concern |
|---|---|
| `triggers` | the jobs each business gets and when they fire (pure) |
| `runtime` | what one scheduler process shares with its jobs; the job bodies (thin adapters over ``bridge.usecases``) |
| `app` | APScheduler in the foreground, its job store, SIGTERM handling |

The job status tables and run log live in ``bridge.state.jobs``.
"""

from bridge.scheduler.app import (
    ForegroundScheduler,
    ScheduleOutcome,
    build_scheduler,
    create_jobstore_table,
    remove_stale_jobs,
    run_scheduler,
    stored_next_run,
)
from bridge.scheduler.runtime import (
    JobContext,
    JobRunner,
    JobSkipped,
    ReconcileMismatch,
    SchedulerRuntime,
    current_runtime,
    default_worker_name,
    installed_runtime,
    run_reconcile_job,
    run_scheduled_job,
    run_sync_job,
    run_writeback_job,
)
from bridge.scheduler.triggers import build_triggers, next_fire_times, reconcile_trigger
from bridge.state.jobs import (
    JOB_ID_PREFIX,
    JOB_KINDS,
    JOBSTORE_TABLE,
    JobKind,
    JobRun,
    describe_error,
    finish_job_run,
    job_id,
    job_run_log,
    job_statuses,
    migrate_scheduler,
    parse_job_id,
    prepare_database,
    record_next_run,
    record_skip,
    start_job_run,
)

__all__ = [
    "JOBSTORE_TABLE",
    "JOB_ID_PREFIX",
    "JOB_KINDS",
    "ForegroundScheduler",
    "JobContext",
    "JobKind",
    "JobRun",
    "JobRunner",
    "JobSkipped",
    "ReconcileMismatch",
    "ScheduleOutcome",
    "SchedulerRuntime",
    "build_scheduler",
    "build_triggers",
    "create_jobstore_table",
    "current_runtime",
    "default_worker_name",
    "describe_error",
    "finish_job_run",
    "installed_runtime",
    "job_id",
    "job_run_log",
    "job_statuses",
    "migrate_scheduler",
    "next_fire_times",
    "parse_job_id",
    "prepare_database",
    "reconcile_trigger",
    "record_next_run",
    "record_skip",
    "remove_stale_jobs",
    "run_reconcile_job",
    "run_scheduled_job",
    "run_scheduler",
    "run_sync_job",
    "run_writeback_job",
    "start_job_run",
    "stored_next_run",
]
