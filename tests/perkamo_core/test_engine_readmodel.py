"""Tests of the engine's pure read-model pieces, state queries and state serialization."""

from __future__ import annotations

from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import pytest

from perkamo_core.engine import (
    CustomerState,
    EngineEvent,
    PerkUnlock,
    StateQuery,
    StreakState,
    achievements_view,
    active_boosts,
    customer_view,
    flags_view,
    format_datetime,
    next_perks_view,
    plan_read_query,
    plan_state_query,
    prune_state,
    streaks_view,
)
from perkamo_core.program import Program
from tests.perkamo_core.test_engine_rules import PRAGUE, SEED_MODULES, at, run


def test_seed_customer_view() -> None:
    r = run(SEED_MODULES, [("purchase.completed", "2026-06-01T10:00:00.000Z", {"amount": 12900, "currency": "CZK"})])
    view = customer_view(r.program, r.state, at("2026-06-01T10:00:01Z"), UTC)
    assert view == {
        "wallets": {"points": Decimal(50)},
        "level": {"wallet": "points", "level": 1, "current": Decimal(50), "nextLevelAt": Decimal(100), "currentLevelAt": Decimal(0), "progress": Decimal("0.5")},
        "perks": [
            {"key": "welcome_member", "unlocked_at": "2026-06-01T10:00:00.000Z", "metadata": {"trigger": {"type": "points_threshold", "wallet": "points", "amount": 30}}}
        ],
        "next_perks": [{"key": "active_user", "name": "Active user", "description": "Daily habit perk for apps like progress trackers or banking."}],
        "achievements": {"completed": [], "in_progress": [], "unlocked": []},
        "flags": {"levels": {"level_1": True}, "has_level_at_least": {"level_1": True}, "perks": {"welcome_member": True}},
        "streaks": [],
        "active_boosts": [],
    }


def test_flags_at_a_higher_level() -> None:
    program = Program.from_modules({"leveling": {"thresholds": [0, 10, 20]}})
    state = CustomerState(lifetime={"points": Decimal(25)}, balances={"points": Decimal(1)})
    assert flags_view(program, state) == {
        "levels": {"level_3": True},
        "has_level_at_least": {"level_1": True, "level_2": True, "level_3": True},
        "perks": {},
    }
    assert flags_view(Program.empty(), CustomerState()) == {"levels": {}, "has_level_at_least": {}, "perks": {}}


def test_perks_listed_in_unlock_order_and_kept_when_removed_from_the_program() -> None:
    state = CustomerState(
        perks={
            "b": PerkUnlock("b", at("2026-06-02T00:00:00Z"), {"type": "level", "level": 2}),
            "gone": PerkUnlock("gone", at("2026-06-01T00:00:00Z"), {"type": "event_count", "event": "x", "count": 1}),
        }
    )
    program = Program.from_modules({"perks": {"perks": [{"key": "a", "name": "A", "trigger": {"type": "points_threshold", "amount": 5}}]}})
    assert [p["key"] for p in customer_view(program, state, at("2026-06-03T00:00:00Z"), UTC)["perks"]] == ["gone", "b"]
    assert next_perks_view(program, state) == [{"key": "a", "name": "A", "description": None}]


ACH = {
    "achievements": {
        "achievements": [
            {"key": "weekly", "name": "Weekly", "event": "buy", "target": 3, "window_days": 7},
            {"key": "total", "name": "Total", "event": "buy", "measure": "sum", "field": "n", "target": 10},
            {"key": "untouched", "name": "Untouched", "event": "other", "target": 1},
        ],
        "streaks": [{"key": "daily", "event": "buy", "period": "day", "grace_periods": 1}, {"key": "never", "event": "x", "period": "week"}],
    }
}


def test_achievements_view_slides_the_window_at_read_time() -> None:
    r = run(ACH, [("buy", "2026-06-01T10:00:00Z", {"n": 4}), ("buy", "2026-06-03T10:00:00Z", {"n": 8})])
    assert r.state.achievements == {"total": at("2026-06-03T10:00:00Z")}
    view = achievements_view(r.program, r.state, at("2026-06-05T00:00:00Z"), UTC)
    assert view == {
        "completed": ["total"],
        "in_progress": [{"key": "weekly", "progress": Decimal(2), "target": 3}],
        "unlocked": [{"key": "total", "name": "Total", "unlocked_at": "2026-06-03T10:00:00.000Z"}],
    }
    later = achievements_view(r.program, r.state, at("2026-06-08T12:00:00Z"), UTC)  # 1 June left the window
    assert later["in_progress"] == [{"key": "weekly", "progress": Decimal(1), "target": 3}]


@pytest.mark.parametrize(
    ("now", "current"),
    [("2026-06-03T23:00:00Z", 2), ("2026-06-05T12:00:00Z", 2), ("2026-06-06T00:00:00Z", 0)],
    ids=["same-day", "within-grace", "broken"],
)
def test_streaks_view_reads_broken_streaks_as_zero(now: str, current: int) -> None:
    r = run(ACH, [("buy", "2026-06-01T10:00:00Z", {"n": 1}), ("buy", "2026-06-03T10:00:00Z", {"n": 1})])
    assert streaks_view(r.program, r.state, at(now), UTC) == [
        {"key": "daily", "current": current, "longest": 2, "last_period": "2026-06-03"},
        {"key": "never", "current": 0, "longest": 0, "last_period": None},
    ]


def test_weekly_streak_label_is_the_iso_week() -> None:
    program = Program.from_modules(ACH)
    state = CustomerState(streaks={"never": StreakState(1, 1, date(2026, 5, 25))})
    assert streaks_view(program, state, at("2026-05-27T00:00:00Z"), UTC)[1]["last_period"] == "2026-W22"


BOOSTS = {
    "boosts": {
        "boosts": [
            {"key": "weekend", "name": "Weekend", "multiplier": 2, "events": ["buy"], "starts_at": "2026-06-06T00:00:00Z", "ends_at": "2026-06-08T00:00:00Z"},
            {"key": "always", "multiplier": 1.5},
        ]
    }
}


@pytest.mark.parametrize(
    ("now", "keys"),
    [("2026-06-05T23:59:59Z", ["always"]), ("2026-06-06T00:00:00Z", ["weekend", "always"]), ("2026-06-08T00:00:00Z", ["always"])],
)
def test_active_boosts(now: str, keys: list[str]) -> None:
    boosts = active_boosts(Program.from_modules(BOOSTS), at(now))
    assert [b["key"] for b in boosts] == keys
    if "weekend" in keys:
        assert boosts[0] == {
            "key": "weekend",
            "name": "Weekend",
            "multiplier": 2,
            "events": ["buy"],
            "wallets": None,
            "starts_at": "2026-06-06T00:00:00.000Z",
            "ends_at": "2026-06-08T00:00:00.000Z",
        }
    assert boosts[-1]["multiplier"] == Decimal("1.5")


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2026, 6, 1, 10, tzinfo=UTC), "2026-06-01T10:00:00.000Z"),
        (datetime(2026, 6, 1, 12, 0, 0, 123456, tzinfo=PRAGUE), "2026-06-01T10:00:00.123Z"),
    ],
)
def test_format_datetime(value: datetime, text: str) -> None:
    assert format_datetime(value) == text


PLAN_PROGRAM: dict[str, Any] = {
    "events": {
        "rules": [
            {"event": "visit", "key": "daily", "amount": 1, "limits": {"per_day": 1, "per_week": 3}},
            {"event": "visit", "key": "cool", "amount": 1, "limits": {"cooldown_seconds": 60, "lifetime": 9}},
            {"event": "buy", "amount": 1},
        ]
    },
    "perks": {"perks": [{"key": "reg", "name": "Reg", "trigger": {"type": "event_count", "event": "visit", "count": 2}}]},
    **ACH,
}


def test_plan_state_query_names_what_one_event_reads() -> None:
    program = Program.from_modules({**PLAN_PROGRAM, "achievements": {**ACH["achievements"], "streaks": [{"key": "v", "event": "visit"}]}})
    q = plan_state_query(program, EngineEvent("visit", at("2026-06-01T23:30:00Z")), PRAGUE)
    assert q == StateQuery(
        counter_keys=frozenset({"daily|d|2026-06-02", "daily|w|2026-W23", "cool|life"}),
        last_applied_rules=frozenset({"cool"}),
        event_types=frozenset({"visit"}),
        streaks=frozenset({"v"}),
    )
    q2 = plan_state_query(program, EngineEvent("buy", at("2026-06-10T10:00:00Z")), UTC)
    assert q2.achievement_days == {"weekly": (date(2026, 6, 4), date(2026, 6, 10))}
    assert q2.achievement_totals == frozenset({"total"}) and q2.event_types == frozenset()
    merged = q.merge(q2).merge(plan_state_query(program, EngineEvent("buy", at("2026-06-12T10:00:00Z")), UTC))
    assert merged.achievement_days == {"weekly": (date(2026, 6, 4), date(2026, 6, 12))}
    assert merged.counter_keys == q.counter_keys and merged.streaks == frozenset({"v"})


def test_plan_read_query() -> None:
    q = plan_read_query(Program.from_modules(ACH), at("2026-06-10T23:30:00Z"), PRAGUE)
    assert q.achievement_days == {"weekly": (date(2026, 6, 5), date(2026, 6, 11))}
    assert q.achievement_totals == frozenset({"total", "untouched"})
    assert q.streaks == frozenset({"daily", "never"})


def test_state_json_round_trip() -> None:
    r = run(
        {**PLAN_PROGRAM, "perks": {"perks": [{"key": "p", "name": "P", "trigger": {"type": "points_threshold", "amount": 1.5}}]}},
        [("visit", "2026-06-01T10:00:00Z"), ("buy", "2026-06-02T10:00:00Z", {"n": 3})],
    )
    data = r.state.to_json()
    assert CustomerState.from_json(data) == r.state
    assert r.state.perks["p"].trigger["amount"] == Decimal("1.5")
    assert CustomerState.from_json({}) == CustomerState()


def test_prune_state_drops_what_no_future_event_reads() -> None:
    program = Program.from_modules(PLAN_PROGRAM)
    state = CustomerState(
        counters={"daily|d|2026-05-31": 1, "daily|d|2026-06-10": 1, "daily|w|2026-W22": 2, "daily|w|2026-W24": 1, "cool|life": 3},
        achievement_days={"weekly": {date(2026, 6, 1): Decimal(1), date(2026, 6, 9): Decimal(1)}},
        achievement_totals={"total": Decimal(12), "untouched": Decimal(0)},
        achievements={"total": at("2026-06-03T00:00:00Z")},
    )
    pruned = prune_state(program, state, date(2026, 6, 10))
    assert pruned.counters == {"daily|d|2026-06-10": 1, "daily|w|2026-W24": 1, "cool|life": 3}
    assert pruned.achievement_days == {"weekly": {date(2026, 6, 9): Decimal(1)}}
    assert pruned.achievement_totals == {"untouched": Decimal(0)}
    assert state.counters["daily|d|2026-05-31"] == 1  # the input is untouched


def test_state_json_omits_empty_sections_and_reads_the_first_streak_form() -> None:
    assert CustomerState(balances={"points": Decimal(5)}).to_json() == {"balances": {"points": "5"}}
    old = {"streaks": {"s": {"current": 2, "longest": 4, "last_period": "2026-06-01"}}, "counters": {}}
    assert CustomerState.from_json(old).streaks == {"s": StreakState(2, 4, date(2026, 6, 1))}
