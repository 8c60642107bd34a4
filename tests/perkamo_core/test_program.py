"""Tests of program module validation: accepted bodies, error paths, cross-checks, rule ids."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from perkamo_core.errors import ProgramValidationError, ValidationError
from perkamo_core.program import MODULE_NAMES, EventsModule, Program, validate_module

FULL: dict[str, dict[str, Any]] = {
    "wallets": {"wallets": [{"key": "points", "name": "Points", "precision": 0, "allow_negative": False}]},
    "events": {
        "rules": [
            {
                "event": "purchase.completed",
                "label": "Purchase",
                "wallet": "points",
                "formula": "{{amount}} / 100 * 2",
                "when": "{{currency}} == 'CZK'",
                "limits": {"per_day": None, "per_week": None, "lifetime": None, "cooldown_seconds": None},
                "active_from": None,
                "active_until": None,
            },
            {"event": "user.registered", "label": "Welcome", "wallet": "points", "amount": 30, "limits": {"lifetime": 1}},
        ]
    },
    "leveling": {"wallet": "points", "basis": "lifetime", "thresholds": [0, 100, 500, 2000], "names": ["Member", "Silver", "Gold", "Platinum"]},
    "perks": {
        "perks": [
            {"key": "welcome_member", "name": "Welcome member", "description": "...", "trigger": {"type": "points_threshold", "wallet": "points", "amount": 30}},
            {"key": "silver_lounge", "name": "Silver lounge", "trigger": {"type": "level", "level": 2}},
            {"key": "regular", "name": "Regular", "trigger": {"type": "event_count", "event": "visit.checked_in", "count": 10}},
            {"key": "streaker", "name": "Week streak", "trigger": {"type": "streak", "streak": "daily_visit", "count": 7}},
            {"key": "finisher", "name": "Finisher", "trigger": {"type": "achievement", "achievement": "five_purchases"}},
        ],
        "rewards": [
            {"key": "free_shipping", "name": "Free shipping", "wallet": "points", "cost": 100, "effect": {"type": "free_shipping"}, "limits": {"per_customer": None}}
        ],
    },
    "achievements": {
        "achievements": [
            {"key": "five_purchases", "name": "Five purchases", "event": "purchase.completed", "measure": "count", "target": 5, "window_days": None, "when": None},
            {"key": "big_spender", "name": "Big spender", "event": "purchase.completed", "measure": "sum", "field": "amount", "target": 100000, "window_days": 30},
        ],
        "streaks": [{"key": "daily_visit", "event": "visit.checked_in", "period": "day", "grace_periods": 0}],
    },
    "boosts": {
        "boosts": [
            {"key": "double_weekend", "multiplier": 2, "events": ["purchase.completed"], "wallets": ["points"], "starts_at": "2026-06-06T00:00:00Z", "ends_at": "2026-06-08T00:00:00Z", "when": None}
        ]
    },
}


def test_the_documented_example_program_loads() -> None:
    program = Program.from_modules(FULL)
    assert program.active_modules == frozenset(MODULE_NAMES)
    assert [r.rule_id for r in program.rules_by_event["purchase.completed"]] == ["purchase.completed#0"]
    assert program.rules_by_event["user.registered"][0].rule_id == "user.registered#1"
    assert program.rules_by_event["purchase.completed"][0].formula is not None
    assert program.counted_events == frozenset({"visit.checked_in"})
    assert program.leveling is not None and program.leveling.thresholds[1] == Decimal(100)


def test_rule_key_is_the_rule_id_when_given() -> None:
    program = Program.from_modules({"events": {"rules": [{"event": "a.b", "key": "welcome", "amount": 1}]}})
    assert program.rule_ids() == ("welcome",)


def test_missing_modules_are_empty_defaults() -> None:
    program = Program.empty()
    assert program.leveling is None
    assert program.rules_by_event == {}
    assert program.to_modules() == {}


def test_without_a_wallets_module_named_wallets_exist_implicitly() -> None:
    program = Program.from_modules({"events": {"rules": [{"event": "a", "wallet": "xp", "amount": 1}]}})
    assert program.wallet("xp").precision == 0
    assert set(program.wallet_defs) == {"xp"}


def test_to_modules_round_trips() -> None:
    program = Program.from_modules(FULL)
    again = Program.from_modules(program.to_modules())
    assert again.to_modules() == program.to_modules()


def test_with_module_replaces_and_rechecks() -> None:
    program = Program.from_modules(FULL)
    changed = program.with_module("wallets", {"wallets": [{"key": "points", "precision": 2}]})
    assert changed.wallet("points").precision == 2
    with pytest.raises(ProgramValidationError) as info:
        program.with_module("achievements", {"achievements": [], "streaks": []})
    assert info.value.path == "perks.perks[3].trigger.streak"


@pytest.mark.parametrize(
    ("module", "body", "path"),
    [
        ("events", {"rules": [{"event": "a", "amount": 1}, {"event": "b"}]}, "events.rules[1]"),
        ("events", {"rules": [{"event": "a", "amount": 1, "formula": "1"}]}, "events.rules[0]"),
        ("events", {"rules": [{"event": "a", "amount": 1}, {"event": "b", "formula": "{{x}} +"}]}, "events.rules[1].formula"),
        ("events", {"rules": [{"event": "a", "amount": 1, "when": "{{x}} =="}]}, "events.rules[0].when"),
        ("events", {"rules": [{"event": "a", "amount": "lots"}]}, "events.rules[0].amount"),
        ("events", {"rules": [{"event": "a", "amount": 1, "limits": {"per_day": 0}}]}, "events.rules[0].limits.per_day"),
        ("events", {"rules": [{"event": "a", "amount": 1, "limits": {"per_dya": 1}}]}, "events.rules[0].limits.per_dya"),
        ("events", {"rules": [{"event": "a", "amount": 1, "active_from": "2026-06-01T00:00:00"}]}, "events.rules[0].active_from"),
        ("events", {"rules": [{"event": "", "amount": 1}]}, "events.rules[0].event"),
        ("events", {"rules": [{"event": "a", "amount": "NaN"}]}, "events.rules[0].amount"),
        ("events", {"rules": "nope"}, "events.rules"),
        ("wallets", {"wallets": [{"key": "points", "precision": -1}]}, "wallets.wallets[0].precision"),
        ("wallets", {"wallets": [{"key": "points", "rounding": "bankers"}]}, "wallets.wallets[0].rounding"),
        ("wallets", {"wallets": [{"key": "points"}, {"key": "points"}]}, "wallets"),
        ("wallets", {"wallets": [{"key": "has space"}]}, "wallets.wallets[0].key"),
        ("leveling", {"thresholds": [10, 100]}, "leveling"),
        ("leveling", {"thresholds": [0, 100, 50]}, "leveling"),
        ("leveling", {"thresholds": [0, 100], "names": ["One"]}, "leveling"),
        ("leveling", {"thresholds": [0], "basis": "weekly"}, "leveling.basis"),
        ("leveling", {}, "leveling.thresholds"),
        ("perks", {"perks": [{"key": "a", "name": "A", "trigger": {"type": "points_threshold", "amount": "x"}}]}, "perks.perks[0].trigger.amount"),
        ("perks", {"perks": [{"key": "a", "name": "A", "trigger": {"type": "birthday"}}]}, "perks.perks[0].trigger"),
        ("perks", {"perks": [{"key": "a", "name": "A", "trigger": {"type": "event_count", "event": "x", "count": 0}}]}, "perks.perks[0].trigger.count"),
        ("perks", {"rewards": [{"key": "r", "name": "R", "cost": 0}]}, "perks.rewards[0].cost"),
        ("achievements", {"achievements": [{"key": "a", "name": "A", "event": "e", "measure": "sum", "target": 5}]}, "achievements.achievements[0]"),
        ("achievements", {"achievements": [{"key": "a", "name": "A", "event": "e", "target": 5, "when": "(("}]}, "achievements.achievements[0].when"),
        ("achievements", {"streaks": [{"key": "s", "event": "e", "period": "month"}]}, "achievements.streaks[0].period"),
        ("boosts", {"boosts": [{"key": "b", "multiplier": 2, "starts_at": "2026-06-08T00:00:00Z", "ends_at": "2026-06-06T00:00:00Z"}]}, "boosts.boosts[0]"),
        ("boosts", {"boosts": [{"key": "b", "multiplier": 2, "when": "nope"}]}, "boosts.boosts[0].when"),
        ("boosts", {"boosts": [{"key": "b", "multiplier": 0}]}, "boosts.boosts[0].multiplier"),
        ("rewards", {}, "rewards"),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_invalid_bodies_name_the_path(module: str, body: dict[str, Any], path: str) -> None:
    with pytest.raises(ProgramValidationError) as info:
        validate_module(module, body)
    assert info.value.path == path
    assert str(info.value).startswith(path)
    assert isinstance(info.value, ValidationError) and info.value.status == 400


@pytest.mark.parametrize(
    ("patch", "path"),
    [
        ({"events": {"rules": [{"event": "a", "wallet": "coins", "amount": 1}]}}, "events.rules[0].wallet"),
        ({"leveling": {"wallet": "xp", "thresholds": [0, 10]}}, "leveling.wallet"),
        ({"boosts": {"boosts": [{"key": "b", "multiplier": 2, "wallets": ["points", "xp"]}]}}, "boosts.boosts[0].wallets[1]"),
        (
            {"perks": {"perks": [{"key": "a", "name": "A", "trigger": {"type": "streak", "streak": "nope", "count": 2}}]}},
            "perks.perks[0].trigger.streak",
        ),
        (
            {"perks": {"perks": [{"key": "a", "name": "A", "trigger": {"type": "achievement", "achievement": "nope"}}]}},
            "perks.perks[0].trigger.achievement",
        ),
        (
            {"perks": {"perks": [{"key": "a", "name": "A", "trigger": {"type": "level", "level": 9}}]}},
            "perks.perks[0].trigger.level",
        ),
        (
            {"perks": {"perks": [{"key": "a", "name": "A", "trigger": {"type": "points_threshold", "wallet": "xp", "amount": 1}}]}},
            "perks.perks[0].trigger.wallet",
        ),
        ({"perks": {"rewards": [{"key": "r", "name": "R", "wallet": "xp", "cost": 1}]}}, "perks.rewards[0].wallet"),
        (
            {"events": {"rules": [{"event": "a", "key": "k", "amount": 1}, {"event": "b", "key": "k", "amount": 1}]}},
            "events",
        ),
        (
            {"events": {"rules": [{"event": "a", "amount": 1}, {"event": "b", "key": "a#0", "amount": 1}]}},
            "events.rules[1].key",  # '#' is reserved for generated rule ids
        ),
    ],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_cross_checks_name_the_path(patch: dict[str, Any], path: str) -> None:
    modules = {**FULL, **patch}
    with pytest.raises(ProgramValidationError) as info:
        Program.from_modules(modules)
    assert info.value.path == path


def test_validate_module_returns_the_model() -> None:
    module = validate_module("events", {"rules": [{"event": "a", "amount": 1.5}]})
    assert isinstance(module, EventsModule)
    assert module.rules[0].amount == Decimal("1.5")
