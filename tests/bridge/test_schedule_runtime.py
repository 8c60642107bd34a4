"""The scheduler in-process with stand-in job runners: status rows, failures, stop, stale jobs."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import Engine, text

from bridge.scheduler import (
    JOBSTORE_TABLE,
    JobContext,
    JobSkipped,
    SchedulerRuntime,
    job_run_log,
    job_statuses,
    prepare_database,
    run_scheduled_job,
    run_scheduler,
)
from config import Settings


def _settings(db_url: str, **schedule: Any) -> Settings:
    return Settings.model_validate(
        {
            "PERKBRIDGE_DATABASE_URL": db_url,
            "schedule": {
                "businesses": ["b1", "b2"],
                "sync_interval_minutes": 0.005,  # 0.3 s
                "writeback_interval_seconds": 0.3,
                **schedule,
            },
            "writeback": {"enabled": True},
        }
    )


def _wait_for(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.05)


def _run_in_thread(
    settings: Settings, engine: Engine, runtime: SchedulerRuntime
) -> threading.Thread:
    thread = threading.Thread(
        target=run_scheduler,
        args=(settings, engine, runtime),
        kwargs={"config_file": None, "install_signals": False},
        daemon=True,
    )
    thread.start()
    return thread


def test_jobs_run_and_record_success_failure_and_next_run(
    db_url: str, db_engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PERKBRIDGE_DATABASE_URL", db_url)
    calls: list[tuple[str, str]] = []

    def sync(context: JobContext) -> dict[str, Any]:
        calls.append(("sync", context.business_id))
        return {"status": "succeeded", "read": 1, "applied": 1}

    def writeback(context: JobContext) -> None:
        calls.append(("writeback", context.business_id))
        if context.business_id == "b2":
            raise RuntimeError("perkville said no\nsecond line never stored")

    runtime = SchedulerRuntime(
        worker="w-test",
        engine=db_engine,
        runners={"sync": sync, "writeback": writeback, "reconcile": lambda c: None},
    )
    settings = _settings(db_url)
    thread = _run_in_thread(settings, db_engine, runtime)

    def seen_everything() -> bool:
        rows = {row["job_id"]: row for row in job_statuses(db_engine)}
        sync_b1 = rows.get("perkbridge:sync:b1") or {}
        wb_b2 = rows.get("perkbridge:writeback:b2") or {}
        return bool(sync_b1.get("last_success_at") and wb_b2.get("last_failure_at"))

    _wait_for(seen_everything)
    runtime.stop.set()
    thread.join(timeout=30)
    assert not thread.is_alive()

    rows = {row["job_id"]: row for row in job_statuses(db_engine)}
    assert set(rows) == {
        f"perkbridge:{kind}:{b}" for kind in ("sync", "writeback", "reconcile") for b in ("b1", "b2")
    }
    assert rows["perkbridge:writeback:b2"]["last_error"] == "RuntimeError: perkville said no"
    assert rows["perkbridge:writeback:b2"]["last_success_at"] is None
    assert rows["perkbridge:sync:b1"]["last_failure_at"] is None
    assert rows["perkbridge:sync:b1"]["worker"] == "w-test"
    # The nightly reconcile has not run, but its next run is known.
    assert rows["perkbridge:reconcile:b1"]["last_started_at"] is None
    assert rows["perkbridge:reconcile:b1"]["next_run_at"] is not None
    assert ("sync", "b1") in calls and ("writeback", "b2") in calls
    runs = job_run_log(db_engine, "b1")
    assert runs and all(r.finished_at is not None and r.worker == "w-test" for r in runs)
    assert {r.outcome for r in runs if r.kind == "sync"} <= {"success", "stopped"}
    # One job id never ran twice at the same time (max_instances=1).
    for kind in ("sync", "writeback"):
        spans = sorted((r.started_at, r.finished_at) for r in runs if r.kind == kind)
        for (_, end), (start, _) in zip(spans, spans[1:]):
            assert end is not None and end <= start


def test_a_gate_that_skips_records_no_run(db_url: str, db_engine: Engine) -> None:
    prepare_database(db_engine)

    class Gate:
        def __init__(self, context: JobContext) -> None:
            self.context = context

        def __enter__(self) -> None:
            raise JobSkipped("business b1 is run by another worker")

        def __exit__(self, *exc: object) -> None:
            return None

    ran: list[str] = []
    runtime = SchedulerRuntime(
        worker="w-gate", engine=db_engine, gate=Gate, runners={"sync": lambda c: ran.append("x")}
    )
    from bridge.scheduler import installed_runtime

    with installed_runtime(runtime):
        assert run_scheduled_job("sync", "b1", None) is None
    assert ran == []
    assert job_run_log(db_engine) == []
    (status,) = job_statuses(db_engine)
    assert status["last_outcome"] == "skipped"


def test_stale_jobs_of_dropped_businesses_are_removed(db_url: str, db_engine: Engine) -> None:
    prepare_database(db_engine)
    runners = {"sync": lambda c: None, "writeback": lambda c: None, "reconcile": lambda c: None}

    def run_once(settings: Settings) -> set[str]:
        runtime = SchedulerRuntime(worker="w", engine=db_engine, runners=runners)
        started = threading.Event()
        thread = threading.Thread(
            target=run_scheduler,
            args=(settings, db_engine, runtime),
            kwargs={
                "config_file": None,
                "install_signals": False,
                "on_started": lambda s: started.set(),
            },
            daemon=True,
        )
        thread.start()
        assert started.wait(30)
        runtime.stop.set()
        thread.join(timeout=30)
        with db_engine.connect() as conn:
            return {row[0] for row in conn.execute(text(f"SELECT id FROM {JOBSTORE_TABLE}"))}

    first = run_once(_settings(db_url))
    assert "perkbridge:sync:b2" in first
    second = run_once(_settings(db_url, businesses=["b1"]))
    assert second == {"perkbridge:sync:b1", "perkbridge:writeback:b1", "perkbridge:reconcile:b1"}
