"""Balance mode after the cut-over (late voids of older rows) and the refusal to mix import modes."""

from __future__ import annotations

from decimal import Decimal

import pytest

from bridge.errors import ConfigurationError
from bridge.pipeline import RunOptions
from tests.bridge.conftest import SPACE, Bridge, event_count


def _pre_cutover_earn(bridge: Bridge) -> int:
    return next(
        t.id
        for t in bridge.box.ledger.txns.values()
        if t.status == "ACTIVE" and t.classification == "EARN" and t.points > 0
    )


def test_a_late_void_of_a_row_from_before_the_cutover_is_reversed_by_sync(bridge: Bridge) -> None:
    assert bridge.backfill("balance").status == "succeeded"
    opening = event_count(bridge.engine)
    victim = bridge.box.ledger.txns[_pre_cutover_earn(bridge)]
    customer = f"perkville:{victim.user_id}"
    before = bridge.service.wallet_balances(SPACE, "points", user_ids=[customer])[customer]
    bridge.box.void_transaction(victim.id)  # after the cut-over: Perkville's balance drops
    assert not bridge.reconcile().ok

    summary = bridge.sync()
    assert summary.counts.balanced
    assert summary.kinds["transaction"]["applied"] == 1  # the VOID_REF row became the reversal
    assert event_count(bridge.engine) == opening + 1  # the reversal only, not the original
    after = bridge.service.wallet_balances(SPACE, "points", user_ids=[customer])[customer]
    assert after == before - Decimal(victim.points * victim.quantity)
    assert bridge.reconcile().ok  # converged without --repair

    again = bridge.sync()
    assert again.counts.applied == 0 and event_count(bridge.engine) == opening + 1


def test_a_void_of_a_row_from_after_the_cutover_maps_as_usual(bridge: Bridge) -> None:
    bridge.backfill("balance")
    member = next(iter(bridge.box.ledger.connections.values()))
    perk = next(p for p in bridge.box.ledger.perks.values() if p["classification"] == "EARN" and p["points"])
    row = bridge.box.add_transaction(perk=perk["perk_id"], user=member["user"], quantity=2)
    bridge.box.void_transaction(row["transaction_id"])
    opening = event_count(bridge.engine)
    summary = bridge.sync()
    # Skipped: the VOID_REF row, and the cut-over's own newest row when the overlap reads it again.
    assert summary.kinds["transaction"]["applied"] == 1 and summary.kinds["transaction"]["skipped"] >= 1
    assert event_count(bridge.engine) == opening + 2  # the original and its reversal
    assert bridge.reconcile().ok


@pytest.mark.parametrize(
    ("first", "second"),
    [pytest.param("balance", "history", id="history-after-balance"),
     pytest.param("history", "balance", id="balance-after-history")],
)
def test_a_backfill_of_the_other_mode_is_refused_unless_forced(bridge: Bridge, first: str, second: str) -> None:
    assert bridge.backfill(first).status == "succeeded"
    events = event_count(bridge.engine)
    with pytest.raises(ConfigurationError) as refused:
        bridge.backfill(second)
    message = str(refused.value)
    assert "\n" not in message and f"already imported in {first} mode" in message and "twice" in message
    assert event_count(bridge.engine) == events
    assert bridge.backfill(first).counts.applied == 0  # the same mode again is fine
    forced = bridge.pipeline().run(RunOptions(kind="backfill", mode=second, force=True))  # type: ignore[arg-type]
    assert forced.status == "succeeded"


def test_a_sync_first_pass_counts_as_a_history_import(bridge: Bridge) -> None:
    assert bridge.sync().counts.applied > 0
    with pytest.raises(ConfigurationError, match="already imported in history mode"):
        bridge.backfill("balance")
