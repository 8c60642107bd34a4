"""Spec-like rule tests of the pure engine: program + events in, deltas, levels and unlocks out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from perkamo_core.engine import (
    CustomerState,
    EngineEvent,
    Outcome,
    apply_outcome,
    apply_redemption,
    evaluate,
    plan_redemption,
)
from perkamo_core.program import Program

PRAGUE = ZoneInfo("Europe/Prague")
POINTS = {"wallets": [{"key": "points", "name": "Points"}]}

SEED_MODULES: dict[str, Any] = {
    "wallets": POINTS,
    "events": {"rules": [{"event": "purchase.completed", "label": "Purchase", "wallet": "points", "amount": 50}]},
    "leveling": {"wallet": "points", "basis": "lifetime", "thresholds": [0, 100]},
    "perks": {
        "perks": [
            {"key": "welcome_member", "name": "Welcome member", "trigger": {"type": "points_threshold", "wallet": "points", "amount": 30}},
            {
                "key": "active_user",
                "name": "Active user",
                "description": "Daily habit perk for apps like progress trackers or banking.",
                "trigger": {"type": "points_threshold", "wallet": "points", "amount": 1000},
            },
        ]
    },
}


def at(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


Ev = tuple[str, str] | tuple[str, str, dict[str, Any]]


@dataclass
class Run:
    """The outcomes of a sequence of events and the final state."""

    outcomes: list[Outcome]
    state: CustomerState
    program: Program = field(repr=False)

    def amounts(self) -> list[list[Decimal]]:
        return [[d.amount for d in o.deltas] for o in self.outcomes]

    def totals(self) -> list[Decimal]:
        return [sum((d.amount for d in o.deltas), Decimal(0)) for o in self.outcomes]

    def reasons(self, i: int, kind: str = "rule") -> list[str]:
        return [t.reason for t in self.outcomes[i].trace if t.kind == kind]

    def unlocked(self, i: int) -> list[tuple[str, str]]:
        return [(u.type, u.key) for u in self.outcomes[i].unlocked]


def run(
    modules: dict[str, Any],
    events: Sequence[Ev],
    tz: tzinfo = UTC,
    state: CustomerState | None = None,
) -> Run:
    program = Program.from_modules(modules)
    current = state or CustomerState()
    outcomes = []
    for ev in events:
        name, when = ev[0], ev[1]
        context = ev[2] if len(ev) > 2 else {}  # type: ignore[misc]
        outcome = evaluate(program, current, EngineEvent(name, at(when), context), tz)
        outcomes.append(outcome)
        current = apply_outcome(current, outcome)
    return Run(outcomes, current, program)


def rules(*items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"wallets": POINTS, "events": {"rules": list(items)}, **extra}


# --- the seed example -------------------------------------------------------------------------


def test_seed_example() -> None:
    r = run(SEED_MODULES, [("purchase.completed", "2026-06-01T10:00:00.000Z", {"amount": 12900, "currency": "CZK"})])
    result = r.outcomes[0].to_result()
    assert result == {
        "applied": True,
        "duplicate": False,
        "delta": [{"wallet": "points", "amount": Decimal(50)}],
        "leveled_up": False,
        "unlocked": [{"type": "perk", "key": "welcome_member", "name": "Welcome member"}],
        "wallet_state": {"points": Decimal(50)},
        "level": {
            "wallet": "points",
            "level": 1,
            "current": Decimal(50),
            "nextLevelAt": Decimal(100),
            "currentLevelAt": Decimal(0),
            "progress": Decimal("0.5"),
        },
    }
    assert list(result) == ["applied", "duplicate", "delta", "leveled_up", "unlocked", "wallet_state", "level"]
    assert list(result["level"]) == ["wallet", "level", "current", "nextLevelAt", "currentLevelAt", "progress"]
    assert r.state.perks["welcome_member"].trigger == {"type": "points_threshold", "wallet": "points", "amount": 30}
    assert r.state.perks["welcome_member"].unlocked_at == at("2026-06-01T10:00:00Z")


def test_second_purchase_levels_up_and_unlocks_nothing_twice() -> None:
    r = run(SEED_MODULES, [("purchase.completed", "2026-06-01T10:00:00Z"), ("purchase.completed", "2026-06-01T11:00:00Z")])
    second = r.outcomes[1]
    assert second.leveled_up is True
    assert r.unlocked(1) == [("level", "level_2")]
    assert second.level is not None and second.level.level == 2
    assert second.level.next_level_at is None and second.level.progress == 1


# --- formulas and conditions --------------------------------------------------------------------

FORMULA_RULE = {"event": "purchase.completed", "formula": "{{amount}} / 100 * 2", "when": "{{currency}} == 'CZK'"}


@pytest.mark.parametrize(
    ("context", "total", "reason"),
    [
        ({"amount": 12900, "currency": "CZK"}, Decimal(258), "applied"),
        ({"amount": 12900, "currency": "EUR"}, Decimal(0), "condition is false"),
        ({"amount": 12900}, Decimal(0), "condition failed: missing field 'currency'"),
        ({"currency": "CZK"}, Decimal(0), "formula failed: missing field 'amount'"),
        ({"amount": "lots", "currency": "CZK"}, Decimal(0), "formula failed: '/' needs a number, got a string"),
        ({"amount": None, "currency": "CZK"}, Decimal(0), "formula failed: field 'amount' is null"),
    ],
    ids=["czk", "eur", "no-currency", "no-amount", "string-amount", "null-amount"],
)
def test_formula_with_when(context: dict[str, Any], total: Decimal, reason: str) -> None:
    r = run(rules(FORMULA_RULE), [("purchase.completed", "2026-06-01T10:00:00Z", context)])
    assert r.totals() == [total]
    assert r.reasons(0) == [reason]
    assert r.outcomes[0].to_result()["applied"] is True


TWO_DECIMALS = {"wallets": [{"key": "points", "name": "Points", "precision": 2}]}


@pytest.mark.parametrize(
    ("wallets", "value", "held"),
    [
        pytest.param(POINTS, 999_999_999_999_999, True, id="largest-integral"),
        pytest.param(POINTS, 10**15, False, id="next-integral"),
        pytest.param(POINTS, -999_999_999_999_999, True, id="largest-negative"),
        pytest.param(TWO_DECIMALS, Decimal("9999999999999.99"), True, id="largest-two-decimals"),
        pytest.param(TWO_DECIMALS, Decimal("10000000000000.00"), False, id="next-two-decimals"),
        pytest.param(POINTS, Decimal("1e25"), False, id="1e25"),
        pytest.param(POINTS, 1e300, False, id="1e300"),
        pytest.param(POINTS, 10**400, False, id="10**400"),
        pytest.param(POINTS, Decimal("1e200000"), False, id="huge-exponent"),
    ],
)
def test_a_movement_the_wallet_cannot_hold_exactly_rejects_the_event(
    wallets: dict[str, Any], value: Any, held: bool
) -> None:
    modules = {"wallets": wallets, "events": {"rules": [{"event": "e", "formula": "{{n}}", "wallet": "points"}]},
               "leveling": {"wallet": "points", "thresholds": [0, 100]}}
    start = CustomerState(balances={"points": Decimal(0)}, event_counts={"e": 4})
    r = run({**modules, "wallets": {**wallets, "wallets": [{**wallets["wallets"][0], "allow_negative": True}]}},
            [("e", "2026-06-01T10:00:00Z", {"n": value})], state=start)
    outcome = r.outcomes[0]
    if held:
        assert outcome.rejection is None
        assert r.amounts() == [[Decimal(value)]] and r.state.balances["points"] == Decimal(value)
    else:
        assert outcome.rejection is not None and "rule 'e#0'" in outcome.rejection
        assert outcome.deltas == () and outcome.level is None and outcome.event_count_increments == {}
        assert r.state == start  # applying a rejected outcome changes nothing


@pytest.mark.parametrize(
    ("formula", "context"),
    [
        pytest.param("{{n}} * 1000000", {"n": 10**20}, id="formula-result"),
        pytest.param("{{n}} * {{n}} * {{n}}", {"n": Decimal("1e400000")}, id="formula-overflow"),
        pytest.param("{{n}}", {"n": 10**90}, id="context-number"),
    ],
)
def test_formula_results_beyond_range_reject_the_event(formula: str, context: dict[str, Any]) -> None:
    r = run(rules({"event": "e", "formula": formula}), [("e", "2026-06-01T10:00:00Z", context), ("e", "2026-06-01T11:00:00Z", {"n": 3})])
    assert r.outcomes[0].rejection is not None and r.outcomes[1].rejection is None
    assert r.amounts()[0] == [] and r.state.balances["points"] == sum(r.amounts()[1], Decimal(0))


def test_a_condition_or_boost_on_a_number_beyond_range_rejects_the_event() -> None:
    r = run(rules({"event": "e", "amount": 1, "when": "{{n}} > 5"}), [("e", "2026-06-01T10:00:00Z", {"n": 10**90})])
    assert r.outcomes[0].rejection is not None and "condition" in r.outcomes[0].rejection


def test_a_boost_may_not_push_an_amount_beyond_the_wallet() -> None:
    boosts = {"boosts": [{"key": "x1000", "multiplier": 1000}]}
    fine = run(rules({"event": "e", "formula": "{{n}}"}, boosts=boosts), [("e", "2026-06-01T10:00:00Z", {"n": 999_999_999_999})])
    assert fine.amounts() == [[Decimal(999_999_999_999_000)]]
    over = run(rules({"event": "e", "formula": "{{n}}"}, boosts=boosts), [("e", "2026-06-01T10:00:00Z", {"n": 10**12})])
    assert over.outcomes[0].rejection is not None and over.amounts() == [[]]


def test_a_balance_or_lifetime_total_beyond_the_wallet_rejects_the_event() -> None:
    near = CustomerState(balances={"points": Decimal(999_999_999_999_000)}, lifetime={"points": Decimal(999_999_999_999_000)})
    r = run(rules({"event": "e", "formula": "{{n}}"}), [("e", "2026-06-01T10:00:00Z", {"n": 999}), ("e", "2026-06-01T11:00:00Z", {"n": 1})], state=near)
    assert r.outcomes[0].rejection is None and r.outcomes[1].rejection is not None
    assert "balance" in r.outcomes[1].rejection
    assert r.state.balances["points"] == Decimal(999_999_999_999_999)


def test_naive_occurred_at_is_a_programming_error() -> None:
    program = Program.from_modules(SEED_MODULES)
    with pytest.raises(ValueError, match="timezone-aware"):
        evaluate(program, CustomerState(), EngineEvent("purchase.completed", datetime(2026, 6, 1, 10)), UTC)


def test_a_failed_formula_is_reported_and_other_rules_still_apply() -> None:
    r = run(
        rules(
            {"event": "order", "key": "per_item", "formula": "{{total}} / {{items}}"},
            {"event": "order", "key": "flat", "amount": 5},
        ),
        [("order", "2026-06-01T10:00:00Z", {"total": 100, "items": 0})],
    )
    assert [(t.key, t.applied, t.reason) for t in r.outcomes[0].trace] == [
        ("per_item", False, "formula failed: division by zero"),
        ("flat", True, "applied"),
    ]
    assert r.amounts() == [[Decimal(5)]]


def test_several_rules_give_one_delta_each_and_an_event_without_rules_is_recorded() -> None:
    r = run(
        rules({"event": "a", "amount": 10}, {"event": "a", "amount": 3}),
        [("a", "2026-06-01T10:00:00Z"), ("unknown.event", "2026-06-01T11:00:00Z")],
    )
    assert r.amounts() == [[Decimal(10), Decimal(3)], []]
    assert [d.rule_id for d in r.outcomes[0].deltas] == ["a#0", "a#1"]
    assert r.outcomes[1].to_result()["delta"] == []
    assert r.outcomes[1].to_result()["wallet_state"] == {"points": Decimal(13)}
    assert r.state.event_counts == {"a": 1, "unknown.event": 1}


def test_zero_amount_is_not_an_application() -> None:
    r = run(
        rules({"event": "a", "formula": "{{n}}", "limits": {"per_day": 1}}),
        [("a", "2026-06-01T08:00:00Z", {"n": 0}), ("a", "2026-06-01T09:00:00Z", {"n": 4})],
    )
    assert r.amounts() == [[], [Decimal(4)]]
    assert r.reasons(0) == ["amount is zero"]


# --- limits -------------------------------------------------------------------------------------

PER_DAY = {"event": "visit", "amount": 10, "limits": {"per_day": 1}}


@pytest.mark.parametrize(
    ("tz", "expected"),
    [
        # 10:00Z is 12:00 on 1 June in Prague; 23:30Z is 01:30 on 2 June there; 08:00Z on 2 June is the same local day
        (UTC, [[Decimal(10)], [], [Decimal(10)]]),
        (PRAGUE, [[Decimal(10)], [Decimal(10)], []]),
    ],
    ids=["utc", "europe-prague"],
)
def test_per_day_uses_the_space_timezone(tz: tzinfo, expected: list[list[Decimal]]) -> None:
    r = run(
        rules(PER_DAY),
        [("visit", "2026-06-01T10:00:00Z"), ("visit", "2026-06-01T23:30:00Z"), ("visit", "2026-06-02T08:00:00Z")],
        tz=tz,
    )
    assert r.amounts() == expected
    blocked = next(i for i, a in enumerate(expected) if not a)
    assert r.reasons(blocked) == ["per_day limit 1 reached"]


def test_per_day_counter_keys_name_the_local_day() -> None:
    r = run(rules({**PER_DAY, "key": "visit_bonus"}), [("visit", "2026-06-01T23:30:00Z")], tz=PRAGUE)
    assert r.outcomes[0].counter_increments == {"visit_bonus|d|2026-06-02": 1}


@pytest.mark.parametrize(
    ("tz", "events", "expected"),
    [
        (
            UTC,
            ["2026-06-01T10:00:00Z", "2026-06-02T10:00:00Z", "2026-06-03T10:00:00Z", "2026-06-08T10:00:00Z"],
            [[Decimal(5)], [Decimal(5)], [], [Decimal(5)]],
        ),
        # Sunday 7 June 22:30Z is Monday 8 June 00:30 in Prague: a new ISO week there, not in UTC
        (UTC, ["2026-06-01T10:00:00Z", "2026-06-02T10:00:00Z", "2026-06-07T22:30:00Z"], [[Decimal(5)], [Decimal(5)], []]),
        (
            PRAGUE,
            ["2026-06-01T10:00:00Z", "2026-06-02T10:00:00Z", "2026-06-07T22:30:00Z"],
            [[Decimal(5)], [Decimal(5)], [Decimal(5)]],
        ),
    ],
    ids=["utc-next-week", "utc-sunday-night", "prague-sunday-night-is-monday"],
)
def test_per_week(tz: tzinfo, events: list[str], expected: list[list[Decimal]]) -> None:
    r = run(rules({"event": "visit", "key": "wk", "amount": 5, "limits": {"per_week": 2}}), [("visit", e) for e in events], tz=tz)
    assert r.amounts() == expected


def test_per_week_counter_uses_the_iso_week() -> None:
    r = run(rules({"event": "visit", "key": "wk", "amount": 5, "limits": {"per_week": 2}}), [("visit", "2027-01-01T10:00:00Z")])
    assert r.outcomes[0].counter_increments == {"wk|w|2026-W53": 1}


def test_cooldown() -> None:
    r = run(
        rules({"event": "ping", "key": "ping", "amount": 1, "limits": {"cooldown_seconds": 3600}}),
        [("ping", "2026-06-01T10:00:00Z"), ("ping", "2026-06-01T10:59:59Z"), ("ping", "2026-06-01T11:00:00Z"), ("ping", "2026-06-01T11:30:00Z")],
    )
    assert r.amounts() == [[Decimal(1)], [], [Decimal(1)], []]
    assert r.reasons(1) == ["cooldown not elapsed"]
    assert r.state.last_applied == {"ping": at("2026-06-01T11:00:00Z")}


def test_lifetime_limit() -> None:
    r = run(
        rules({"event": "user.registered", "label": "Welcome", "amount": 30, "limits": {"lifetime": 1}}),
        [("user.registered", "2026-06-01T10:00:00Z"), ("user.registered", "2027-06-01T10:00:00Z")],
    )
    assert r.amounts() == [[Decimal(30)], []]
    assert r.reasons(1) == ["lifetime limit 1 reached"]
    assert r.state.counters == {"user.registered#0|life": 1}


def test_limits_combine() -> None:
    r = run(
        rules({"event": "v", "amount": 1, "limits": {"per_day": 2, "lifetime": 3}}),
        [("v", f"2026-06-0{d}T1{h}:00:00Z") for d in (1, 2) for h in (0, 1, 2)],
    )
    assert r.amounts() == [[Decimal(1)], [Decimal(1)], [], [Decimal(1)], [], []]


def test_active_window() -> None:
    r = run(
        rules({"event": "v", "amount": 1, "active_from": "2026-06-01T00:00:00Z", "active_until": "2026-06-02T00:00:00Z"}),
        [("v", "2026-05-31T23:59:59Z"), ("v", "2026-06-01T00:00:00Z"), ("v", "2026-06-02T00:00:00Z")],
    )
    assert r.amounts() == [[], [Decimal(1)], []]
    assert r.reasons(0) == ["not active yet"] and r.reasons(2) == ["no longer active"]


# --- boosts -------------------------------------------------------------------------------------

BOOSTS = {
    "boosts": {"boosts": [
        {"key": "double_weekend", "multiplier": 2, "events": ["purchase.completed"], "wallets": ["points"], "starts_at": "2026-06-06T00:00:00Z", "ends_at": "2026-06-08T00:00:00Z"},
        {"key": "launch", "multiplier": 1.5, "starts_at": "2026-06-07T00:00:00Z", "ends_at": "2026-06-09T00:00:00Z"},
        {"key": "vip", "multiplier": 3, "when": "{{tier}} == 'vip'"},
        {"key": "xp_only", "multiplier": 10, "wallets": ["xp"]},
    ]}
}


@pytest.mark.parametrize(
    ("when", "context", "total"),
    [
        ("2026-06-05T12:00:00Z", {}, Decimal(10)),
        ("2026-06-06T12:00:00Z", {}, Decimal(20)),
        ("2026-06-07T12:00:00Z", {}, Decimal(30)),  # 2 x 1.5 stack
        ("2026-06-08T00:00:00Z", {}, Decimal(15)),  # double_weekend ended (exclusive end)
        ("2026-06-07T12:00:00Z", {"tier": "vip"}, Decimal(90)),
        ("2026-06-09T12:00:00Z", {"tier": "basic"}, Decimal(10)),
    ],
    ids=["none", "double", "stacked", "end-exclusive", "three-stacked", "when-false"],
)
def test_stacked_boosts(when: str, context: dict[str, Any], total: Decimal) -> None:
    modules = {"wallets": {"wallets": [{"key": "points"}, {"key": "xp"}]}, "events": {"rules": [{"event": "purchase.completed", "amount": 10}]}, **BOOSTS}
    r = run(modules, [("purchase.completed", when, context)])
    assert r.totals() == [total]


def test_boosts_leave_negative_deltas_alone_and_failed_conditions_are_traced() -> None:
    modules = {
        "wallets": {"wallets": [{"key": "points", "allow_negative": True}, {"key": "xp"}]},
        "events": {"rules": [{"event": "refund", "amount": -10}, {"event": "buy", "amount": 10}]},
        **BOOSTS,
    }
    r = run(modules, [("refund", "2026-06-07T12:00:00Z", {"tier": "vip"}), ("buy", "2026-06-10T12:00:00Z")])
    assert r.totals() == [Decimal(-10), Decimal(10)]
    assert r.reasons(1, "boost") == ["condition failed: missing field 'tier'"]


# --- precision, rounding, clamping ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("wallet", "formula", "expected"),
    [
        ({"precision": 0}, "2.5", Decimal(2)),
        ({"precision": 0}, "3.5", Decimal(4)),
        ({"precision": 0, "rounding": "half_up"}, "2.5", Decimal(3)),
        ({"precision": 0, "rounding": "down"}, "2.9", Decimal(2)),
        ({"precision": 0, "rounding": "ceiling"}, "2.1", Decimal(3)),
        ({"precision": 2}, "10 / 3", Decimal("3.33")),
        ({"precision": 2}, "1", Decimal("1.00")),
        ({"precision": 0}, "0.4", None),  # rounds to zero: no movement
    ],
    ids=["half-even-down", "half-even-up", "half-up", "down", "ceiling", "two-places", "scale", "to-zero"],
)
def test_precision_and_rounding(wallet: dict[str, Any], formula: str, expected: Decimal | None) -> None:
    modules = {"wallets": {"wallets": [{"key": "points", **wallet}]}, "events": {"rules": [{"event": "e", "formula": formula}]}}
    r = run(modules, [("e", "2026-06-01T10:00:00Z")])
    if expected is None:
        assert r.amounts() == [[]]
    else:
        assert r.amounts() == [[expected]]
        assert str(r.outcomes[0].balances["points"]) == str(expected)


def test_boosted_amount_is_rounded_once_after_multiplying() -> None:
    modules = {
        "wallets": POINTS,
        "events": {"rules": [{"event": "e", "amount": 3}]},
        "boosts": {"boosts": [{"key": "b", "multiplier": 1.5}]},
    }
    assert run(modules, [("e", "2026-06-01T10:00:00Z")]).totals() == [Decimal(4)]  # 4.5 -> 4 half-even


@pytest.mark.parametrize(
    ("allow_negative", "start", "expected_delta", "expected_balance"),
    [
        (False, Decimal(30), [Decimal(-30)], Decimal(0)),
        (False, Decimal(0), [], Decimal(0)),
        (False, Decimal(80), [Decimal(-50)], Decimal(30)),
        (True, Decimal(30), [Decimal(-50)], Decimal(-20)),
    ],
    ids=["clamped", "nothing-to-take", "enough", "allow-negative"],
)
def test_clamp_to_zero(allow_negative: bool, start: Decimal, expected_delta: list[Decimal], expected_balance: Decimal) -> None:
    modules = {"wallets": {"wallets": [{"key": "points", "allow_negative": allow_negative}]}, "events": {"rules": [{"event": "void", "amount": -50}]}}
    state = CustomerState(balances={"points": start}, lifetime={"points": start})
    r = run(modules, [("void", "2026-06-01T10:00:00Z")], state=state)
    assert r.amounts() == [expected_delta]
    assert r.state.balances["points"] == expected_balance
    assert r.state.lifetime["points"] == start  # negative movements never reduce lifetime


def test_clamp_applies_to_the_running_balance_within_one_event() -> None:
    r = run(
        rules({"event": "e", "amount": 20}, {"event": "e", "amount": -50}),
        [("e", "2026-06-01T10:00:00Z")],
    )
    assert r.amounts() == [[Decimal(20), Decimal(-20)]]


# --- leveling -----------------------------------------------------------------------------------

LEVELS = {"thresholds": [0, 100, 500], "names": ["Member", "Silver", "Gold"]}
REWARDS = {"perks": {"rewards": [{"key": "free_shipping", "name": "Free shipping", "cost": 100, "effect": {"type": "free_shipping"}}]}}


@pytest.mark.parametrize(
    ("basis", "level_after_redeem", "current_after_redeem"),
    [("balance", 1, Decimal(50)), ("lifetime", 2, Decimal(150))],
    ids=["balance-demotes", "lifetime-never-demotes"],
)
def test_leveling_bases(basis: str, level_after_redeem: int, current_after_redeem: Decimal) -> None:
    modules = rules({"event": "buy", "formula": "{{n}}"}, leveling={**LEVELS, "basis": basis}, **REWARDS)
    r = run(modules, [("buy", "2026-06-01T10:00:00Z", {"n": 150})])
    assert r.outcomes[0].leveled_up and r.unlocked(0) == [("level", "level_2")]
    assert r.outcomes[0].unlocked[0].name == "Silver"
    plan = plan_redemption(r.program, r.state, "free_shipping")
    assert plan.ok and plan.level is not None
    assert (plan.level.level, plan.level.current) == (level_after_redeem, current_after_redeem)
    state = apply_redemption(r.state, plan)
    later = evaluate(r.program, state, EngineEvent("buy", at("2026-06-02T10:00:00Z"), {"n": 10}), UTC)
    assert later.level is not None and later.level.level == level_after_redeem
    assert later.leveled_up is False


@pytest.mark.parametrize(
    ("points", "level", "progress", "next_at"),
    [
        (0, 1, Decimal(0), Decimal(100)),
        (50, 1, Decimal("0.5"), Decimal(100)),
        (100, 2, Decimal(0), Decimal(500)),
        (200, 2, Decimal("0.25"), Decimal(500)),
        (233, 2, Decimal("0.3325"), Decimal(500)),
        (499, 2, Decimal("0.9975"), Decimal(500)),
        (500, 3, Decimal(1), None),
        (9000, 3, Decimal(1), None),
    ],
)
def test_level_object(points: int, level: int, progress: Decimal, next_at: Decimal | None) -> None:
    modules = rules({"event": "buy", "formula": "{{n}}"}, leveling=LEVELS)
    r = run(modules, [("buy", "2026-06-01T10:00:00Z", {"n": points})])
    lv = r.outcomes[0].level
    assert lv is not None
    assert (lv.level, lv.progress, lv.next_level_at, lv.current) == (level, progress, next_at, Decimal(points))


def test_jumping_several_levels_unlocks_each() -> None:
    r = run(rules({"event": "buy", "amount": 600}, leveling=LEVELS), [("buy", "2026-06-01T10:00:00Z")])
    assert r.unlocked(0) == [("level", "level_2"), ("level", "level_3")]


def test_no_leveling_module_means_no_level() -> None:
    r = run(rules({"event": "buy", "amount": 1}), [("buy", "2026-06-01T10:00:00Z")])
    assert r.outcomes[0].level is None and r.outcomes[0].to_result()["level"] is None


# --- perks: every trigger type ---------------------------------------------------------------------

PERK_PROGRAM: dict[str, Any] = {
    "wallets": {"wallets": [{"key": "points", "allow_negative": False}]},
    "events": {"rules": [{"event": "buy", "formula": "{{n}}"}, {"event": "refund", "formula": "-{{n}}"}]},
    "leveling": {"thresholds": [0, 100]},
    "perks": {
        "perks": [
            {"key": "welcome", "name": "Welcome", "trigger": {"type": "points_threshold", "wallet": "points", "amount": 30}},
            {"key": "silver", "name": "Silver", "trigger": {"type": "level", "level": 2}},
            {"key": "regular", "name": "Regular", "trigger": {"type": "event_count", "event": "visit", "count": 3}},
            {"key": "streaker", "name": "Streaker", "trigger": {"type": "streak", "streak": "daily_visit", "count": 2}},
            {"key": "finisher", "name": "Finisher", "trigger": {"type": "achievement", "achievement": "two_buys"}},
        ]
    },
    "achievements": {
        "achievements": [{"key": "two_buys", "name": "Two buys", "event": "buy", "target": 2}],
        "streaks": [{"key": "daily_visit", "event": "visit", "period": "day"}],
    },
}


def test_points_threshold_uses_lifetime_earned_not_the_balance() -> None:
    r = run(PERK_PROGRAM, [("buy", "2026-06-01T10:00:00Z", {"n": 20}), ("refund", "2026-06-01T11:00:00Z", {"n": 20}), ("buy", "2026-06-01T12:00:00Z", {"n": 10})])
    assert [r.unlocked(i) for i in range(3)] == [[], [], [("achievement", "two_buys"), ("perk", "welcome"), ("perk", "finisher")]]
    assert r.state.balances["points"] == 10


@pytest.mark.parametrize(
    ("events", "unlocked_at", "expected"),
    [
        ([("buy", "2026-06-01T10:00:00Z", {"n": 120})], 0, [("level", "level_2"), ("perk", "welcome"), ("perk", "silver")]),
        ([("visit", f"2026-06-01T1{h}:00:00Z") for h in range(3)], 2, [("perk", "regular")]),
        ([("visit", "2026-06-01T10:00:00Z"), ("visit", "2026-06-02T10:00:00Z")], 1, [("perk", "streaker")]),
        (
            [("buy", "2026-06-01T10:00:00Z", {"n": 1}), ("buy", "2026-06-01T11:00:00Z", {"n": 1})],
            1,
            [("achievement", "two_buys"), ("perk", "finisher")],
        ),
    ],
    ids=["level", "event_count", "streak", "achievement"],
)
def test_every_perk_trigger(events: list[Ev], unlocked_at: int, expected: list[tuple[str, str]]) -> None:
    r = run(PERK_PROGRAM, events)
    assert r.unlocked(unlocked_at) == expected
    assert all(not r.unlocked(i) for i in range(unlocked_at))
    perk_key = expected[-1][1]
    trigger = next(p for p in PERK_PROGRAM["perks"]["perks"] if p["key"] == perk_key)["trigger"]
    assert dict(r.state.perks[perk_key].trigger) == trigger
    assert r.state.perks[perk_key].unlocked_at == at(events[unlocked_at][1])


def test_perks_unlock_once_and_stay_unlocked() -> None:
    r = run(PERK_PROGRAM, [("buy", "2026-06-01T10:00:00Z", {"n": 40}), ("refund", "2026-06-01T11:00:00Z", {"n": 40}), ("buy", "2026-06-02T10:00:00Z", {"n": 40})])
    assert [r.unlocked(i) for i in range(3)] == [[("perk", "welcome")], [], [("achievement", "two_buys"), ("perk", "finisher")]]
    assert r.state.perks["welcome"].unlocked_at == at("2026-06-01T10:00:00Z")


# --- achievements ---------------------------------------------------------------------------------

ACHIEVEMENTS = {
    "achievements": {
        "achievements": [
            {"key": "three_in_a_week", "name": "Three in a week", "event": "buy", "measure": "count", "target": 3, "window_days": 7},
            {"key": "big_spender", "name": "Big spender", "event": "buy", "measure": "sum", "field": "order.amount", "target": 1000},
            {"key": "czk_fan", "name": "CZK fan", "event": "buy", "target": 2, "when": "{{currency}} == 'CZK'"},
            {"key": "month_spender", "name": "Month spender", "event": "buy", "measure": "sum", "field": "order.amount", "target": 1500, "window_days": 30},
        ]
    }
}


def _buy(day: str, amount: int, currency: str = "EUR") -> Ev:
    return ("buy", f"{day}T10:00:00Z", {"order": {"amount": amount}, "currency": currency})


@pytest.mark.parametrize(
    ("events", "completed"),
    [
        ([_buy("2026-06-01", 1), _buy("2026-06-02", 1), _buy("2026-06-03", 1)], {2: ["three_in_a_week"]}),
        # days 1, 2 then 9: the first two fell out of the 7-day window; 9, 10, 11 complete it
        ([_buy("2026-06-01", 1), _buy("2026-06-02", 1), _buy("2026-06-09", 1), _buy("2026-06-10", 1), _buy("2026-06-11", 1)], {4: ["three_in_a_week"]}),
        ([_buy("2026-06-01", 400), _buy("2026-09-01", 700)], {1: ["big_spender"]}),
        ([_buy("2026-06-01", 800), _buy("2026-06-30", 800)], {1: ["big_spender", "month_spender"]}),
        ([_buy("2026-06-01", 800), _buy("2026-07-01", 800)], {1: ["big_spender"]}),
        ([_buy("2026-06-01", 1, "CZK"), _buy("2026-08-01", 1, "EUR"), _buy("2026-10-01", 1, "CZK")], {2: ["czk_fan"]}),
    ],
    ids=["count-in-window", "count-window-slides", "sum-all-time", "sum-in-window", "sum-window-missed", "count-with-when"],
)
def test_achievements(events: list[Ev], completed: dict[int, list[str]]) -> None:
    r = run({"wallets": POINTS, **ACHIEVEMENTS}, events)
    for i in range(len(events)):
        assert [k for t, k in r.unlocked(i) if t == "achievement"] == completed.get(i, []), i


def test_completed_achievements_stop_counting_and_bad_fields_are_traced() -> None:
    r = run({"wallets": POINTS, **ACHIEVEMENTS}, [_buy("2026-06-01", 1200), ("buy", "2026-06-02T10:00:00Z", {"order": {}})])
    assert "big_spender" in r.state.achievements
    assert all(inc.key != "big_spender" for inc in r.outcomes[1].achievement_increments)
    assert "field failed: missing field 'order.amount'" in r.reasons(1, "achievement")


def test_windowed_achievements_bucket_by_local_day() -> None:
    r = run({"wallets": POINTS, **ACHIEVEMENTS}, [_buy("2026-06-01", 5)], tz=PRAGUE)
    r2 = run({"wallets": POINTS, **ACHIEVEMENTS}, [("buy", "2026-06-01T23:30:00Z", {"order": {"amount": 5}})], tz=PRAGUE)
    assert set(r.state.achievement_days["month_spender"]) == {datetime(2026, 6, 1).date()}
    assert set(r2.state.achievement_days["month_spender"]) == {datetime(2026, 6, 2).date()}


# --- streaks ------------------------------------------------------------------------------------


def _streak_run(period: str, grace: int, days: list[str], tz: tzinfo = UTC) -> Run:
    modules = {"wallets": POINTS, "achievements": {"streaks": [{"key": "s", "event": "visit", "period": period, "grace_periods": grace}]}}
    return run(modules, [("visit", d if "T" in d else f"{d}T10:00:00Z") for d in days], tz=tz)


@pytest.mark.parametrize(
    ("period", "grace", "days", "current", "longest", "last"),
    [
        ("day", 0, ["2026-06-01", "2026-06-02", "2026-06-03"], 3, 3, "2026-06-03"),
        ("day", 0, ["2026-06-01", "2026-06-01", "2026-06-02"], 2, 2, "2026-06-02"),
        ("day", 0, ["2026-06-01", "2026-06-02", "2026-06-03", "2026-06-05"], 1, 3, "2026-06-05"),
        ("day", 1, ["2026-06-01", "2026-06-03", "2026-06-05"], 3, 3, "2026-06-05"),
        ("day", 1, ["2026-06-01", "2026-06-03", "2026-06-06", "2026-06-07"], 2, 2, "2026-06-07"),
        ("day", 0, ["2026-06-03", "2026-06-01"], 1, 1, "2026-06-03"),
        ("week", 0, ["2026-06-01", "2026-06-07", "2026-06-08", "2026-06-15"], 3, 3, "2026-06-15"),
        ("week", 0, ["2026-06-01", "2026-06-15"], 1, 1, "2026-06-15"),
        ("week", 1, ["2026-06-01", "2026-06-15", "2026-06-22"], 3, 3, "2026-06-22"),
    ],
    ids=["daily", "same-day-twice", "broken-keeps-longest", "grace-kept", "grace-broken", "late-event-ignored", "weekly", "weekly-broken", "weekly-grace"],
)
def test_streaks(period: str, grace: int, days: list[str], current: int, longest: int, last: str) -> None:
    st = _streak_run(period, grace, days).state.streaks["s"]
    assert (st.current, st.longest, st.last_period) == (current, longest, datetime.fromisoformat(last).date() if period == "day" else _monday(last))


def _monday(day: str) -> Any:
    d = datetime.fromisoformat(day).date()
    return d.fromordinal(d.toordinal() - d.weekday())


def test_streak_periods_use_the_space_timezone() -> None:
    # 22:30Z on 1 June is 00:30 on 2 June in Prague: two consecutive local days there, one day in UTC
    days = ["2026-06-01T08:00:00Z", "2026-06-01T22:30:00Z"]
    assert _streak_run("day", 0, days, tz=PRAGUE).state.streaks["s"].current == 2
    assert _streak_run("day", 0, days, tz=UTC).state.streaks["s"].current == 1


# --- redemption -------------------------------------------------------------------------------------

REDEEM_PROGRAM = {
    "wallets": POINTS,
    "events": {"rules": [{"event": "buy", "formula": "{{n}}"}]},
    "perks": {
        "rewards": [
            {"key": "free_shipping", "name": "Free shipping", "cost": 100, "effect": {"type": "free_shipping"}},
            {"key": "once", "name": "Once", "cost": 10, "limits": {"per_customer": 1}},
        ]
    },
}


@pytest.mark.parametrize(
    ("balance", "reward", "status", "after"),
    [
        (Decimal(150), "free_shipping", "ok", Decimal(50)),
        (Decimal(100), "free_shipping", "ok", Decimal(0)),
        (Decimal(99), "free_shipping", "insufficient_balance", Decimal(99)),
        (Decimal(150), "nope", "unknown_reward", Decimal(150)),
    ],
    ids=["ok", "exact", "insufficient", "unknown"],
)
def test_redemption(balance: Decimal, reward: str, status: str, after: Decimal) -> None:
    program = Program.from_modules(REDEEM_PROGRAM)
    state = CustomerState(balances={"points": balance}, lifetime={"points": balance})
    before = state.to_json()
    plan = plan_redemption(program, state, reward)
    assert plan.status == status
    assert state.to_json() == before  # planning changes nothing
    if plan.ok:
        assert plan.effect == {"type": "free_shipping"}
        assert plan.delta is not None and plan.delta.amount == -100
        new = apply_redemption(state, plan)
        assert new.balances["points"] == after and new.lifetime["points"] == balance
        assert state.balances["points"] == balance
    else:
        assert plan.delta is None
        with pytest.raises(ValueError):
            apply_redemption(state, plan)
    if status == "insufficient_balance":
        assert "costs 100 points; the balance is 99" in plan.message


def test_reward_per_customer_limit() -> None:
    program = Program.from_modules(REDEEM_PROGRAM)
    state = CustomerState(balances={"points": Decimal(100)})
    state = apply_redemption(state, plan_redemption(program, state, "once"))
    assert plan_redemption(program, state, "once").status == "limit_reached"
    assert state.reward_counts == {"once": 1}


def test_redemption_on_a_negative_allowed_wallet_may_go_below_zero() -> None:
    program = Program.from_modules({**REDEEM_PROGRAM, "wallets": {"wallets": [{"key": "points", "allow_negative": True}]}})
    plan = plan_redemption(program, CustomerState(), "free_shipping")
    assert plan.ok and plan.balance_after == -100
