"""The job queue without workers: its migration, ``backfill --enqueue``, ``jobs list|retry|cancel``,
the arguments it stores, stalled-job recovery and ``queue_summary``; ``worker`` refuses SQLite."""

from __future__ import annotations

import asyncio
import json
import os
import threading
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text
from typer.testing import CliRunner

from bridge.cli import app as cli_app
from bridge.queue.app import build_app, interval_cron
from bridge.queue.ops import queue_summary
from bridge.queue.worker import retry_stalled, use_job_threads
from bridge.state import StateStore
from config import Settings
from perkamo_core.db import create_db_engine

SECRETS = {
    "PERKVILLE_CLIENT_ID": "client-7",
    "PERKVILLE_CLIENT_SECRET": "cs-very-secret-9f2",
    "PERKVILLE_USERNAME": "staff@example.com",
    "PERKVILLE_PASSWORD": "pw-very-secret-41c",
    "PERKAMO_SECRET_KEY": "sk-very-secret-77d",
}


def _cli(db_url: str, *args: str) -> Any:
    from bridge.cli import common

    common.STATE.config_file = None
    common.STATE._settings = None
    env = {"PERKBRIDGE_DATABASE_URL": db_url, "PERKVILLE_BUSINESS_ID": "41", **SECRETS}
    return CliRunner().invoke(cli_app, list(args), env=env)


def _settings(db_url: str) -> Settings:
    return Settings.model_validate({"PERKBRIDGE_DATABASE_URL": db_url, "PERKVILLE_BUSINESS_ID": "41"})


def _tables(engine: Engine) -> set[str]:
    from sqlalchemy import inspect

    with engine.connect() as conn:
        return set(inspect(conn).get_table_names())


def _versions(engine: Engine) -> list[int]:
    with engine.connect() as conn:
        return [
            row[0]
            for row in conn.execute(
                text("SELECT version FROM schema_migrations WHERE component = 'bridge' ORDER BY version")
            )
        ]


def test_the_migration_applies_the_queue_schema_once_on_postgresql(pg_engine: Engine) -> None:
    StateStore(pg_engine).migrate()
    assert {"procrastinate_jobs", "procrastinate_workers", "procrastinate_periodic_defers"} <= _tables(pg_engine)
    StateStore(pg_engine).migrate()  # a second start: nothing re-applied
    assert _versions(pg_engine).count(7) == 1
    assert queue_summary(pg_engine) == {
        "depth": 0, "due": 0, "workers": 0, "running": [], "failed": [],
        "counts": dict.fromkeys(
            ("todo", "doing", "succeeded", "failed", "cancelled", "aborting", "aborted"), 0
        ),
    }


def test_the_migration_is_a_no_op_on_sqlite(tmp_path: Path) -> None:
    engine = create_db_engine(f"sqlite:///{tmp_path / 'q.db'}")
    try:
        StateStore(engine).migrate()
        assert 7 in _versions(engine)
        assert not any(name.startswith("procrastinate") for name in _tables(engine))
        assert queue_summary(engine) is None
    finally:
        engine.dispose()


@pytest.mark.parametrize("command", [["worker"], ["jobs", "list"], ["backfill", "--enqueue"]])
def test_the_queue_commands_exit_3_on_sqlite_naming_why(tmp_path: Path, command: list[str]) -> None:
    result = _cli(f"sqlite:///{tmp_path / 'q.db'}", *command)
    assert result.exit_code == 3, result.output
    assert "needs PostgreSQL" in result.output and "perkbridge schedule" in result.output
    assert "Traceback" not in result.output


def test_enqueue_list_cancel_and_retry(pg_url: str, pg_engine: Engine) -> None:
    first = _cli(pg_url, "backfill", "--enqueue", "--json", "--since", "2024-01-01T00:00:00Z")
    assert first.exit_code == 0, first.output
    job_id = json.loads(first.output)["job_id"]

    again = _cli(pg_url, "backfill", "--enqueue")
    assert again.exit_code == 1 and "already waiting in the queue" in again.output

    listed = _cli(pg_url, "jobs", "list", "--json", "--business", "41")
    assert listed.exit_code == 0, listed.output
    [job] = json.loads(listed.output)["jobs"]
    assert job["id"] == job_id and job["kind"] == "backfill" and job["status"] == "todo"
    assert job["lock"] == "import:41"
    assert job["args"] == {"business_id": "41", "mode": "history", "since": "2024-01-01T00:00:00+00:00"}
    assert json.loads(_cli(pg_url, "jobs", "list", "--json", "--business", "42").output)["jobs"] == []

    # Job arguments hold business ids and options only: never a secret.
    with pg_engine.connect() as conn:
        stored = " ".join(json.dumps(row[0]) for row in conn.execute(text("SELECT args FROM procrastinate_jobs")))
    assert not [name for name, value in SECRETS.items() if value in stored]

    summary = queue_summary(pg_engine)
    assert summary is not None and summary["depth"] == 1 and summary["due"] == 1

    wrong = _cli(pg_url, "jobs", "cancel", str(job_id), "--business", "42")
    assert wrong.exit_code == 2 and "not a job of business 42" in wrong.output
    cancelled = _cli(pg_url, "jobs", "cancel", str(job_id), "--json")
    assert cancelled.exit_code == 0, cancelled.output
    assert json.loads(cancelled.output)["jobs"][0]["status"] == "cancelled"
    refused = _cli(pg_url, "jobs", "retry", str(job_id))
    assert refused.exit_code == 2 and "only a failed or running job" in refused.output

    # A failed job (as a worker leaves it after its last attempt) goes back in the queue.
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE procrastinate_jobs SET status = 'failed' WHERE id = :id"), {"id": job_id})
    assert queue_summary(pg_engine)["failed"][0]["id"] == job_id  # type: ignore[index]
    retried = _cli(pg_url, "jobs", "retry", str(job_id), "--json")
    assert retried.exit_code == 0, retried.output
    assert json.loads(retried.output)["jobs"][0]["status"] == "todo"
    assert _cli(pg_url, "jobs", "retry", "999999").exit_code == 2

    status = _cli(pg_url, "status", "--json")
    assert status.exit_code == 0, status.output
    assert json.loads(status.output)["queue"]["depth"] == 1
    text_status = _cli(pg_url, "status")
    assert text_status.exit_code == 0 and "job queue: 1 waiting (1 due), 0 running, 0 failed" in text_status.output


def test_a_job_of_a_silent_worker_is_retried(pg_url: str, pg_engine: Engine) -> None:
    StateStore(pg_engine).migrate()
    app = build_app(_settings(pg_url))
    with app.open():
        from bridge.queue.ops import enqueue_backfill

        job_id = enqueue_backfill(app, "41", {})
    with pg_engine.begin() as conn:
        live = conn.execute(text("INSERT INTO procrastinate_workers DEFAULT VALUES RETURNING id")).scalar_one()
        dead = conn.execute(
            text(
                "INSERT INTO procrastinate_workers (last_heartbeat) VALUES (now() - interval '1 hour') "
                "RETURNING id"
            )
        ).scalar_one()
        conn.execute(
            text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w WHERE id = :id"),
            {"w": live, "id": job_id},
        )
    summary = queue_summary(pg_engine)
    assert summary is not None and summary["running"][0]["worker_id"] == live

    async def recover() -> list[int]:
        async with build_app(_settings(pg_url), worker=True).open_async() as opened:
            return await retry_stalled(opened, 30)

    assert asyncio.run(recover()) == []  # its worker is alive: nothing to recover
    with pg_engine.begin() as conn:
        conn.execute(text("UPDATE procrastinate_jobs SET worker_id = :w WHERE id = :id"), {"w": dead, "id": job_id})
    assert asyncio.run(recover()) == [job_id]
    assert _status(pg_engine, job_id) == "todo"

    # Stalled again, while the same job (kind and business) waits: the stalled one is marked
    # failed, so it no longer holds the business's lock, and the waiting one runs.
    with pg_engine.begin() as conn:
        conn.execute(
            text("UPDATE procrastinate_jobs SET status = 'doing', worker_id = :w WHERE id = :id"),
            {"w": dead, "id": job_id},
        )
    with app.open():
        waiting = enqueue_backfill(app, "41", {})
    assert asyncio.run(recover()) == []
    assert (_status(pg_engine, job_id), _status(pg_engine, waiting)) == ("failed", "todo")


def _status(engine: Engine, job_id: int) -> str:
    with engine.connect() as conn:
        status = conn.execute(text("SELECT status FROM procrastinate_jobs WHERE id = :id"), {"id": job_id})
        return str(status.scalar_one())


@pytest.mark.parametrize(
    ("seconds", "cron"),
    [(5, "* * * * * */5"), (60, "*/1 * * * * 0"), (900, "*/15 * * * * 0"), (7200, "0 */2 * * * 0")],
)
def test_intervals_become_crons(seconds: float, cron: str) -> None:
    assert interval_cron(seconds) == cron


@pytest.mark.parametrize("seconds", [7, 0.5, 90, 4000])
def test_an_interval_off_the_clock_is_a_configuration_error(seconds: float) -> None:
    from bridge.errors import ConfigurationError

    with pytest.raises(ConfigurationError, match="interval"):
        interval_cron(seconds)


def test_a_second_schedule_on_one_database_exits_naming_the_holder(db_url: str, db_engine: Engine) -> None:
    from datetime import timedelta

    from bridge.cli.schedule_cmd import SchedulerRunningError, run_single
    from bridge.scheduler import prepare_database
    from bridge.state.jobs import SCHEDULER_LEASE

    prepare_database(db_engine)
    holder = "other-host:4242:abcd"  # a live scheduler elsewhere
    assert StateStore(db_engine).leases.try_acquire(SCHEDULER_LEASE, holder, timedelta(minutes=5))
    with pytest.raises(SchedulerRunningError, match="other-host:4242:abcd.*perkbridge worker"):
        run_single(_settings(db_url), db_engine, config_file=None)
    assert [lease.owner for lease in StateStore(db_engine).leases.all()] == [holder]


def test_each_business_gets_its_periodic_jobs_with_its_locks(pg_url: str) -> None:
    from bridge.queue.app import register_periodic

    settings = Settings.model_validate({
        "PERKBRIDGE_DATABASE_URL": pg_url,
        "schedule": {"businesses": ["25", "26"], "sync_interval_minutes": 15, "writeback_interval_seconds": 30},
        "writeback": {"enabled": True},
    })
    app = build_app(settings)
    register_periodic(app, settings, ["25", "26"])
    periodic = app.periodic_registry.periodic_tasks
    assert sorted(periodic) == [
        (f"perkbridge.{kind}", business)
        for kind in ("reconcile", "sync", "writeback") for business in ("25", "26")
    ]
    sync = periodic[("perkbridge.sync", "25")]
    assert sync.cron == "*/15 * * * * 0"
    assert sync.configure_kwargs == {
        "lock": "import:25", "queueing_lock": "sync:25", "task_kwargs": {"business_id": "25"}
    }
    assert periodic[("perkbridge.writeback", "26")].configure_kwargs["lock"] == "writeback:26"
    assert periodic[("perkbridge.reconcile", "26")].cron == "0 3 * * *"


def test_schedule_and_workers_refuse_to_run_beside_each_other(pg_url: str, pg_engine: Engine) -> None:
    from datetime import timedelta

    from bridge.cli.schedule_cmd import SchedulerRunningError, run_single
    from bridge.errors import ConfigurationError
    from bridge.queue.worker import run_worker
    from bridge.scheduler import prepare_database
    from bridge.state.jobs import SCHEDULER_LEASE

    prepare_database(pg_engine)
    with pg_engine.begin() as conn:  # a live worker's heartbeat
        conn.execute(text("INSERT INTO procrastinate_workers DEFAULT VALUES"))
    with pytest.raises(SchedulerRunningError, match="1 perkbridge worker processes run against this database"):
        run_single(_settings(pg_url), pg_engine, config_file=None)
    with pg_engine.begin() as conn:
        conn.execute(text("DELETE FROM procrastinate_workers"))

    store = StateStore(pg_engine).leases
    assert store.try_acquire(SCHEDULER_LEASE, "other-host:7:beef", timedelta(minutes=5))
    with pytest.raises(ConfigurationError, match="perkbridge schedule runs against this database"):
        run_worker(_settings(pg_url), pg_engine, config_file=None)


def test_every_job_slot_gets_a_thread_whatever_the_cpu_count(monkeypatch: pytest.MonkeyPatch) -> None:
    """Jobs run through Procrastinate's ``sync_to_async``, in the loop's default executor; asyncio
    would size it by the CPU count (5 threads for 1 CPU) and cap 8 slots at 5 jobs at once."""
    from procrastinate.utils import sync_to_async

    monkeypatch.setattr(os, "cpu_count", lambda: 1)
    slots = 8
    all_running = threading.Barrier(slots, timeout=30)  # passes only with the 8 jobs at once

    async def run_jobs() -> None:
        use_job_threads(asyncio.get_running_loop(), slots)
        await asyncio.gather(*(sync_to_async(all_running.wait) for _ in range(slots)))

    asyncio.run(run_jobs())
    assert not all_running.broken


@pytest.mark.parametrize("zone, due_utc", [
    ("America/New_York", "2026-12-06T08:00:00+00:00"),  # 03:00 EST
    ("America/New_York", "2026-07-06T07:00:00+00:00"),  # 03:00 EDT
    ("UTC", "2026-12-06T03:00:00+00:00"),
])
def test_workers_read_the_reconcile_cron_in_perkville_timezone(zone: str, due_utc: str) -> None:
    """Procrastinate reads a cron in UTC; the reconcile's is the business's local night, as
    ``perkbridge schedule`` reads it. Checked through Procrastinate's own deferrer."""
    from datetime import datetime, timedelta

    from procrastinate.periodic import PeriodicDeferrer

    from bridge.queue.app import register_periodic

    settings = Settings.model_validate({
        "PERKBRIDGE_DATABASE_URL": "postgresql+psycopg://bridge@127.0.0.1:1/never_opened",
        "PERKVILLE_TIMEZONE": zone,
        "schedule": {"businesses": ["25"], "sync_interval_minutes": 15, "reconcile_cron": "0 3 * * *"},
    })
    app = build_app(settings)
    register_periodic(app, settings, ["25"])
    periodic = app.periodic_registry.periodic_tasks
    deferrer = PeriodicDeferrer(app.periodic_registry)
    due = datetime.fromisoformat(due_utc)

    def deferred(kind: str, at: datetime) -> list[datetime]:
        stamps = deferrer.get_timestamps(periodic[(f"perkbridge.{kind}", "25")], since=None, until=at.timestamp())
        return [datetime.fromtimestamp(stamp, due.tzinfo) for stamp in stamps]

    assert deferred("reconcile", due + timedelta(minutes=2)) == [due]
    assert deferred("reconcile", due - timedelta(minutes=2)) == []  # the day before's is long past
    # The intervals stay on the UTC clock: every 15 minutes whatever the zone.
    assert deferred("sync", due + timedelta(minutes=2)) == [due]
