"""State transitions: folding an outcome into a customer state, and pruning state no event can read."""

from __future__ import annotations

from datetime import date, timedelta
from decimal import Decimal

from perkamo_core.engine.decimals import _CTX, _ZERO
from perkamo_core.engine.outcome import Outcome
from perkamo_core.engine.periods import _week_label
from perkamo_core.engine.slots import _new, _slot_setters
from perkamo_core.engine.state import CustomerState
from perkamo_core.program import Program


def _shallow_copy(state: CustomerState) -> CustomerState:
    """A new state sharing the (never mutated) dicts; callers replace the dicts they change."""
    return CustomerState(
        state.balances,
        state.lifetime,
        state.perks,
        state.achievements,
        state.event_counts,
        state.counters,
        state.last_applied,
        state.achievement_totals,
        state.achievement_days,
        state.streaks,
        state.reward_counts,
    )


def apply_outcome(state: CustomerState, outcome: Outcome) -> CustomerState:
    """A new state with `outcome`'s changes folded in (the input state is not modified)."""
    if outcome.rejection is not None:
        return state  # a rejected event changes nothing
    if outcome.deltas:
        balances = dict(outcome.balances)
        lifetime = dict(outcome.lifetime)
    else:
        balances, lifetime = state.balances, state.lifetime
    perks = state.perks
    if outcome.new_perks:
        perks = {**perks, **{p.key: p for p in outcome.new_perks}}
    achievements = state.achievements
    if outcome.new_achievements:
        achievements = {**achievements, **outcome.new_achievements}
    counts = state.event_counts
    if outcome.event_count_increments:
        counts = dict(counts)
        for k, v in outcome.event_count_increments.items():
            counts[k] = counts.get(k, 0) + v
    counters = state.counters
    if outcome.counter_increments:
        counters = dict(counters)
        for k, v in outcome.counter_increments.items():
            counters[k] = counters.get(k, 0) + v
    last_applied = state.last_applied
    if outcome.last_applied:
        last_applied = {**last_applied, **outcome.last_applied}
    totals, days = state.achievement_totals, state.achievement_days
    if outcome.achievement_increments:
        totals, days = dict(totals), dict(days)
        for inc in outcome.achievement_increments:
            if inc.day is None:
                totals[inc.key] = _CTX.add(totals.get(inc.key, _ZERO), inc.amount)
            else:
                buckets = dict(days.get(inc.key, {}))
                buckets[inc.day] = _CTX.add(buckets.get(inc.day, _ZERO), inc.amount)
                days[inc.key] = buckets
    streaks = state.streaks
    if outcome.streak_updates:
        streaks = {**streaks, **outcome.streak_updates}
    # The new state shares every dict it did not change with `state` (none is ever mutated).
    new: CustomerState = _new(CustomerState)  # __init__ without its default-factory checks
    new.balances = balances
    new.lifetime = lifetime
    new.perks = perks
    new.achievements = achievements
    new.event_counts = counts
    new.counters = counters
    new.last_applied = last_applied
    new.achievement_totals = totals
    new.achievement_days = days
    new.streaks = streaks
    new.reward_counts = state.reward_counts
    return new


_STATE_FIELDS = (
    "balances",
    "lifetime",
    "perks",
    "achievements",
    "event_counts",
    "counters",
    "last_applied",
    "achievement_totals",
    "achievement_days",
    "streaks",
    "reward_counts",
)
_slot_setters(CustomerState, _STATE_FIELDS)  # apply_outcome sets exactly these: fail at import if they change


def prune_state(program: Program, state: CustomerState, today: date) -> CustomerState:
    """A copy without data no future event on or after local day `today` can read.

    Drops day/week limit counters of earlier periods, achievement day buckets older than the
    longest window, and progress of achievements already completed. Late events for earlier days
    would then see fresh counters; call it with a `today` that leaves the late-arrival margin you need.
    """
    week = _week_label(today)
    counters = {}
    for k, v in state.counters.items():
        parts = k.rsplit("|", 2)
        if len(parts) == 3 and parts[1] == "d" and parts[2] < today.isoformat():
            continue
        if len(parts) == 3 and parts[1] == "w" and parts[2] < week:
            continue
        counters[k] = v
    days: dict[str, dict[date, Decimal]] = {}
    for key, buckets in state.achievement_days.items():
        ach = program.achievement_defs.get(key)
        if ach is None or ach.window_days is None or key in state.achievements:
            continue
        first = today - timedelta(days=ach.window_days - 1)
        kept = {d: v for d, v in buckets.items() if d >= first}
        if kept:
            days[key] = kept
    totals = {k: v for k, v in state.achievement_totals.items() if k not in state.achievements}
    new = state.copy()
    new.counters = counters
    new.achievement_days = days
    new.achievement_totals = totals
    return new
