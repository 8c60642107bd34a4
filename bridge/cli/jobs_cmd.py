"""``perkbridge jobs list|retry|cancel``: the workers' queue, through Procrastinate's job manager."""

from __future__ import annotations

from typing import Any

import typer

from bridge.cli import common

jobs_app = typer.Typer(help="The job queue of perkbridge worker (PostgreSQL): list, retry, cancel.", no_args_is_help=True)

JsonOpt = typer.Option(False, "--json", help="Machine-readable output.")
BusinessOpt = typer.Option(None, "--business", help="Only this business's jobs.")


def _print(rows: list[dict[str, Any]], json_output: bool) -> None:
    if json_output:
        common.print_json({"jobs": rows})
        return
    if not rows:
        typer.echo("no jobs")
        return
    for row in rows:
        typer.echo(
            f"{row['id']:>8}  {row['kind']:<9} {str(row['business']):<12} {row['status']:<10} "
            f"attempts {row['attempts']}  worker {row['worker_id'] if row['worker_id'] is not None else '-'}"
            f"  at {str(row['scheduled_at'] or '-')[:19]}"
        )


def _run(action: Any) -> Any:
    from bridge.queue.ops import JobNotFoundError, opened_app

    settings = common.settings()
    with common.bridge_errors():
        try:
            with opened_app(settings) as app:
                return action(app)
        except JobNotFoundError as exc:
            common.fail(str(exc), common.EXIT_USAGE)


@jobs_app.command("list")
def list_cmd(
    business: str | None = BusinessOpt,
    status: str | None = typer.Option(
        None, "--status", help="todo, doing, succeeded, failed, cancelled, aborting or aborted."
    ),
    limit: int = typer.Option(200, "--limit", min=1, help="At most this many, newest first."),
    json_output: bool = JsonOpt,
) -> None:
    """The queue's jobs, newest first: kind, business, status, attempts, the worker running it."""
    from bridge.queue.ops import JOB_STATUSES, list_jobs

    if status is not None and status not in JOB_STATUSES:
        common.fail(f"--status must be one of {', '.join(JOB_STATUSES)}, not {status!r}", common.EXIT_USAGE)
    rows = _run(lambda app: list_jobs(app, business=business, status=status, limit=limit))
    _print(rows, json_output)


def _one(job_id: int, business: str | None, action: Any, json_output: bool) -> None:
    from bridge.queue.ops import JobNotFoundError, list_jobs

    def checked(app: Any) -> Any:
        if business is not None and not any(row["id"] == job_id for row in list_jobs(app, business=business)):
            raise JobNotFoundError(f"job {job_id} is not a job of business {business}")
        return action(app, job_id)

    _print([_run(checked)], json_output)


@jobs_app.command("retry")
def retry_cmd(
    job_id: int = typer.Argument(..., help="The job's id (perkbridge jobs list)."),
    business: str | None = typer.Option(None, "--business", help="Refuse unless the job is this business's."),
    json_output: bool = JsonOpt,
) -> None:
    """Put a failed (or stalled) job back in the queue, due now."""
    from bridge.queue.ops import retry_job

    _one(job_id, business, retry_job, json_output)


@jobs_app.command("cancel")
def cancel_cmd(
    job_id: int = typer.Argument(..., help="The job's id (perkbridge jobs list)."),
    business: str | None = typer.Option(None, "--business", help="Refuse unless the job is this business's."),
    json_output: bool = JsonOpt,
) -> None:
    """Cancel a waiting job; a running backfill stops after its current page (ends aborted)."""
    from bridge.queue.ops import cancel_job

    _one(job_id, business, cancel_job, json_output)


def register(app: typer.Typer) -> None:
    """Add ``jobs`` to ``app``."""
    app.add_typer(jobs_app, name="jobs")
