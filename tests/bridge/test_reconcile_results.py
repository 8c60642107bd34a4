"""A reconcile against the sandbox stores each member's result under its run; a repair updates the
rows it adjusted; a failed comparison ends its run ``failed``; a bare compare stores nothing."""

from __future__ import annotations

from decimal import Decimal
from typing import IO

import pytest

from bridge.reconcile import Reconciler, ReconcileReport
from bridge.state import StateStore
from bridge.usecases import reconcile
from perkamo_core.models import EventInput
from tests.bridge.conftest import MEMBERS, SPACE, Bridge


def shift(bridge: Bridge, user: int, amount: int, txid: str) -> None:
    """Someone moves points in Perkamo behind the bridge's back."""
    bridge.service.ingest(
        SPACE,
        EventInput(user_id=f"perkville:{user}", event="perkville.balance_adjusted", transaction_id=txid,
                   context={"amount": amount}),
    )


def _reconcile_runs(state: StateStore) -> list[int]:
    return [run.id for run in state.runs.recent(limit=50) if run.direction == "reconcile"]


def test_a_reconcile_stores_every_member_under_its_run_and_a_repair_updates_them(bridge: Bridge) -> None:
    assert bridge.backfill().status == "succeeded"
    truth = bridge.box.true_balances()
    small, large = sorted(truth)[:2]
    shift(bridge, small, 3, "manual-1")
    shift(bridge, large, -40, "manual-2")

    report = bridge.reconcile()
    assert len(report.mismatches) == 2
    (run_id,) = _reconcile_runs(bridge.state)
    run = bridge.state.runs.get(run_id)
    assert run is not None and run.status == "mismatched" and run.details["checked"] == MEMBERS

    results = bridge.state.reconciled
    totals = results.totals(bridge.business)
    assert (totals.checked, totals.matched, totals.mismatched, totals.last_run_id) == (MEMBERS, MEMBERS - 2, 2, run_id)
    page = results.page(bridge.business, limit=MEMBERS)
    assert len(page) == MEMBERS and all(m.run_id == run_id for m in page)
    first, second = page[0], page[1]
    assert (first.perkville_user_id, first.difference, first.status) == (str(large), Decimal(40), "mismatch")
    assert (second.perkville_user_id, second.difference) == (str(small), Decimal(-3))
    assert first.perkville_balance == truth[large] and first.perkamo_balance == truth[large] - 40
    assert all(m.status == "match" and not m.flagged for m in page[2:])
    assert {m.perkville_user_id: m.perkville_balance for m in page} == {str(u): Decimal(b) for u, b in truth.items()}

    repaired = bridge.reconcile(repair=True)
    assert repaired.repaired == 2 and repaired.ok
    later = _reconcile_runs(bridge.state)[0]
    assert later != run_id
    row = results.get(bridge.business, str(large))
    assert row is not None and row.status == "repaired" and row.difference == 0 and row.run_id == later
    totals = results.totals(bridge.business)
    assert (totals.checked, totals.matched, totals.repaired, totals.flagged) == (MEMBERS, MEMBERS - 2, 2, 0)

    assert bridge.reconcile().ok  # the next reconcile finds them matching
    assert results.totals(bridge.business).matched == MEMBERS


def test_members_gone_from_perkville_are_dropped_and_a_bare_compare_stores_nothing(bridge: Bridge) -> None:
    bridge.backfill()
    bridge.reconcile()
    assert bridge.state.reconciled.count(bridge.business) == MEMBERS
    ledger = bridge.box.ledger
    with ledger.lock:
        gone = ledger.businesses[int(bridge.business)].connection_ids[0]
        del ledger.connections[gone]
        ledger.version += 1  # the sandbox's listings are cached per ledger version
    bridge.reconcile()
    assert bridge.state.reconciled.count(bridge.business) == MEMBERS - 1

    reconciler = Reconciler(state=bridge.state, source=bridge.client, target=bridge.target, business=bridge.business)
    before = bridge.state.reconciled.totals(bridge.business)
    reconciler.compare()  # the audit pack's read-only comparison: no run, no rows
    assert bridge.state.reconciled.totals(bridge.business) == before


class BrokenMidway(Reconciler):
    def compare(self, csv_out: IO[str] | None = None, *, run_id: int | None = None) -> ReconcileReport:
        raise RuntimeError("Perkville went away")


def test_a_failed_comparison_ends_its_run_failed_and_propagates(bridge: Bridge) -> None:
    bridge.backfill()
    broken = BrokenMidway(state=bridge.state, source=bridge.client, target=bridge.target, business=bridge.business)
    with pytest.raises(RuntimeError, match="Perkville went away"):
        reconcile(bridge.pipeline(), broken, mode="history")
    (run_id,) = _reconcile_runs(bridge.state)
    run = bridge.state.runs.get(run_id)
    assert run is not None and run.status == "failed" and "Perkville went away" in (run.error or "")
    assert run.finished_at is not None
