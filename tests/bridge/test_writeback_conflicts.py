"""The dual-run conflict policy (docs/scheduling.md), end to end over the sandbox, on both DBs.

Perkville stays the system of record for balances until cut-over: what Perkville refuses is
dead-lettered for the operator, and ``reconcile --repair`` brings Perkamo back to Perkville.
"""

from __future__ import annotations

from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from bridge.writeback import Writeback, WritebackConfig
from connectors.perkville.sandbox import Sandbox
from perkamo_core.models import EventInput
from tests.bridge.conftest import SPACE, Bridge, open_bridge
from tests.bridge.test_writeback import _earn_perk, _load_program, _member, _redeem_perk, _rows_with_source

VISIT = "visit.checked_in"
REDEEMED = "reward.redeemed"


REWARD_COST = 30


def _ready(bridge: Bridge) -> tuple[dict[str, Any], dict[str, Any]]:
    assert bridge.backfill("history").status == "succeeded"
    earn, redeem = _earn_perk(bridge), _redeem_perk(bridge)
    _load_program(
        bridge,
        [{"event": VISIT, "key": "visit", "wallet": "points", "formula": str(earn["points"])}],
        perks={"perks": [], "rewards": [
            {"key": "smoothie", "name": "Smoothie", "wallet": "points", "cost": REWARD_COST,
             "effect": {"type": "voucher"}},
        ]},
    )
    return earn, redeem


def _writeback(bridge: Bridge, earn: dict[str, Any], redeem: dict[str, Any]) -> Writeback:
    config = WritebackConfig(
        business=bridge.business, space=SPACE,
        event_perks={VISIT: earn["perk_id"], f"{REDEEMED}:smoothie": redeem["perk_id"]},
    )
    return Writeback(state=bridge.state, outbox=bridge.service, client=bridge.client, config=config)


def _perkamo(bridge: Bridge, user: int) -> Decimal:
    return bridge.service.wallet_balances(SPACE, "points").get(f"perkville:{user}", Decimal(0))


def _perkville(bridge: Bridge, user: int) -> int:
    return bridge.box.true_balances()[user]


def test_redemption_on_both_sides_perkville_wins_and_the_refusal_is_dead_lettered(
    bridge: Bridge,
) -> None:
    earn, redeem = _ready(bridge)
    cost = REWARD_COST  # Perkville is told the Perkamo cost, not the perk's own points
    assert redeem["points"] != cost
    user = _member(bridge)
    customer = f"perkville:{user}"
    # Give the member a known balance: enough for one redemption, not for two.
    bridge.box.add_transaction(perk=earn["perk_id"], user=user, points=2 * cost)
    assert bridge.sync().status == "succeeded"
    balance = _perkville(bridge, user)
    assert _perkamo(bridge, user) == balance

    # A lone app redemption goes through on both sides for the same number of points.
    bridge.service.redeem(SPACE, customer, "smoothie", "app:redeem:0")
    first = _writeback(bridge, earn, redeem).run()
    assert (first.written_back, first.dead_lettered) == (1, 0)
    balance -= cost
    assert _perkville(bridge, user) == balance
    assert bridge.sync().status == "succeeded"
    assert _perkamo(bridge, user) == balance and bridge.reconcile().ok

    # Within one sync interval the member redeems at the front desk (Perkville) and in the app
    # (Perkamo); together they exceed the balance.
    desk = balance - cost + 1
    bridge.box.add_transaction(perk=redeem["perk_id"], user=user, points=desk)
    bridge.service.redeem(SPACE, customer, "smoothie", "app:redeem:1")
    back = _writeback(bridge, earn, redeem).run()
    assert (back.written_back, back.dead_lettered) == (0, 1)
    (letter,) = bridge.state.dead_letters.list(bridge.business)
    assert (letter.record_id, letter.reason) == ("app:redeem:1", "perkville_insufficient_points")
    assert "too few points" in (letter.detail or "") and "pv_txn_insufficient_points" in (letter.detail or "")
    assert bridge.sync().status == "succeeded"
    assert _perkville(bridge, user) == cost - 1  # Perkville kept only the desk redemption
    assert _perkamo(bridge, user) == cost - 1 - cost  # Perkamo applied both
    report = bridge.reconcile()
    assert not report.ok
    (mismatch,) = report.mismatches
    assert mismatch.difference == cost
    repaired = bridge.reconcile(repair=True)
    assert repaired.repaired == 1
    assert bridge.reconcile().ok
    assert _perkamo(bridge, user) == _perkville(bridge, user) == cost - 1
    # The repair is a Perkville-born event: it is never written back.
    after = _writeback(bridge, earn, redeem).run()
    assert after.written_back == 0 and after.dead_lettered == 0


def test_a_redemption_past_the_perks_limit_is_dead_lettered_once_not_retried(bridge: Bridge) -> None:
    earn, redeem = _ready(bridge)
    user = _member(bridge)
    customer = f"perkville:{user}"
    bridge.box.add_transaction(perk=earn["perk_id"], user=user, points=5 * REWARD_COST)
    assert bridge.sync().status == "succeeded"
    with bridge.box.ledger.lock:  # Perkville's side of the reward: once a week per customer
        redeem.update(redemption_limit_count=1, redemption_limit_interval="WEEK",
                      redemption_limit_interval_count=1)
    bridge.service.redeem(SPACE, customer, "smoothie", "app:limit:0")
    bridge.service.redeem(SPACE, customer, "smoothie", "app:limit:1")
    requests = bridge.box.stats()["requests"]
    back = _writeback(bridge, earn, redeem).run()
    assert (back.written_back, back.dead_lettered) == (1, 1)
    # One POST each (the refusal is not retried), and one read-back of the refused one.
    assert bridge.box.stats()["requests"] - requests == 3
    (letter,) = bridge.state.dead_letters.list(bridge.business)
    assert (letter.record_id, letter.reason) == ("app:limit:1", "perkville_redemption_limit_reached")
    assert "pv_perk_redemption_limit_reached" in (letter.detail or "")
    # A retry meets the same refusal: still one dead letter, nothing written twice.
    retried = _writeback(bridge, earn, redeem).retry_dead_letters()
    assert retried.written_back == 0
    assert [d.reason for d in bridge.state.dead_letters.list(bridge.business)] == [
        "perkville_redemption_limit_reached"
    ]
    assert len(_rows_with_source(bridge, "perkamo:app:limit:0")) == 1
    assert not _rows_with_source(bridge, "perkamo:app:limit:1")


def test_manual_adjustment_in_perkville_flows_in_and_never_back(bridge: Bridge) -> None:
    earn, redeem = _ready(bridge)
    user = _member(bridge)
    before = _perkville(bridge, user)
    manual = bridge.box.add_transaction(perk=earn["perk_id"], user=user, points=37)
    voided = next(
        t for t in bridge.box.ledger.businesses[int(bridge.business)].txns
        if t.user_id == user and t.status == "ACTIVE" and t.classification == "EARN"
        and t.id != int(manual["transaction_id"])
    )
    bridge.box.void_transaction(voided.id)
    sync = bridge.sync()
    assert sync.status == "succeeded" and sync.kinds["transaction"]["applied"] >= 2
    expected = before + 37 - voided.points * voided.quantity
    assert _perkville(bridge, user) == expected
    assert _perkamo(bridge, user) == expected
    back = _writeback(bridge, earn, redeem).run()
    assert back.written_back == 0 and back.dead_lettered == 0
    assert back.skip_reasons["born_in_perkville"] >= 2
    assert bridge.reconcile().ok


@pytest.fixture
def two_businesses(db_url: str) -> Iterator[Bridge]:
    box = Sandbox(seed=5, businesses=2, members=12, transactions=120)
    box.start()
    try:
        with open_bridge(box, db_url) as wired:
            yield wired
    finally:
        box.stop()


def test_a_customer_on_one_side_only(two_businesses: Bridge) -> None:
    bridge = two_businesses
    earn, redeem = _ready(bridge)
    first, second = bridge.box.business_ids
    members_before = bridge.reconcile().checked

    # Only in Perkamo: the app's guest earns points; there is no Perkville member to award.
    bridge.service.ingest(SPACE, EventInput(user_id="app:guest-1", event=VISIT, transaction_id="guest:1"))
    # Only in Perkville: someone from the other business joins this one at the desk.
    newcomer = next(
        c["user"] for c in bridge.box.ledger.connections.values()
        if c["business"] == second
        and not any(o["user"] == c["user"] for o in bridge.box.ledger.connections.values()
                    if o["business"] == first)
    )
    bridge.box.add_transaction(business=first, perk=earn["perk_id"], user=newcomer, quantity=1)

    back = _writeback(bridge, earn, redeem).run()
    (letter,) = bridge.state.dead_letters.list(bridge.business)
    assert (letter.record_id, letter.reason) == ("guest:1", "no_perkville_member")
    assert back.written_back == 0

    sync = bridge.sync()
    assert sync.status == "succeeded"
    assert _perkamo(bridge, newcomer) == earn["points"]  # created in Perkamo by the sync
    report = bridge.reconcile()
    assert report.ok and report.checked == members_before + 1
    # The guest stays a Perkamo-only customer: not reconciled, still dead-lettered, never lost.
    assert bridge.service.wallet_balances(SPACE, "points")["app:guest-1"] == earn["points"]
    assert [d.record_id for d in bridge.state.dead_letters.list(bridge.business)] == ["guest:1"]
    # Nothing the sync brought in goes back to Perkville.
    again = _writeback(bridge, earn, redeem).run()
    assert again.written_back == 0 and again.dead_lettered == 0
