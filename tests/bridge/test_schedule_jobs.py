"""The scheduled job bodies against the sandbox: sync, write-back and reconcile for one business."""

from __future__ import annotations

import threading
from decimal import Decimal

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


def _add_earn(bridge: Bridge) -> int:
    """A new earn at the source for the lowest user id; returns that user."""
    member = min(c["user"] for c in bridge.box.ledger.connections.values())
    perk = next(p for p in bridge.box.ledger.perks.values()
                if p["classification"] == "EARN" and p["points"] > 0)
    bridge.box.add_transaction(perk=perk["perk_id"], user=member)
    return int(member)


def _shift_balance_without_a_row(bridge: Bridge, user: int, points: int) -> None:
    """Perkville's balance for ``user`` moves with no ledger row: no sync can explain it."""
    ledger = bridge.box.ledger
    connection = next(c for c in ledger.connections.values() if c["user"] == user)
    ledger.aggregates[connection["connection_id"]].balance += points


def test_the_nightly_reconcile_syncs_first_so_unsynced_rows_are_no_mismatch(bridge: Bridge, db_url: str) -> None:
    first = run_sync_job(_context(bridge, "sync", db_url))
    assert first["status"] == "succeeded" and "written_back" not in first
    report = run_reconcile_job(_context(bridge, "reconcile", db_url))
    assert report["checked"] == MEMBERS and report["mismatches"] == [] and report["repaired"] == 0

    _add_earn(bridge)  # not synced yet: the reconcile's own sync pass brings it in
    report = run_reconcile_job(_context(bridge, "reconcile", db_url))
    assert report["mismatches"] == [] and report["repaired"] == 0
    assert bridge.reconcile().ok

    again = run_sync_job(_context(bridge, "sync", db_url, enabled=True))
    assert again["status"] == "succeeded"
    assert again["written_back"] == 0 and again["writeback_dead_lettered"] == 0


def test_the_nightly_reconcile_repairs_what_no_row_explains_and_converges(bridge: Bridge, db_url: str) -> None:
    run_sync_job(_context(bridge, "sync", db_url))
    user = _add_earn(bridge)
    _shift_balance_without_a_row(bridge, user, 7)
    report = run_reconcile_job(_context(bridge, "reconcile", db_url))
    assert [m["difference"] for m in report["mismatches"]] == [Decimal(7)]
    assert report["repaired"] == 1 and report["remaining"] == [] and report["pending"] == []
    assert bridge.reconcile().ok

    _shift_balance_without_a_row(bridge, user, -10)  # now Perkamo is above: adjusted back down
    report = run_reconcile_job(_context(bridge, "reconcile", db_url))
    assert [m["difference"] for m in report["mismatches"]] == [Decimal(-10)]
    assert report["repaired"] == 1
    assert bridge.reconcile().ok
    assert run_reconcile_job(_context(bridge, "reconcile", db_url))["repaired"] == 0  # converged


def test_a_report_only_nightly_reconcile_fails_on_a_mismatch(bridge: Bridge, db_url: str) -> None:
    run_sync_job(_context(bridge, "sync", db_url))
    _shift_balance_without_a_row(bridge, _add_earn(bridge), 3)
    context = _context(bridge, "reconcile", db_url)
    context.settings = context.settings.model_copy(
        update={"schedule": context.settings.schedule.model_copy(update={"reconcile_repair": False})}
    )
    with pytest.raises(ReconcileMismatch, match="1 mismatched"):
        run_reconcile_job(context)
    assert not bridge.reconcile().ok  # nothing was adjusted


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
