"""The tier map as a spec: its program modules, its events and ids, through the pure engine."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest

from config.programs import load_migration_program
from mapping.errors import MappingConfigError
from mapping.ids import parse_transaction_id, to_tier_transaction_id
from mapping.tiers import (
    TIER_WALLET,
    add_tier_modules,
    check_tiers,
    next_tier_event,
    propose_tiers,
    tier_modules,
    unknown_levels,
)
from perkamo_core.engine import CustomerState, EngineEvent, apply_outcome, evaluate
from perkamo_core.program import Program

TIERS = {"Bronze": 2, "Silver": 3, "Gold": 4}
WHEN = datetime(2026, 6, 1, 10, tzinfo=UTC)


def _event(level: int, n: int) -> EngineEvent:
    return EngineEvent("perkville.tier_migrated", WHEN, {"tier_level": level}, f"t{n}")


def _replay(levels: list[int]) -> tuple[CustomerState, list[int]]:
    """The tier wallet's lifetime after each event, replaying tier events for ``levels``."""
    program = Program.from_modules(add_tier_modules(load_migration_program(), TIERS))
    state = CustomerState()
    seen = []
    for n, level in enumerate(levels):
        outcome = evaluate(program, state, _event(level, n), UTC)
        state = apply_outcome(state, outcome)
        assert all(d.wallet == TIER_WALLET for d in outcome.deltas)
        seen.append(int(state.lifetime.get(TIER_WALLET, Decimal(0))))
    return state, seen


@pytest.mark.parametrize(
    ("levels", "lifetimes"),
    [
        pytest.param([4], [3000], id="gold-at-once"),
        pytest.param([2, 4], [1000, 3000], id="bronze-then-gold-lifts"),
        pytest.param([4, 2], [3000, 3000], id="gold-then-bronze-never-lowers"),
        pytest.param([3, 3], [2000, 2000], id="same-level-again-nothing"),
        pytest.param([3, 2, 4, 1], [2000, 2000, 3000, 3000], id="up-down-up-down"),
    ],
)
def test_tier_events_lift_the_tier_wallet_and_never_lower_it(levels: list[int], lifetimes: list[int]) -> None:
    state, seen = _replay(levels)
    assert seen == lifetimes
    assert state.balances.get("points", Decimal(0)) == 0


def test_the_program_adds_a_non_spendable_wallet_and_lifetime_leveling() -> None:
    modules = tier_modules(TIERS)
    assert modules["leveling"] == {
        "wallet": TIER_WALLET, "basis": "lifetime", "thresholds": [0, 1000, 2000, 3000],
        "names": ["Member", "Bronze", "Silver", "Gold"],
    }
    assert [w["key"] for w in modules["wallets"]["wallets"]] == [TIER_WALLET]
    merged = add_tier_modules(load_migration_program(), TIERS)
    assert {w["key"] for w in merged["wallets"]["wallets"]} == {"points", TIER_WALLET}
    assert "perks" not in merged  # nothing redeems tier points
    # Applying the map twice (a fixed map re-applied) replaces its rules, never doubles them.
    again = add_tier_modules(merged, {**TIERS, "Platinum": 5})
    keys = [r["key"] for r in again["events"]["rules"] if r["event"] == "perkville.tier_migrated"]
    assert keys == [f"perkville_tier_step_{n}" for n in (2, 3, 4, 5)]


def test_a_program_leveling_on_another_wallet_is_refused() -> None:
    base = {**load_migration_program(), "leveling": {"wallet": "points", "thresholds": [0, 100]}}
    with pytest.raises(MappingConfigError, match="already levels on wallet 'points'"):
        add_tier_modules(base, TIERS)


@pytest.mark.parametrize(
    ("level", "migrated", "expected_id", "expected_level"),
    [
        pytest.param("Gold", None, "perkville:25:tier:7", 4, id="first"),
        pytest.param(" Silver ", None, "perkville:25:tier:7", 3, id="trimmed"),
        pytest.param("Gold", 3, "perkville:25:tier:7:4", 4, id="later-lift"),
        pytest.param("Silver", 4, None, 4, id="lower-nothing"),
        pytest.param("Gold", 4, None, 4, id="same-nothing"),
        pytest.param("Platinum", None, None, None, id="unknown-nothing"),
        pytest.param(None, None, None, None, id="no-level"),
    ],
)
def test_next_tier_event(level: str | None, migrated: int | None, expected_id: str | None,
                         expected_level: int | None) -> None:
    event, now = next_tier_event(
        business_id=25, perkville_user_id="7", customer_id="perkville:7", perkville_level=level,
        tiers=TIERS, migrated=migrated,
    )
    assert now == expected_level
    assert (event.transaction_id if event else None) == expected_id
    if event is not None:
        assert event.event == "perkville.tier_migrated"
        assert event.context["tier_level"] == expected_level
        assert "level" not in event.context  # reserved in Perkamo


def test_tier_ids_parse_back_and_are_distinct() -> None:
    first = to_tier_transaction_id(25, "7")
    later = to_tier_transaction_id(25, "7", 4)
    odd = to_tier_transaction_id(25, "7:4")  # a user id with a colon cannot pass for a later lift
    assert len({first, later, odd}) == 3
    assert parse_transaction_id(first) == ("25", "tier", "7", None)
    assert parse_transaction_id(later) == ("25", "tier", "7", 4)
    assert parse_transaction_id(odd) == ("25", "tier", "7%3A4", None)
    with pytest.raises(MappingConfigError):
        to_tier_transaction_id(25, "7", 0)


def test_the_proposal_orders_names_by_their_members_lifetime_points() -> None:
    proposal = propose_tiers(
        [("Gold", Decimal(900)), ("Silver", Decimal(300)), ("Gold", Decimal(700)), (None, Decimal(5)),
         ("Bronze", Decimal(100)), ("Silver", None), ("Silver", Decimal(500))]
    )
    assert proposal.tiers == {"Bronze": 2, "Silver": 3, "Gold": 4}
    assert proposal.members == {"Bronze": 1, "Silver": 3, "Gold": 2}
    assert proposal.without_level == 1
    text = proposal.to_toml()
    assert text.startswith("[tiers]\n") and '"Gold" = 4' in text
    import tomllib

    assert tomllib.loads(text)["tiers"] == proposal.tiers


def test_unknown_names_are_counted_and_bad_maps_refused() -> None:
    assert unknown_levels(["Gold", "Platinum", None, "Platinum", "Silver"], {"Gold": 3, "Silver": 2}) == {
        "Platinum": 2
    }
    with pytest.raises(MappingConfigError, match="whole number"):
        check_tiers({"Gold": 0})
    with pytest.raises(MappingConfigError, match="whole number"):
        check_tiers({"Gold": True})
