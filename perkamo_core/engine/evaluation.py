"""The rules engine proper: `plan_state_query` and `evaluate` (program, state, event) -> outcome."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import date, datetime, timedelta, tzinfo
from decimal import Decimal, InvalidOperation

from perkamo_core.engine.decimals import _CTX, _ONE, _ZERO
from perkamo_core.engine.levels import _level_name, _level_number, _wallet_state, compute_level
from perkamo_core.engine.outcome import (
    AchievementIncrement,
    LevelState,
    Outcome,
    RuleTrace,
    Unlock,
    WalletDelta,
    _new_delta,
    _new_outcome,
    _new_trace,
)
from perkamo_core.engine.periods import _limit_keys, _local_day, _period_start, _window_days
from perkamo_core.engine.plans import (
    _AchievementPlan,
    _event_plan,
    _EventPlan,
    _program_plan,
    _ProgramPlan,
    _RulePlan,
)
from perkamo_core.engine.state import CustomerState, EngineEvent, PerkUnlock, StateQuery, StreakState
from perkamo_core.formula import EvaluationError, NumberRangeError
from perkamo_core.limits import MAX_AMOUNT
from perkamo_core.program import (
    AchievementTrigger,
    EventCountTrigger,
    LevelTrigger,
    Perk,
    PointsThresholdTrigger,
    Program,
    StreakDef,
    StreakTrigger,
)


def plan_state_query(program: Program, event: EngineEvent, tz: tzinfo) -> StateQuery:
    """The counter keys, event counts, achievement day ranges and streaks `evaluate` reads for `event`."""
    plan = _event_plan(program, event.event)
    day = _local_day(event.occurred_at, tz) if plan.needs_local_day else None
    counters: set[str] = set()
    cooldowns: set[str] = set()
    for rp in plan.rules:
        counters.update(key for _, _, key in _limit_keys(rp, day))
        if rp.cooldown:
            cooldowns.add(rp.rule_id)
    totals: set[str] = set()
    days: dict[str, tuple[date, date]] = {}
    for ap in plan.achievements:
        window = ap.compiled.achievement.window_days
        if window and day is not None:
            days[ap.key] = (day - timedelta(days=window - 1), day)
        else:
            totals.add(ap.key)
    return StateQuery(
        counter_keys=frozenset(counters),
        last_applied_rules=frozenset(cooldowns),
        event_types=frozenset({event.event}) if event.event in program.counted_events else frozenset(),
        achievement_totals=frozenset(totals),
        achievement_days=days,
        streaks=frozenset(s.key for s in plan.streaks),
    )


class _Rejected(Exception):
    """Inside `evaluate`: the event cannot be applied (see `Outcome.rejection`); never escapes it."""


def _out_of_range(rule_id: str, what: str, exc: NumberRangeError) -> _Rejected:
    return _Rejected(f"rule {rule_id!r}: {what}: {exc}")


def _rule_amount(rp: _RulePlan, event: EngineEvent, trace: list[RuleTrace] | None) -> Decimal | None:
    """The rule's boosted, rounded amount, or None (with a trace entry) when it does not apply.

    Raises `_Rejected` when a number is beyond range: a context number the formula or condition
    cannot hold, or an amount the rule's wallet cannot hold exactly (`limits`).
    """
    ctx = event.context
    if rp.when is not None:
        try:
            ok = rp.when.evaluate_condition(ctx)
        except NumberRangeError as exc:
            raise _out_of_range(rp.rule_id, "condition", exc) from None
        except EvaluationError as exc:
            if trace is not None:
                trace.append(_new_trace("rule", rp.rule_id, False, f"condition failed: {exc}"))
            return None
        if not ok:
            if trace is not None:
                trace.append(_new_trace("rule", rp.rule_id, False, "condition is false"))
            return None
    if rp.amount is not None:
        amount = rp.amount
    else:
        assert rp.formula is not None
        try:
            amount = rp.formula.evaluate_number(ctx)
        except NumberRangeError as exc:
            raise _out_of_range(rp.rule_id, "formula", exc) from None
        except EvaluationError as exc:
            if trace is not None:
                trace.append(_new_trace("rule", rp.rule_id, False, f"formula failed: {exc}"))
            return None
    if rp.boosts and amount > 0:
        at = event.occurred_at
        for cb in rp.boosts:
            b = cb.boost
            if (b.starts_at is not None and at < b.starts_at) or (b.ends_at is not None and at >= b.ends_at):
                continue
            if cb.when is not None:
                try:
                    if not cb.when.evaluate_condition(ctx):
                        continue
                except NumberRangeError as exc:
                    raise _out_of_range(rp.rule_id, f"boost {b.key!r} condition", exc) from None
                except EvaluationError as exc:
                    if trace is not None:
                        trace.append(_new_trace("boost", b.key, False, f"condition failed: {exc}"))
                    continue
            amount = _CTX.multiply(amount, b.multiplier)
            if trace is not None:
                trace.append(_new_trace("boost", b.key, True, f"x{b.multiplier} on {rp.rule_id}"))
    try:
        amount = amount.quantize(rp.quantum, rp.rounding, _CTX)
    except InvalidOperation:  # more digits than the context holds: far beyond the limit
        amount = rp.limit
    if abs(amount) >= rp.limit:
        raise _beyond_wallet(rp, "the amount", amount)
    return amount


def _beyond_wallet(rp: _RulePlan, what: str, value: Decimal) -> _Rejected:
    shown = f"{value:.6E}" if value.adjusted() >= 21 else str(value)
    return _Rejected(
        f"rule {rp.rule_id!r}: {what} {shown} on wallet {rp.wallet!r} is beyond what it holds "
        f"exactly (at most 15 significant digits: |value| < {rp.limit.normalize():f})"
    )


def _rule_blocked(
    rp: _RulePlan, state: CustomerState, at: datetime, day: date | None, keys: list[str]
) -> str | None:
    """Why a guarded rule does not apply at `at` (active window, limits, cooldown), or None.

    When it applies, `keys` receives the limit counters the application increments.
    """
    if rp.active_from is not None and at < rp.active_from:
        return "not active yet"
    if rp.active_until is not None and at >= rp.active_until:
        return "no longer active"
    if rp.counted:
        counters = state.counters
        for name, limit, key in _limit_keys(rp, day):
            if counters.get(key, 0) >= limit:
                keys.clear()
                return f"{name} limit {limit} reached"
            keys.append(key)
    if rp.cooldown is not None:
        last = state.last_applied.get(rp.rule_id)
        if last is not None and at - last < rp.cooldown:
            keys.clear()
            return "cooldown not elapsed"
    return None


def evaluate(
    program: Program, state: CustomerState, event: EngineEvent, tz: tzinfo, *, trace: bool = True
) -> Outcome:
    """Apply `program` to one event of a customer in `state`; pure, and bad context data never raises.

    A number beyond range (a context number a formula cannot hold, a movement, balance or
    lifetime total a wallet cannot hold exactly: `perkamo_core.limits`) gives an outcome with
    `rejection` set and nothing else: the event must not be recorded.
    With `trace=False` the outcome's `trace` is empty and every other field is the same: for
    callers that never read why rules did or did not apply (it saves building the trace).
    """
    at = event.occurred_at
    if at.tzinfo is None:
        raise ValueError("EngineEvent.occurred_at must be timezone-aware")
    pplan = program.engine_cache.get("__program__")
    if pplan is None:
        pplan = _program_plan(program)
    name = event.event
    plan = pplan.events.get(name)
    if plan is None:
        plan = _event_plan(program, name)
    day = _local_day(at, tz) if plan.needs_local_day else None
    tr: list[RuleTrace] | None = [] if trace else None
    try:
        return _evaluate(program, pplan, plan, state, event, day, tr)
    except _Rejected as exc:
        # Nothing changes: no movement, no counter, no progress; the caller records nothing.
        return _new_outcome(
            name, at, (), _wallet_state(pplan, state.balances), dict(state.lifetime), None, None, False,
            (), (), {}, {}, {}, {}, (), {}, tuple(tr) if tr is not None else (), str(exc),
        )


def _evaluate(
    program: Program,
    pplan: _ProgramPlan,
    plan: _EventPlan,
    state: CustomerState,
    event: EngineEvent,
    day: date | None,
    tr: list[RuleTrace] | None,
) -> Outcome:
    """`evaluate` once the plans are known; raises `_Rejected` when the event cannot apply."""
    at = event.occurred_at
    name = event.event
    deltas: list[WalletDelta] = []
    counter_inc: dict[str, int] = {}
    last_applied: dict[str, datetime] = {}
    balances = state.balances
    lifetime = state.lifetime
    new_bal: dict[str, Decimal] | None = None
    new_life: dict[str, Decimal] | None = None

    for rp in plan.rules:
        rid = rp.rule_id
        keys: list[str] | None = None
        if rp.guarded:
            keys = []
            blocked = _rule_blocked(rp, state, at, day, keys)
            if blocked is not None:
                if tr is not None:
                    tr.append(_new_trace("rule", rid, False, blocked))
                continue
        amount = _rule_amount(rp, event, tr)
        if amount is None:
            continue
        if not amount:
            if tr is not None:
                tr.append(_new_trace("rule", rid, False, "amount is zero", amount))
            continue
        wallet = rp.wallet
        if new_bal is None:
            new_bal = dict(balances)
        current = new_bal.get(wallet, _ZERO)
        if amount < 0 and not rp.allow_negative and current + amount < 0:
            amount = -current if current > 0 else _ZERO
            if not amount:
                if tr is not None:
                    tr.append(_new_trace("rule", rid, False, "balance is zero; nothing to take"))
                continue
            if tr is not None:
                tr.append(_new_trace("rule", rid, True, "applied, clamped to the balance", amount))
        elif tr is not None:
            tr.append(_new_trace("rule", rid, True, "applied", amount))
        after = _CTX.add(current, amount)
        if abs(after) >= rp.limit:
            raise _beyond_wallet(rp, "the balance after", after)
        new_bal[wallet] = after
        if amount > 0:
            if new_life is None:
                new_life = dict(lifetime)
            total = _CTX.add(new_life.get(wallet, _ZERO), amount)
            if total >= rp.limit:
                raise _beyond_wallet(rp, "the lifetime total after", total)
            new_life[wallet] = total
        deltas.append(_new_delta(wallet, amount, rid))
        if keys is not None:
            for k in keys:
                counter_inc[k] = counter_inc.get(k, 0) + 1
            if rp.cooldown is not None:
                last_applied[rid] = at

    bal_after = new_bal if new_bal is not None else balances
    life_after = new_life if new_life is not None else lifetime
    new_achievements: dict[str, datetime] = {}
    streak_updates: dict[str, StreakState] = {}
    if plan.rules_only:  # no achievements, streaks, level or perks: skip their (empty) sections
        level: LevelState | None = None
        prev_level: int | None = None
        leveled_up = False
        unlocked: tuple[Unlock, ...] = ()
        new_perks: tuple[PerkUnlock, ...] = ()
        ach_inc: tuple[AchievementIncrement, ...] = ()
    else:
        level, prev_level, leveled_up, unlocked, new_perks, ach_inc = _progress(
            program, pplan, plan, state, event, day, life_after, bal_after, new_achievements, streak_updates, tr
        )
    return _new_outcome(
        name,
        at,
        tuple(deltas),
        _wallet_state(pplan, bal_after),
        new_life if new_life is not None else dict(lifetime),  # never the state's own dict
        level,
        prev_level,
        leveled_up,
        unlocked,
        new_perks,
        new_achievements,
        counter_inc,
        last_applied,
        {name: 1},
        ach_inc,
        streak_updates,
        tuple(tr) if tr is not None else (),
    )


def _progress(
    program: Program,
    pplan: _ProgramPlan,
    plan: _EventPlan,
    state: CustomerState,
    event: EngineEvent,
    day: date | None,
    life_after: Mapping[str, Decimal],
    bal_after: Mapping[str, Decimal],
    new_achievements: dict[str, datetime],
    streak_updates: dict[str, StreakState],
    tr: list[RuleTrace] | None,
) -> tuple[
    LevelState | None, int | None, bool, tuple[Unlock, ...], tuple[PerkUnlock, ...], tuple[AchievementIncrement, ...]
]:
    """Achievements, streaks, level and perks after the event's movements.

    Fills `new_achievements` and `streak_updates`; returns the level, the previous level number,
    whether it went up, the unlocks, the new perks and the achievement increments.
    """
    at = event.occurred_at
    name = event.event
    # achievements
    ach_inc: list[AchievementIncrement] = []
    unlocked_ach: list[Unlock] = []
    for ap in plan.achievements:
        ach = ap.compiled.achievement
        if ach.key in state.achievements:
            continue
        progress = _achievement_step(ap, event, tr)
        if progress is None:
            continue
        if ach.window_days:
            assert day is not None
            buckets = state.achievement_days.get(ach.key)
            total = progress
            if buckets:
                for d in _window_days(day, ach.window_days):
                    v = buckets.get(d)
                    if v is not None:
                        total = _CTX.add(total, v)
            ach_inc.append(AchievementIncrement(ach.key, day, progress))
        else:
            total = _CTX.add(state.achievement_totals.get(ach.key, _ZERO), progress)
            ach_inc.append(AchievementIncrement(ach.key, None, progress))
        if total >= ach.target:
            new_achievements[ach.key] = at
            unlocked_ach.append(Unlock("achievement", ach.key, ach.name))
            if tr is not None:
                tr.append(_new_trace("achievement", ach.key, True, "completed", total))

    # streaks
    for sd in plan.streaks:
        assert day is not None
        before = state.streaks.get(sd.key)
        after = _advance_streak(before, _period_start(day, sd.period), sd)
        if after is not before:
            streak_updates[sd.key] = after

    # level
    unlocked: list[Unlock] = []
    level = compute_level(program, bal_after, life_after)
    if level is not None:
        prev_level: int | None = _level_number(program, pplan, state.balances, state.lifetime)
        assert prev_level is not None
        leveled_up = level.level > prev_level
        if leveled_up:
            for n in range(prev_level + 1, level.level + 1):
                unlocked.append(Unlock("level", f"level_{n}", _level_name(pplan, n)))
    else:
        prev_level, leveled_up = None, False
    unlocked.extend(unlocked_ach)

    # perks
    new_perks: list[PerkUnlock] = []
    count_after = state.event_counts.get(name, 0) + 1
    for perk in pplan.perks:
        if perk.key in state.perks:
            continue
        if _trigger_holds(perk, state, name, count_after, life_after, level, new_achievements, streak_updates):
            new_perks.append(PerkUnlock(perk.key, at, pplan.trigger_json[perk.key]))
            unlocked.append(Unlock("perk", perk.key, perk.name))
    return level, prev_level, leveled_up, tuple(unlocked), tuple(new_perks), tuple(ach_inc)


def _achievement_step(ap: _AchievementPlan, event: EngineEvent, trace: list[RuleTrace] | None) -> Decimal | None:
    ca = ap.compiled
    if ca.when is not None:
        try:
            if not ca.when.evaluate_condition(event.context):
                return None
        except EvaluationError as exc:
            if trace is not None:
                trace.append(_new_trace("achievement", ap.key, False, f"condition failed: {exc}"))
            return None
    if ap.field_expr is None:
        return _ONE
    try:
        value = ap.field_expr.evaluate_number(event.context)
    except EvaluationError as exc:
        if trace is not None:
            trace.append(_new_trace("achievement", ap.key, False, f"field failed: {exc}"))
        return None
    if abs(value) >= MAX_AMOUNT:
        raise _Rejected(
            f"achievement {ap.key!r}: the field value {value:.6E} is beyond range "
            f"(at most 15 significant digits)"
        )
    return value


def _advance_streak(before: StreakState | None, period: date, sd: StreakDef) -> StreakState:
    if before is None or before.last_period is None:
        return StreakState(1, max(1, before.longest if before else 0), period)
    last = before.last_period
    if period <= last:
        return before  # same period already counted, or a late event for an earlier one
    step = 7 if sd.period == "week" else 1
    gap = (period - last).days // step
    current = before.current + 1 if gap <= 1 + sd.grace_periods else 1
    return StreakState(current, max(before.longest, current), period)


def _trigger_holds(
    perk: Perk,
    state: CustomerState,
    event_type: str,
    count_after: int,
    lifetime: Mapping[str, Decimal],
    level: LevelState | None,
    new_achievements: Mapping[str, datetime],
    streak_updates: Mapping[str, StreakState],
) -> bool:
    t = perk.trigger
    if isinstance(t, PointsThresholdTrigger):
        return lifetime.get(t.wallet, _ZERO) >= t.amount
    if isinstance(t, LevelTrigger):
        return level is not None and level.level >= t.level
    if isinstance(t, EventCountTrigger):
        count = count_after if t.event == event_type else state.event_counts.get(t.event, 0)
        return count >= t.count
    if isinstance(t, StreakTrigger):
        st = streak_updates.get(t.streak) or state.streaks.get(t.streak)
        return st is not None and st.current >= t.count
    if isinstance(t, AchievementTrigger):
        return t.achievement in new_achievements or t.achievement in state.achievements
    return False  # pragma: no cover - the trigger union is closed
