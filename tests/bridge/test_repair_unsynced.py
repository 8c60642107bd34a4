"""``reconcile --repair`` with rows still unsynced, then sync, then the nightly reconcile.

The repair syncs first under the import lease, so unsynced rows are imported, not adjusted for;
rows that land while the members are compared (between that sync and the balance read) make
their members ``pending`` instead of adjusted. After the later sync and the nightly reconcile
every member is exact, and at no point does any member stand above Perkville.
"""

from __future__ import annotations

import threading
from decimal import Decimal
from typing import IO

import pytest

from bridge.reconcile import Reconciler, ReconcileReport
from bridge.scheduler import JobContext, run_reconcile_job
from bridge.usecases import reconcile
from config import Settings
from tests.bridge.conftest import SPACE, Bridge, sandbox_settings


def _earn_perk(bridge: Bridge) -> int:
    return int(next(p["perk_id"] for p in bridge.box.ledger.perks.values()
                    if p["classification"] == "EARN" and p["points"] > 0))


def _users(bridge: Bridge) -> list[int]:
    return sorted(int(c["user"]) for c in bridge.box.ledger.connections.values())


def _never_above(bridge: Bridge, when: str) -> ReconcileReport:
    report = bridge.reconcile()  # read-only comparison
    above = [m.to_json() for m in report.mismatches if m.perkamo_balance > m.perkville_balance]
    assert not above, f"{when}: members above Perkville: {above}"
    return report


class RowsArriveWhileComparing(Reconciler):
    """Perkville records new rows for ``users`` after the repair's sync, just before the balances
    are read: the race a repair must not turn into double points."""

    def __init__(self, bridge: Bridge, users: list[int]) -> None:
        super().__init__(state=bridge.state, source=bridge.client, target=bridge.target, business=bridge.business)
        self.bridge, self.users, self.fired = bridge, users, False

    def compare(self, csv_out: IO[str] | None = None, *, run_id: int | None = None) -> ReconcileReport:
        if not self.fired:
            self.fired = True
            for user in self.users:
                self.bridge.box.add_transaction(perk=_earn_perk(self.bridge), user=user, quantity=2)
        return super().compare(csv_out, run_id=run_id)


def _nightly(bridge: Bridge, db_url: str) -> dict[str, object]:
    settings = Settings.model_validate(
        {
            **sandbox_settings(bridge.box, db_url),
            "PERKVILLE_BUSINESS_ID": bridge.business,
            "PERKAMO_SPACE": SPACE,
            "perkville": {"page_size": 50, "requests_per_second": 1000},
        }
    )
    context = JobContext("reconcile", bridge.business, settings, bridge.engine, threading.Event(), "w", None)  # type: ignore[arg-type]
    return run_reconcile_job(context)  # type: ignore[no-any-return]


@pytest.mark.parametrize("mode", ["history", "balance"])
def test_a_repair_with_unsynced_rows_never_doubles_them(bridge: Bridge, db_url: str, mode: str) -> None:
    box = bridge.box
    assert bridge.backfill(mode).status == "succeeded"
    assert bridge.reconcile().ok
    users = _users(bridge)
    perk = _earn_perk(bridge)

    # Unsynced activity: new earns for most members, a void of an old row, a profile edit.
    for n, user in enumerate(users[: len(users) * 2 // 3]):
        box.add_transaction(perk=perk, user=user, quantity=1 + n % 3)
    old = min(t.id for t in box.ledger.txns.values() if t.status == "ACTIVE" and t.points > 0)
    box.void_transaction(old)
    box.update_user(users[0], first_name="Renamed")
    # One genuine difference that no row explains, for a member whose rows also race the check.
    racer, steady = users[1], users[-1]
    connection = {int(c["user"]): c["connection_id"] for c in box.ledger.connections.values()}
    box.ledger.aggregates[connection[racer]].balance += 5
    box.ledger.aggregates[connection[steady]].balance += 4

    before = _never_above(bridge, "before the repair")
    assert before.mismatches, "the unsynced rows should show before the repair"

    report = reconcile(
        bridge.pipeline(), RowsArriveWhileComparing(bridge, [racer]), mode=mode, repair=True  # type: ignore[arg-type]
    )
    # The unsynced rows were imported, not adjusted for: only the two row-less shifts differed.
    assert {m.perkville_user_id for m in report.mismatches} == {str(racer), str(steady)}
    assert [m.perkville_user_id for m in report.pending] == [str(racer)]  # its rows raced the check
    assert report.repaired == 1 and report.remaining == []
    _never_above(bridge, "after the repair")

    bridge.sync()
    after_sync = _never_above(bridge, "after the next sync")
    assert [m.perkville_user_id for m in after_sync.mismatches] == [str(racer)]
    assert after_sync.mismatches[0].difference == Decimal(5)

    nightly = _nightly(bridge, db_url)
    assert nightly["repaired"] == 1 and nightly["pending"] == [] and nightly["remaining"] == []
    final = _never_above(bridge, "after the nightly reconcile")
    assert final.ok, final.to_json()
    # Exact: Perkamo holds Perkville's balances, row for row plus the two adjustments.
    truth = box.true_balances()
    balances = bridge.service.wallet_balances(SPACE, "points")
    shifts = {racer: 5, steady: 4}
    for user in users:
        assert Decimal(balances.get(f"perkville:{user}", 0)) == truth.get(user, 0) + shifts.get(user, 0), user
