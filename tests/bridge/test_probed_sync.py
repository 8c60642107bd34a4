"""Sync on a Perkville whose transactions carry no ``last_mod_dt`` (and which ignores filters it
does not know): with the probed schema it reads by ``transaction_dt`` with the look-back, and every
member still reconciles exactly."""

from __future__ import annotations

import logging

import pytest

from connectors.perkville.schema import discover
from tests.bridge.conftest import Bridge


@pytest.fixture
def tastypie_like(bridge: Bridge) -> Bridge:
    bridge.box.set_behaviour(hidden_transaction_fields=["last_mod_dt"], unknown_filters="ignore")
    bridge.client.use_schema(discover(bridge.client, ("users", "connections", "transactions")))
    return bridge


def test_sync_reads_by_transaction_date_and_reconciles(
    tastypie_like: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    bridge = tastypie_like
    assert bridge.client.allows_filter("transactions", "last_mod_dt__gte") is False
    assert bridge.backfill().status == "succeeded"
    assert bridge.state.cursors.get(bridge.business, "transactions") is not None  # seeded by date
    ledger = bridge.box.ledger
    member = next(iter(ledger.connections.values()))
    perk = next(p for p in ledger.perks.values() if p["classification"] == "EARN" and p["points"])
    bridge.box.add_transaction(perk=perk["perk_id"], user=member["user"], quantity=2)
    old = next(
        t for t in ledger.txns.values() if t.status == "ACTIVE" and t.points and t.classification == "EARN"
    )
    bridge.box.void_transaction(old.id)
    with caplog.at_level(logging.WARNING):
        sync = bridge.sync()
    assert sync.status == "succeeded"
    # Only the look-back window is read again, not the whole ledger.
    assert 0 < sync.kinds["transaction"]["read"] < len(ledger.txns)
    assert sync.kinds["transaction"]["applied"] == 2  # the award and the void's reversal
    assert not any("last_mod_dt" in r.getMessage() and "ignored" in r.getMessage() for r in caplog.records)
    report = bridge.reconcile()
    assert report.ok, report.to_json()
    again = bridge.sync()
    assert again.kinds["transaction"]["applied"] == 0  # the window read again changes nothing


def test_without_the_schema_a_silently_ignored_filter_costs_reads_never_points(
    bridge: Bridge, caplog: pytest.LogCaptureFixture
) -> None:
    bridge.box.set_behaviour(ignore_filters=True)
    assert bridge.backfill().status == "succeeded"
    ledger = bridge.box.ledger
    member = next(iter(ledger.connections.values()))
    perk = next(p for p in ledger.perks.values() if p["classification"] == "EARN" and p["points"])
    bridge.box.add_transaction(perk=perk["perk_id"], user=member["user"], quantity=1)
    with caplog.at_level(logging.WARNING):
        sync = bridge.sync()
    assert sync.kinds["transaction"]["applied"] == 1
    assert any("ignored the last_mod_dt filter" in r.getMessage() for r in caplog.records)
    assert bridge.client.stats["dropped_rows"] > 0  # the rows outside the window, dropped here
    report = bridge.reconcile()
    assert report.ok, report.to_json()
