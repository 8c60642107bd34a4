"""Several ``perkbridge schedule`` workers on one PostgreSQL database share six businesses.

Three real worker processes (the CLI) run against a six-business Perkville sandbox served from
this process. One worker is killed with SIGKILL in the middle of a run; the others take its
businesses over once its leases expire. Every business converges (new activity after the kill
arrives too) and reconciles exactly, and neither the bridge run log nor the scheduler's job runs
show two overlapping runs of one business in one direction.
"""

from __future__ import annotations

import signal
from collections import defaultdict
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from bridge.reconcile import Reconciler
from bridge.scheduler import job_run_log
from bridge.state import StateStore
from bridge.targets import EmbeddedTarget
from bridge.workers import fair_share
from connectors.perkville.sandbox import Sandbox
from perkamo_core.service import CoreService
from tests.bridge.conftest import make_client
from tests.bridge.test_schedule_cli import start_cli, wait_for, write_config

BUSINESSES = 6
MEMBERS = 12
TRANSACTIONS = 240
LEASE_SECONDS = 5
SPACE = "multi"


@pytest.fixture(params=["postgresql"])
def db_backend(request: pytest.FixtureRequest) -> str:
    """Several workers need PostgreSQL: this test runs on it only."""
    return str(request.param)


@pytest.fixture
def sandbox() -> Iterator[Sandbox]:
    box = Sandbox(seed=23, businesses=BUSINESSES, members=MEMBERS, transactions=TRANSACTIONS)
    box.start()
    try:
        yield box
    finally:
        box.stop()


def _pid(owner: str | None) -> int | None:
    parts = (owner or "").split(":")
    return int(parts[1]) if len(parts) >= 2 and parts[1].isdigit() else None


def _assert_no_overlap(
    spans: list[tuple[datetime, datetime | None, str, int | None]], killed_pid: int, killed_at: datetime
) -> None:
    """Spans of one (business, direction), any order: none may overlap another."""
    ordered = sorted(spans, key=lambda s: s[0])
    for (start, end, status, pid), (next_start, *_rest) in zip(ordered, ordered[1:]):
        if end is None:
            # Only the killed worker may leave a run without an end: it ended at the kill.
            assert pid == killed_pid, f"run started {start} ({status}) never finished"
            end = killed_at
        assert end <= next_start, f"runs overlap: {start}..{end} and one starting {next_start}"


def test_three_workers_share_six_businesses_and_survive_a_kill(
    db_url: str, db_engine: Engine, sandbox: Sandbox, tmp_path: Path
) -> None:
    assert fair_share(BUSINESSES, 3) == 2
    businesses = ", ".join(f'"{b}"' for b in sandbox.business_ids)
    config = write_config(
        tmp_path / "perkbridge.toml", db_url, sandbox, space=SPACE,
        extra=(
            f"[schedule]\nbusinesses = [{businesses}]\nsync_interval_minutes = 0.02\n"
            f"writeback_interval_seconds = 1\nlease_seconds = {LEASE_SECONDS}\n"
            "misfire_grace_seconds = 5\n[writeback]\nenabled = true\n"
        ),
    )
    state = StateStore(db_engine)
    state.migrate()
    workers = [start_cli(config, "schedule", log=tmp_path / f"worker-{n}.log") for n in range(3)]
    survivors = workers[1:]
    try:
        victim = workers[0]

        def victim_mid_run() -> bool:
            assert victim.poll() is None, (tmp_path / "worker-0.log").read_text()
            return any(
                run.status == "running" and _pid(_owner(state, run.id)) == victim.pid
                for run in state.runs.recent(None, 50)
            )

        wait_for(victim_mid_run, "the first worker to be in the middle of a run")
        victim.send_signal(signal.SIGKILL)
        victim.wait(timeout=30)
        killed_at = datetime.now(UTC)

        # New activity after the kill must still arrive, for every business.
        added_at = datetime.now(UTC)
        for business in sandbox.business_ids:
            perk = next(
                p for p in sorted(sandbox.ledger.perks.values(), key=lambda p: p["perk_id"])
                if p["business"] == business and p["classification"] == "EARN" and p["points"] > 0
            )
            user = min(c["user"] for c in sandbox.ledger.connections.values() if c["business"] == business)
            sandbox.add_transaction(business=business, perk=perk["perk_id"], user=user)

        def converged() -> bool:
            for worker in survivors:
                assert worker.poll() is None, "a surviving worker died"
            done = {
                run.business
                for run in state.runs.recent(None, 500)
                if run.direction == "import" and run.status == "succeeded"
                and run.started_at >= added_at + timedelta(seconds=2)
            }
            return done >= {str(b) for b in sandbox.business_ids}

        wait_for(converged, "every business to sync after the kill")
        for worker in survivors:
            worker.send_signal(signal.SIGTERM)
        for worker in survivors:
            assert worker.wait(timeout=120) == 0
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait(timeout=30)

    # Every business reconciles exactly, each in its own Space.
    service = CoreService(db_engine)
    client = make_client(sandbox)
    try:
        for business in sandbox.business_ids:
            report = Reconciler(
                state=state,
                source=client,
                target=EmbeddedTarget(service, db_engine, f"{SPACE}-{business}"),
                business=str(business),
            ).compare()
            assert report.ok, (business, report.to_json())
            assert report.checked == MEMBERS
    finally:
        client.close()

    # No overlapping runs per (business, direction) in the bridge run log ...
    by_lane: dict[tuple[str, str], list[Any]] = defaultdict(list)
    for run in state.runs.recent(None, 10_000):
        by_lane[(run.business, run.direction)].append(
            (run.started_at, run.finished_at, run.status, _pid(_owner(state, run.id)))
        )
    assert {lane[1] for lane in by_lane} >= {"import", "writeback"}
    for spans in by_lane.values():
        _assert_no_overlap(spans, victim.pid, killed_at)
    # ... nor in the scheduler's job runs, and the survivors took every business over.
    job_lanes: dict[tuple[str, str], list[Any]] = defaultdict(list)
    after_kill: set[str] = set()
    for job in job_run_log(db_engine):
        job_lanes[(job.business_id, job.kind)].append(
            (job.started_at, job.finished_at, job.outcome or "running", _pid(job.worker))
        )
        if job.started_at > killed_at and job.outcome == "success":
            assert _pid(job.worker) in {w.pid for w in survivors}
            after_kill.add(job.business_id)
    for spans in job_lanes.values():
        _assert_no_overlap(spans, victim.pid, killed_at)
    assert after_kill == {str(b) for b in sandbox.business_ids}
    # Clean stops handed every lease back.
    assert [lease.name for lease in state.leases.all() if not lease.expired(datetime.now(UTC))] == []


def _owner(state: StateStore, run_id: int) -> str | None:
    from sqlalchemy import select

    from bridge.state.schema import runs

    with state.engine.connect() as conn:
        return conn.execute(select(runs.c.owner).where(runs.c.id == run_id)).scalar()
