"""``perkbridge schedule`` end to end: the real CLI, pipeline and sandbox, SIGTERM mid-sync.

The process exits 0 within the grace period with its current page committed (events, counters
and cursors agree); the next start finishes the job without losing or doubling anything.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select

from bridge.reconcile import Reconciler
from bridge.state import StateStore
from bridge.targets import EmbeddedTarget
from connectors.perkville.sandbox import Sandbox
from perkamo_core.service import CoreService
from perkamo_core.storage import events, spaces
from tests.bridge.conftest import make_client

ROOT = Path(__file__).resolve().parents[2]
GRACE_SECONDS = 60
SPACE = "sched"


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(seed=31, members=30, transactions=1500)
    box.start()
    try:
        yield box
    finally:
        box.stop()


def write_config(path: Path, db_url: str, box: Sandbox, *, space: str, extra: str) -> Path:
    """A TOML config pointing the CLI at ``box`` and ``db_url``; ``extra`` adds tables."""
    creds = box.credentials
    path.write_text(
        f'database_url = "{db_url}"\n'
        f'perkville_api_url = "{box.api_url}"\n'
        f'perkville_token_url = "{box.token_url}"\n'
        f'perkville_client_id = "{creds["client_id"]}"\n'
        f'perkville_client_secret = "{creds["client_secret"]}"\n'
        f'perkville_username = "{creds["username"]}"\n'
        f'perkville_password = "{creds["password"]}"\n'
        f'perkville_business_id = "{box.business_ids[0]}"\n'
        f'perkamo_space = "{space}"\n'
        "[perkville]\npage_size = 10\nrequests_per_second = 1000\n"
        "backoff_base_seconds = 0.01\nbackoff_max_seconds = 0.2\n" + extra,
        encoding="utf-8",
    )
    return path


def start_cli(config: Path, *args: str, log: Path | None = None) -> subprocess.Popen[bytes]:
    """``perkbridge --config CONFIG ARGS…`` in a subprocess, free of the caller's env settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PERKBRIDGE_", "PERKVILLE_", "PERKAMO_"))}
    out = log.open("wb") if log else subprocess.PIPE
    return subprocess.Popen(
        [sys.executable, "-m", "bridge", "--config", str(config), *args],
        cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT if log else subprocess.PIPE,
    )


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 240.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _event_count(engine: Engine) -> int:
    with engine.connect() as conn:
        space_id = conn.execute(select(spaces.c.id).where(spaces.c.slug == SPACE)).scalar()
        if space_id is None:
            return 0
        return int(conn.execute(
            select(func.count()).select_from(events).where(events.c.space_id == space_id)
        ).scalar() or 0)


def test_sigterm_mid_sync_commits_the_page_exits_0_and_the_next_start_finishes(
    db_url: str, db_engine: Engine, sandbox: Sandbox, tmp_path: Path
) -> None:
    config = write_config(
        tmp_path / "perkbridge.toml", db_url, sandbox, space=SPACE,
        extra="[schedule]\nsync_interval_minutes = 0.02\nlease_seconds = 5\n",
    )
    state = StateStore(db_engine)
    state.migrate()
    first = start_cli(config, "schedule", log=tmp_path / "first.log")
    try:
        def mid_transactions() -> bool:
            assert first.poll() is None, (tmp_path / "first.log").read_text()
            runs = state.runs.recent(None, 5)
            return any(r.status == "running" and r.counts.applied > 40 for r in runs)

        wait_for(mid_transactions, "the first sync to be in the middle of its transactions")
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=GRACE_SECONDS) == 0, (tmp_path / "first.log").read_text()
    finally:
        if first.poll() is None:
            first.kill()
    (stopped,) = state.runs.recent(None, 10)
    assert stopped.status == "stopped"
    # The committed pages and the run's counters agree: nothing half-written.
    assert 0 < _event_count(db_engine) <= stopped.counts.applied + stopped.counts.duplicate
    assert stopped.counts.read == (
        stopped.counts.applied + stopped.counts.duplicate + stopped.counts.skipped
        + stopped.counts.dead_lettered
    )
    assert [lease.name for lease in state.leases.all()] == []  # a clean stop hands leases back

    status = start_cli(config, "schedule", "--status", "--json")
    out, _ = status.communicate(timeout=60)
    assert status.returncode == 0
    jobs = {job["job_id"]: job for job in json.loads(out)["jobs"]}
    sync_job = jobs[f"perkbridge:sync:{sandbox.business_ids[0]}"]
    assert sync_job["last_outcome"] == "stopped" and sync_job["next_run_at"]

    second = start_cli(config, "schedule", log=tmp_path / "second.log")
    try:
        wait_for(
            lambda: any(r.status == "succeeded" for r in state.runs.recent(None, 10)),
            "a complete sync after the restart",
        )
        second.send_signal(signal.SIGTERM)
        assert second.wait(timeout=GRACE_SECONDS) == 0
    finally:
        if second.poll() is None:
            second.kill()
    runs = state.runs.recent(None, 50)
    applied = sum(r.counts.applied for r in runs if r.direction == "import")
    assert applied == _event_count(db_engine), "an event was applied twice or lost"
    client = make_client(sandbox)
    try:
        report = Reconciler(
            state=state, source=client,
            target=EmbeddedTarget(CoreService(db_engine), db_engine, SPACE),
            business=str(sandbox.business_ids[0]),
        ).compare()
    finally:
        client.close()
    assert report.ok and report.checked == 30
