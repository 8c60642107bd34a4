"""`perkbridge status` shows each scheduled job's last success, last failure and next run."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import pytest

from bridge.cli import main
from bridge.scheduler import finish_job_run, prepare_database, record_next_run, start_job_run
from perkamo_core.db import create_db_engine


def _status(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = 0
    try:
        main(["status", *args])
    except SystemExit as exc:
        code = int(exc.code or 0)
    return code, capsys.readouterr().out


def test_status_lists_scheduled_jobs(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PERKBRIDGE_DATABASE_URL", db_url)
    monkeypatch.delenv("PERKVILLE_BUSINESS_ID", raising=False)
    engine = create_db_engine(db_url)
    try:
        prepare_database(engine)
        t0 = datetime(2026, 11, 1, 3, 0, tzinfo=timezone.utc)
        ok = start_job_run(engine, "perkbridge:sync:25", "worker-a", t0)
        finish_job_run(engine, ok, "perkbridge:sync:25", "success", t0 + timedelta(seconds=5))
        bad = start_job_run(engine, "perkbridge:sync:25", "worker-a", t0 + timedelta(minutes=15))
        finish_job_run(
            engine, bad, "perkbridge:sync:25", "failure", t0 + timedelta(minutes=16), "timeout"
        )
        record_next_run(engine, "perkbridge:sync:25", t0 + timedelta(minutes=30))
    finally:
        engine.dispose()

    code, out = _status(capsys, "--json")
    assert code == 0
    (job,) = json.loads(out)["jobs"]
    assert job["job_id"] == "perkbridge:sync:25"
    assert job["last_success_at"].startswith("2026-11-01T03:00:05")
    assert job["last_failure_at"].startswith("2026-11-01T03:16:00")
    assert job["next_run_at"].startswith("2026-11-01T03:30:00")

    code, out = _status(capsys)
    assert code == 0
    line = next(row for row in out.splitlines() if "perkbridge:sync:25" in row)
    assert "2026-11-01 03:00:05" in line or "2026-11-01T03:00:05" in line
    assert "03:30:00" in line


def test_status_without_scheduler_says_so(
    db_url: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PERKBRIDGE_DATABASE_URL", db_url)
    code, out = _status(capsys, "--json")
    assert code == 0
    assert json.loads(out)["jobs"] == []
    code, out = _status(capsys)
    assert "scheduler has not run" in out
