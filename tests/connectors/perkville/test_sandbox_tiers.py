"""``Sandbox(tiered_levels=True)``: levels follow lifetime points, and nothing else changes."""

from __future__ import annotations

from connectors.perkville.sandbox import Sandbox


def test_tiered_levels_follow_lifetime_points_and_leave_the_rest_of_the_data_identical() -> None:
    plain = Sandbox(seed=5, businesses=2, members=40, transactions=400).ledger
    tiered = Sandbox(seed=5, businesses=2, members=40, transactions=400, tiered_levels=True).ledger
    assert tiered.txns == plain.txns
    assert tiered.users == plain.users
    assert tiered.perks == plain.perks
    assert tiered.external_members == plain.external_members
    assert {cid: {k: v for k, v in c.items() if k != "level"} for cid, c in tiered.connections.items()} == {
        cid: {k: v for k, v in c.items() if k != "level"} for cid, c in plain.connections.items()
    }
    order = [None, "Bronze", "Silver", "Gold"]
    for business in tiered.businesses.values():
        ranked = sorted(business.connection_ids, key=lambda cid: (tiered.aggregates[cid].lifetime, cid))
        levels = [order.index(tiered.connections[cid]["level"]) for cid in ranked]
        assert levels == sorted(levels)  # never a lower level for more lifetime points
        assert set(levels) == {0, 1, 2, 3}
    # Without the option the generated levels are the random draw they always were.
    assert {c["level"] for c in plain.connections.values()} <= {None, "Silver", "Gold"}
