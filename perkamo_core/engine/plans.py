"""Per-event-type plans, derived once per program and cached on it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from perkamo_core.engine.outcome import LevelState
from perkamo_core.engine.state import _json_number
from perkamo_core.formula import Expression, compile_expression
from perkamo_core.limits import wallet_limit
from perkamo_core.program import (
    ROUNDING_MODES,
    CompiledAchievement,
    CompiledBoost,
    CompiledRule,
    Perk,
    Program,
    StreakDef,
)


@dataclass(frozen=True, slots=True)
class _RulePlan:
    rule: CompiledRule
    rule_id: str
    wallet: str
    quantum: Decimal
    limit: Decimal  # |movement|, balance and lifetime total stay below (limits.wallet_limit)
    rounding: str
    allow_negative: bool
    amount: Decimal | None
    formula: Expression | None
    when: Expression | None
    active_from: datetime | None
    active_until: datetime | None
    per_day: int | None
    per_week: int | None
    lifetime: int | None
    cooldown: timedelta | None
    boosts: tuple[CompiledBoost, ...]
    counted: bool  # has a per_day, per_week or lifetime limit
    guarded: bool  # has an active window, a counted limit or a cooldown (else always eligible)


@dataclass(frozen=True, slots=True)
class _AchievementPlan:
    compiled: CompiledAchievement
    key: str
    field_expr: Expression | None


@dataclass(frozen=True, slots=True)
class _EventPlan:
    rules: tuple[_RulePlan, ...]
    achievements: tuple[_AchievementPlan, ...]
    streaks: tuple[StreakDef, ...]
    needs_local_day: bool
    rules_only: bool  # no achievements or streaks for this event, no leveling or perks in the program


@dataclass(frozen=True, slots=True)
class _ProgramPlan:
    wallet_keys: tuple[str, ...]
    quanta: Mapping[str, tuple[Decimal, str]]
    wallet_quanta: tuple[tuple[str, Decimal, str], ...]  # (key, quantum, rounding) per program wallet
    thresholds: tuple[Decimal, ...]
    level_names: tuple[str, ...] | None
    perks: tuple[Perk, ...]
    trigger_json: Mapping[str, dict[str, Any]]
    level_cache: dict[Decimal, LevelState]  # level objects by raw value; cleared when it grows large
    events: dict[str, _EventPlan]  # plans of the event types the program mentions, built on first use


def _program_plan(program: Program) -> _ProgramPlan:
    cached = program.engine_cache.get("__program__")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    quanta = {k: (w.quantum, ROUNDING_MODES[w.rounding]) for k, w in program.wallet_defs.items()}
    lv = program.leveling
    plan = _ProgramPlan(
        wallet_keys=tuple(program.wallet_defs),
        quanta=quanta,
        wallet_quanta=tuple((k, q, r) for k, (q, r) in quanta.items()),
        thresholds=tuple(lv.thresholds) if lv else (),
        level_names=tuple(lv.names) if lv and lv.names else None,
        perks=tuple(program.perks.perks),
        trigger_json={p.key: _trigger_json(p) for p in program.perks.perks},
        level_cache={},
        events={},
    )
    program.engine_cache["__program__"] = plan
    return plan


def _trigger_json(perk: Perk) -> dict[str, Any]:
    raw = perk.trigger.model_dump(mode="python")
    return {k: (_json_number(v) if isinstance(v, Decimal) else v) for k, v in raw.items()}



_NOTHING_TO_DO = _EventPlan((), (), (), False, False)


def _event_plan(program: Program, event_type: str) -> _EventPlan:
    events = _program_plan(program).events
    cached = events.get(event_type)
    if cached is not None:
        return cached
    if (
        event_type not in program.rules_by_event
        and event_type not in program.achievements_by_event
        and event_type not in program.streaks_by_event
    ):
        return _NOTHING_TO_DO  # not cached: event names come from callers, the cache must stay bounded
    rules: list[_RulePlan] = []
    for cr in program.rules_by_event.get(event_type, ()):
        r = cr.rule
        wallet = program.wallet(r.wallet)
        boosts = tuple(
            b
            for b in program.compiled_boosts
            if (b.boost.events is None or event_type in b.boost.events)
            and (b.boost.wallets is None or r.wallet in b.boost.wallets)
        )
        lim = r.limits
        counted = lim.per_day is not None or lim.per_week is not None or lim.lifetime is not None
        cooldown = timedelta(seconds=lim.cooldown_seconds) if lim.cooldown_seconds else None
        rules.append(
            _RulePlan(
                rule=cr,
                rule_id=cr.rule_id,
                wallet=r.wallet,
                quantum=wallet.quantum,
                limit=wallet_limit(wallet.quantum),
                rounding=ROUNDING_MODES[wallet.rounding],
                allow_negative=wallet.allow_negative,
                amount=r.amount,
                formula=cr.formula,
                when=cr.when,
                active_from=r.active_from,
                active_until=r.active_until,
                per_day=lim.per_day,
                per_week=lim.per_week,
                lifetime=lim.lifetime,
                cooldown=cooldown,
                boosts=boosts,
                counted=counted,
                guarded=(
                    counted or cooldown is not None or r.active_from is not None or r.active_until is not None
                ),
            )
        )
    achievements = tuple(
        _AchievementPlan(
            compiled=ca,
            key=ca.achievement.key,
            field_expr=compile_expression("{{" + ca.achievement.field + "}}") if ca.achievement.field else None,
        )
        for ca in program.achievements_by_event.get(event_type, ())
    )
    streaks = program.streaks_by_event.get(event_type, ())
    needs_local_day = (
        bool(streaks)
        or any(a.compiled.achievement.window_days for a in achievements)
        or any(r.per_day or r.per_week for r in rules)
    )
    rules_only = not achievements and not streaks and program.leveling is None and not program.perks.perks
    plan = _EventPlan(tuple(rules), achievements, tuple(streaks), needs_local_day, rules_only)
    events[event_type] = plan
    return plan
