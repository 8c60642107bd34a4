"""SIGTERM on ``perkbridge schedule``: the running job finishes its page, commits, the process
exits 0, and the next start resumes from the committed cursor without loss or doubling.

The job here is a stand-in paged pipeline (a cursor and a ledger committed together per page,
the stop flag checked between pages) so the test isolates the scheduler's shutdown path.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from sqlalchemy import Engine, text

from bridge.scheduler import JobContext, job_run_log

ROOT = Path(__file__).resolve().parents[2]
TOTAL = 400
PAGE = 4
GRACE_SECONDS = 60


def paged_sync(context: JobContext) -> dict[str, Any]:
    """Copy rows 1..TOTAL into the ledger, one page per transaction, until done or stopped."""
    while not context.stop.is_set():
        time.sleep(0.1)  # "fetching" the next page happens outside any transaction
        with context.engine.begin() as conn:
            cursor = conn.execute(text("SELECT value FROM sig_cursor WHERE id = 1")).scalar_one()
            if cursor >= TOTAL:
                return {"status": "succeeded"}
            rows = [{"seq": seq} for seq in range(cursor + 1, min(cursor + PAGE, TOTAL) + 1)]
            conn.execute(text("INSERT INTO sig_ledger (seq) VALUES (:seq)"), rows)
            time.sleep(0.05)  # a slow write: SIGTERM sometimes lands inside it
            conn.execute(
                text("UPDATE sig_cursor SET value = :v WHERE id = 1"), {"v": rows[-1]["seq"]}
            )
    return {"status": "stopped"}


def main() -> None:
    """Subprocess entry point: the real ``run_scheduler`` with the stand-in sync job."""
    from bridge.scheduler import SchedulerRuntime, run_scheduler
    from config import load_settings
    from perkamo_core.db import create_db_engine

    config_file = sys.argv[1]
    settings = load_settings(config_file)
    engine = create_db_engine(settings.database_url)
    runtime = SchedulerRuntime(
        worker=f"sigterm:{os.getpid()}",
        engine=engine,
        runners={"sync": paged_sync, "reconcile": lambda c: None, "writeback": lambda c: None},
    )
    outcome = run_scheduler(settings, engine, runtime, config_file=config_file)
    engine.dispose()
    print(f"stopped by {outcome.signal}", flush=True)


def _start(config: Path) -> subprocess.Popen[str]:
    code = "from tests.bridge.test_schedule_sigterm import main; main()"
    return subprocess.Popen(
        [sys.executable, "-c", code, str(config)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _cursor(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(text("SELECT value FROM sig_cursor WHERE id = 1")).scalar_one())


def _wait_for_progress(engine: Engine, proc: subprocess.Popen[str], above: int) -> None:
    deadline = time.monotonic() + 60
    while _cursor(engine) <= above:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the job made no progress"
        time.sleep(0.05)


def _terminate(proc: subprocess.Popen[str]) -> str:
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=GRACE_SECONDS)
    assert proc.returncode == 0, err
    return out


def test_sigterm_finishes_the_page_exits_0_and_resumes(
    db_url: str, db_engine: Engine, tmp_path: Path
) -> None:
    with db_engine.begin() as conn:
        conn.execute(text("CREATE TABLE sig_ledger (seq INTEGER PRIMARY KEY)"))
        conn.execute(text("CREATE TABLE sig_cursor (id INTEGER PRIMARY KEY, value INTEGER)"))
        conn.execute(text("INSERT INTO sig_cursor (id, value) VALUES (1, 0)"))
    config = tmp_path / "perkbridge.toml"
    config.write_text(
        f'database_url = "{db_url}"\n'
        'perkville_business_id = "sig"\n'
        "[schedule]\nsync_interval_minutes = 0.01\n",
        encoding="utf-8",
    )

    first = _start(config)
    _wait_for_progress(db_engine, first, above=PAGE * 2)
    assert "stopped by SIGTERM" in _terminate(first)
    stopped_at = _cursor(db_engine)
    assert 0 < stopped_at < TOTAL, "the job should have been interrupted mid-run"
    with db_engine.connect() as conn:
        ledger = [r[0] for r in conn.execute(text("SELECT seq FROM sig_ledger ORDER BY seq"))]
    assert ledger == list(range(1, stopped_at + 1)), "a page was half-committed"
    runs = job_run_log(db_engine, "sig")
    assert [r.outcome for r in runs if r.kind == "sync"][-1] == "stopped"

    second = _start(config)
    deadline = time.monotonic() + 120
    while _cursor(db_engine) < TOTAL:
        assert second.poll() is None, second.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.1)
    _terminate(second)
    with db_engine.connect() as conn:
        ledger = [r[0] for r in conn.execute(text("SELECT seq FROM sig_ledger ORDER BY seq"))]
    assert ledger == list(range(1, TOTAL + 1))
    assert all(r.finished_at is not None for r in job_run_log(db_engine, "sig"))
