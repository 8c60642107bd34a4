"""Hypothesis properties of the engine: determinism, sparse state loading, storage round trips, ledger sums."""

from __future__ import annotations

from datetime import datetime, timedelta
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from perkamo_core.engine import (
    CustomerState,
    EngineEvent,
    Outcome,
    StateQuery,
    apply_outcome,
    evaluate,
    plan_state_query,
)
from perkamo_core.program import Program
from tests.perkamo_core.test_engine_rules import PRAGUE

PROGRAM = Program.from_modules(
    {
        "wallets": {"wallets": [{"key": "points"}, {"key": "xp", "precision": 2, "allow_negative": True, "rounding": "half_up"}]},
        "events": {
            "rules": [
                {"event": "buy", "key": "buy", "formula": "{{n}}", "when": "{{cur}} != 'X'", "limits": {"per_day": 3, "per_week": 8}},
                {"event": "buy", "key": "buy_xp", "wallet": "xp", "formula": "{{n}} / 7"},
                {"event": "refund", "key": "refund", "formula": "-{{n}}"},
                {"event": "visit", "key": "visit", "amount": 5, "limits": {"cooldown_seconds": 3600}},
                {"event": "join", "key": "join", "amount": 30, "limits": {"lifetime": 1}},
            ]
        },
        "leveling": {"wallet": "points", "basis": "balance", "thresholds": [0, 50, 200, 1000]},
        "perks": {
            "perks": [
                {"key": "t30", "name": "T30", "trigger": {"type": "points_threshold", "amount": 30}},
                {"key": "lvl3", "name": "L3", "trigger": {"type": "level", "level": 3}},
                {"key": "visits", "name": "V", "trigger": {"type": "event_count", "event": "visit", "count": 4}},
                {"key": "streak", "name": "S", "trigger": {"type": "streak", "streak": "daily", "count": 3}},
                {"key": "ach", "name": "A", "trigger": {"type": "achievement", "achievement": "spender"}},
            ]
        },
        "achievements": {
            "achievements": [
                {"key": "spender", "name": "Spender", "event": "buy", "measure": "sum", "field": "n", "target": 300, "window_days": 5},
                {"key": "buyer", "name": "Buyer", "event": "buy", "target": 6},
                {"key": "czk", "name": "CZK", "event": "buy", "target": 2, "when": "{{cur}} == 'CZK'"},
            ],
            "streaks": [{"key": "daily", "event": "visit", "period": "day", "grace_periods": 1}, {"key": "weekly", "event": "buy", "period": "week"}],
        },
        "boosts": {"boosts": [{"key": "b", "multiplier": 1.5, "events": ["buy"], "starts_at": "2026-06-03T00:00:00Z", "ends_at": "2026-06-06T00:00:00Z"}]},
    }
)
BASE = datetime.fromisoformat("2026-06-01T00:00:00+00:00")

_events = st.lists(
    st.builds(
        lambda name, minutes, n, cur: EngineEvent(name, BASE + timedelta(minutes=minutes), {"n": n, "cur": cur} if n is not None else {}),
        st.sampled_from(["buy", "refund", "visit", "join", "other"]),
        st.integers(min_value=0, max_value=60 * 24 * 21),
        st.one_of(st.none(), st.integers(min_value=-20, max_value=200), st.decimals(min_value=0, max_value=100, places=3)),
        st.sampled_from(["CZK", "EUR", "X"]),
    ),
    max_size=25,
)


def _replay(events: list[EngineEvent], *, via_json: bool = False) -> tuple[list[Outcome], CustomerState]:
    state = CustomerState()
    outcomes = []
    for ev in events:
        outcome = evaluate(PROGRAM, state, ev, PRAGUE)
        outcomes.append(outcome)
        before = state.to_json()
        new_state = apply_outcome(state, outcome)
        assert state.to_json() == before  # evaluate and apply_outcome never mutate their input
        state = new_state
        if via_json:
            state = CustomerState.from_json(state.to_json())
    return outcomes, state


def _sparse(state: CustomerState, q: StateQuery) -> CustomerState:
    """Only what the query names (plus the always-loaded balances, lifetime, perks, achievements)."""
    return CustomerState(
        balances=dict(state.balances),
        lifetime=dict(state.lifetime),
        perks=dict(state.perks),
        achievements=dict(state.achievements),
        event_counts={k: v for k, v in state.event_counts.items() if k in q.event_types},
        counters={k: v for k, v in state.counters.items() if k in q.counter_keys},
        last_applied={k: v for k, v in state.last_applied.items() if k in q.last_applied_rules},
        achievement_totals={k: v for k, v in state.achievement_totals.items() if k in q.achievement_totals},
        achievement_days={
            k: {d: v for d, v in days.items() if q.achievement_days[k][0] <= d <= q.achievement_days[k][1]}
            for k, days in state.achievement_days.items()
            if k in q.achievement_days
        },
        streaks={k: v for k, v in state.streaks.items() if k in q.streaks},
    )


@settings(max_examples=60, deadline=None)
@given(_events)
def test_replay_is_deterministic_and_survives_storage_round_trips(events: list[EngineEvent]) -> None:
    first, state1 = _replay(events)
    second, state2 = _replay(events)
    stored, state3 = _replay(events, via_json=True)
    assert first == second == stored
    assert state1 == state2 == state3


@settings(max_examples=60, deadline=None)
@given(_events)
def test_loading_only_the_planned_state_gives_the_same_outcome(events: list[EngineEvent]) -> None:
    state = CustomerState()
    for ev in events:
        full = evaluate(PROGRAM, state, ev, PRAGUE)
        sparse = evaluate(PROGRAM, _sparse(state, plan_state_query(PROGRAM, ev, PRAGUE)), ev, PRAGUE)
        assert sparse.deltas == full.deltas
        assert sparse.unlocked == full.unlocked
        assert sparse.counter_increments == full.counter_increments
        assert sparse.achievement_increments == full.achievement_increments
        assert sparse.streak_updates == full.streak_updates
        assert sparse.level == full.level and sparse.balances == full.balances
        state = apply_outcome(state, full)


@settings(max_examples=60, deadline=None)
@given(_events)
def test_balances_equal_the_sum_of_their_movements(events: list[EngineEvent]) -> None:
    outcomes, state = _replay(events)
    for wallet in ("points", "xp"):
        moves = [d.amount for o in outcomes for d in o.deltas if d.wallet == wallet]
        assert state.balances.get(wallet, Decimal(0)) == sum(moves, Decimal(0))
        assert state.lifetime.get(wallet, Decimal(0)) == sum((m for m in moves if m > 0), Decimal(0))
    assert state.balances.get("points", Decimal(0)) >= 0  # no allow_negative: earning rules clamp
    assert all(d.amount == d.amount.quantize(Decimal("0.01")) for o in outcomes for d in o.deltas if d.wallet == "xp")
    assert all(d.amount == d.amount.to_integral_value() for o in outcomes for d in o.deltas if d.wallet == "points")
    perks_seen = [p.key for o in outcomes for p in o.new_perks]
    assert len(perks_seen) == len(set(perks_seen)) == len(state.perks)
