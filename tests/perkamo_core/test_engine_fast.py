"""The engine's fast paths change nothing observable: trace off, formulas without their fast path,
rules-only programs against the general path, fast-built outcomes and states against `__init__`."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from dataclasses import FrozenInstanceError, fields, replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from pathlib import Path
from typing import Any
from unittest import mock

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import perkamo_core.engine as engine_module
import perkamo_core.engine.plans as engine_plans
import perkamo_core.program as program_module
from perkamo_core.engine import CustomerState, EngineEvent, Outcome, apply_outcome, evaluate
from perkamo_core.formula import compile_expression
from perkamo_core.program import Program
from tests.perkamo_core.test_engine_properties import PROGRAM as RICH_PROGRAM
from tests.perkamo_core.test_engine_properties import _events as rich_events
from tests.perkamo_core.test_engine_rules import PRAGUE

MIGRATION: dict[str, Any] = json.loads(
    (Path(__file__).resolve().parents[2] / "config" / "programs" / "migration.json").read_text()
)


def _without_fast_formulas(modules: Mapping[str, Any]) -> Program:
    """The same program with every expression compiled without the formula fast path."""
    slow = partial(compile_expression, fast=False)
    with mock.patch.object(program_module, "compile_expression", slow), mock.patch.object(
        engine_plans, "compile_expression", slow
    ):
        program = Program.from_modules(modules)
        for event in list(program.rules_by_event) + list(program.achievements_by_event):
            engine_plans._event_plan(program, event)  # builds (and caches) the plans under the patch
    return program


# the migration program three ways: as is; with a never-firing perk, so it takes the general
# (not rules-only) path; and with formulas compiled without their fast path
MIGRATION_PROGRAM = Program.from_modules(MIGRATION)
MIGRATION_GENERAL = Program.from_modules(
    {
        **MIGRATION,
        "perks": {
            "perks": [
                {"key": "never", "name": "Never", "trigger": {"type": "event_count", "event": "nothing", "count": 1}}
            ]
        },
    }
)
MIGRATION_SLOW = _without_fast_formulas(MIGRATION)
# the property tests' rich program (levels, perks, achievements, streaks, boosts, limits), rebuilt
# from its module bodies without the formula fast path
RICH_SLOW = _without_fast_formulas(
    {name: getattr(RICH_PROGRAM, name).model_dump(mode="json", exclude_unset=True) for name in RICH_PROGRAM.active_modules}
)

BASE = datetime(2024, 3, 1, tzinfo=UTC)
_EVENT_NAMES = [
    "perkville.points_earned",
    "perkville.points_redeemed",
    "perkville.transaction_voided",
    "perkville.balance_migrated",
    "perkville.balance_adjusted",
    "perkville.unknown",
]
_amount = st.one_of(
    st.integers(min_value=-600, max_value=600),
    st.integers(min_value=10**23, max_value=10**25),
    st.integers(min_value=2**199, max_value=2**201),
    st.sampled_from([None, "10", True, 1.5, Decimal("2.50"), float("nan")]),
)
_migration_events = st.lists(
    st.builds(
        lambda name, minutes, amount, classification, drop: EngineEvent(
            name,
            BASE + timedelta(minutes=minutes),
            {
                k: v
                for k, v in {
                    "source": "perkville",
                    "classification": classification,
                    "points": amount,
                    "quantity": 1,
                    "amount": amount,
                    "perkville_transaction_id": str(minutes),
                }.items()
                if k != drop
            },
            f"pv:{minutes}",
        ),
        st.sampled_from(_EVENT_NAMES),
        st.integers(min_value=0, max_value=60 * 24 * 30),
        _amount,
        st.sampled_from(["EARN", "REDEEM", "VOID", None, 3]),
        st.sampled_from([None, "amount", "classification"]),
    ),
    max_size=30,
)
_start_balances = st.one_of(
    st.just(CustomerState()),
    st.builds(
        lambda b, life: CustomerState(balances={"points": b, "legacy": Decimal("1.5")}, lifetime={"points": life}),
        st.decimals(min_value=-1000, max_value=1000, places=2),
        st.decimals(min_value=0, max_value=10**6, places=0),
    ),
)


def _replay(program: Program, state: CustomerState, events: list[EngineEvent], **kw: Any) -> tuple[list[Outcome], CustomerState]:
    outcomes = []
    for ev in events:
        outcome = evaluate(program, state, ev, PRAGUE, **kw)
        before = state.to_json()
        new_state = apply_outcome(state, outcome)
        assert state.to_json() == before  # neither evaluate nor apply_outcome mutates its input
        outcomes.append(outcome)
        state = new_state
    return outcomes, state


def _observable(outcome: Outcome) -> tuple[Any, ...]:
    """Every field, with Decimals as strings (so 10 and 10.0 differ, as they do on the wire)."""

    def norm(v: Any) -> Any:
        if isinstance(v, Decimal):
            return str(v)
        if isinstance(v, Mapping):
            return tuple((k, norm(x)) for k, x in v.items())
        if isinstance(v, tuple):
            return tuple(norm(x) for x in v)
        if hasattr(v, "__dataclass_fields__"):
            return (type(v).__name__, tuple(norm(getattr(v, f.name)) for f in fields(v)))
        return v

    observed: tuple[Any, ...] = norm(outcome)
    return observed


@settings(max_examples=80, deadline=None)
@given(_start_balances, _migration_events)
def test_migration_program_fast_paths_change_nothing(start: CustomerState, events: list[EngineEvent]) -> None:
    fast, fast_state = _replay(MIGRATION_PROGRAM, start, events)
    untraced, untraced_state = _replay(MIGRATION_PROGRAM, start, events, trace=False)
    general, general_state = _replay(MIGRATION_GENERAL, start, events)
    slow, slow_state = _replay(MIGRATION_SLOW, start, events)
    assert [_observable(o) for o in fast] == [_observable(o) for o in general] == [_observable(o) for o in slow]
    assert [_observable(replace(o, trace=())) for o in fast] == [_observable(o) for o in untraced]
    assert all(o.trace == () for o in untraced)
    assert fast_state == untraced_state == general_state == slow_state
    assert fast_state.to_json() == general_state.to_json() == slow_state.to_json()


@settings(max_examples=40, deadline=None)
@given(rich_events)
def test_rich_program_fast_paths_change_nothing(events: list[EngineEvent]) -> None:
    traced, traced_state = _replay(RICH_PROGRAM, CustomerState(), events)
    untraced, untraced_state = _replay(RICH_PROGRAM, CustomerState(), events, trace=False)
    slow, slow_state = _replay(RICH_SLOW, CustomerState(), events)
    assert [replace(o, trace=()) for o in traced] == untraced
    assert [_observable(o) for o in traced] == [_observable(o) for o in slow]
    assert traced_state == untraced_state == slow_state


def test_fast_built_outcomes_and_states_equal_init_built_ones() -> None:
    state = CustomerState(balances={"points": Decimal(5)}, event_counts={"x": 2}, reward_counts={"r": 1})
    ev = EngineEvent("perkville.points_earned", BASE, {"amount": 10, "classification": "EARN"}, "t")
    outcome = evaluate(MIGRATION_PROGRAM, state, ev, UTC)
    rebuilt = Outcome(**{f.name: getattr(outcome, f.name) for f in fields(Outcome)})
    assert outcome == rebuilt and hash(outcome.deltas) == hash(rebuilt.deltas)
    assert [type(d) for d in outcome.deltas] == [engine_module.WalletDelta]
    assert outcome.deltas[0] == engine_module.WalletDelta("points", Decimal(10), "perkville_points_earned")
    assert outcome.trace == (engine_module.RuleTrace("rule", "perkville_points_earned", True, "applied", Decimal(10)),)
    new = apply_outcome(state, outcome)
    assert new == CustomerState(**{f.name: getattr(new, f.name) for f in fields(CustomerState)})
    assert new.balances == {"points": Decimal(15)} and new.lifetime == {"points": Decimal(10)}
    assert new.event_counts == {"x": 2, "perkville.points_earned": 1} and new.reward_counts == {"r": 1}
    assert state.balances == {"points": Decimal(5)} and state.event_counts == {"x": 2}


def test_rules_only_plans_are_recognised() -> None:
    plan = engine_plans._event_plan(MIGRATION_PROGRAM, "perkville.points_earned")
    assert plan.rules_only and not plan.rules[0].guarded
    assert not engine_plans._event_plan(MIGRATION_GENERAL, "perkville.points_earned").rules_only
    assert not engine_plans._event_plan(RICH_PROGRAM, "buy").rules_only


_AT = datetime(2026, 6, 1, 10, tzinfo=UTC)


@pytest.mark.parametrize(
    ("build", "expected"),
    [
        (lambda: EngineEvent("buy", _AT, {"n": 1}, "t1"), ("buy", _AT, {"n": 1}, "t1")),
        (lambda: EngineEvent(event="buy", occurred_at=_AT, transaction_id="t1"), ("buy", _AT, {}, "t1")),
        (lambda: EngineEvent("buy", _AT), ("buy", _AT, {}, None)),
        (lambda: EngineEvent("buy", _AT, None), ("buy", _AT, None, None)),  # type: ignore[arg-type]  # kept as given
        (lambda: replace(EngineEvent("buy", _AT, {"n": 1}), event="sell"), ("sell", _AT, {"n": 1}, None)),
    ],
    ids=["positional", "keywords", "defaults", "explicit-none", "replace"],
)
def test_engine_event_construction(build: Callable[[], EngineEvent], expected: tuple[Any, ...]) -> None:
    ev = build()
    assert (ev.event, ev.occurred_at, ev.context, ev.transaction_id) == expected
    assert ev == EngineEvent(*expected)
    assert [f.name for f in fields(EngineEvent)] == ["event", "occurred_at", "context", "transaction_id"]


def test_engine_event_stays_frozen_and_default_contexts_are_not_shared() -> None:
    first, second = EngineEvent("a", _AT), EngineEvent("a", _AT)
    assert first.context == {} and first.context is not second.context
    with pytest.raises(FrozenInstanceError):
        first.event = "b"  # type: ignore[misc]
