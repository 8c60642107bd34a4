"""The scheduled job bodies against the sandbox: sync, write-back and reconcile for one business."""

from __future__ import annotations

import threading

import pytest

from bridge.scheduler import (
    JobContext,
    ReconcileMismatch,
    run_reconcile_job,
    run_sync_job,
    run_writeback_job,
)
from config import Settings
from tests.bridge.conftest import MEMBERS, SPACE, Bridge, sandbox_settings


def _context(bridge: Bridge, kind: str, db_url: str, **writeback: object) -> JobContext:
    settings = Settings.model_validate(
        {
            **sandbox_settings(bridge.box, db_url),
            "PERKVILLE_BUSINESS_ID": bridge.business,
            "PERKAMO_SPACE": SPACE,
            "perkville": {"page_size": 50, "requests_per_second": 1000},
            "writeback": writeback,
        }
    )
    return JobContext(
        kind, bridge.business, settings, bridge.engine, threading.Event(), "w-test", None  # type: ignore[arg-type]
    )


def test_sync_then_reconcile_jobs_and_a_mismatch_is_a_failure(bridge: Bridge, db_url: str) -> None:
    first = run_sync_job(_context(bridge, "sync", db_url))
    assert first["status"] == "succeeded" and "written_back" not in first
    report = run_reconcile_job(_context(bridge, "reconcile", db_url))
    assert report["checked"] == MEMBERS and report["mismatches"] == []

    member = min(c["user"] for c in bridge.box.ledger.connections.values())
    perk = next(p for p in bridge.box.ledger.perks.values()
                if p["classification"] == "EARN" and p["points"] > 0)
    bridge.box.add_transaction(perk=perk["perk_id"], user=member)
    with pytest.raises(ReconcileMismatch, match="1 mismatched"):
        run_reconcile_job(_context(bridge, "reconcile", db_url))

    again = run_sync_job(_context(bridge, "sync", db_url, enabled=True))
    assert again["status"] == "succeeded"
    assert again["written_back"] == 0 and again["writeback_dead_lettered"] == 0
    assert run_reconcile_job(_context(bridge, "reconcile", db_url))["mismatches"] == []


def test_writeback_job_does_nothing_when_disabled(bridge: Bridge, db_url: str) -> None:
    assert run_writeback_job(_context(bridge, "writeback", db_url)) == {"status": "disabled"}
    body = run_writeback_job(_context(bridge, "writeback", db_url, enabled=True))
    assert body["status"] == "succeeded" and body["written_back"] == 0


def test_reconcile_job_waits_for_a_running_sync_and_a_stop_ends_the_wait(
    bridge: Bridge, db_url: str
) -> None:
    from datetime import timedelta

    from bridge.scheduler import JobSkipped
    from bridge.state import lease_name

    run_sync_job(_context(bridge, "sync", db_url))
    held = bridge.state.leases.try_acquire(
        lease_name(bridge.business, "import"), "a-running-sync", timedelta(seconds=60)
    )
    assert held is not None
    context = _context(bridge, "reconcile", db_url)
    context.stop.set()
    assert run_reconcile_job(context) == {"status": "stopped"}
    impatient = _context(bridge, "reconcile", db_url)
    impatient.settings.schedule.misfire_grace_seconds = 1
    with pytest.raises(JobSkipped, match="stayed busy"):
        run_reconcile_job(impatient)
    bridge.state.leases.release(lease_name(bridge.business, "import"), "a-running-sync")
    assert run_reconcile_job(_context(bridge, "reconcile", db_url))["mismatches"] == []
