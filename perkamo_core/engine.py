"""The pure rules engine: (program, customer state, event) -> outcome, plus redemption and read-model pieces.

No database session, clock or I/O lives here. The service loads a `CustomerState` (at least the
parts `plan_state_query` names for the event), calls `evaluate`, persists the explicit changes the
`Outcome` lists, and may fold them into the in-memory state with `apply_outcome` to evaluate the
next event of the same customer (the bulk path). A state key the service did not load reads as
zero / absent.

Counter keys (rule limits) are ``"{rule_id}|d|YYYY-MM-DD"`` (local day), ``"{rule_id}|w|YYYY-Www"``
(ISO week of the local day) and ``"{rule_id}|life"``; ``last_applied`` is keyed by rule id. Counters
are kept only for limits a rule actually has.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, replace
from datetime import UTC, date, datetime, timedelta, tzinfo
from decimal import ROUND_DOWN, Context, Decimal, InvalidOperation
from types import MappingProxyType
from typing import Any, Literal

from perkamo_core.formula import EvaluationError, Expression, NumberRangeError, compile_expression
from perkamo_core.limits import MAX_AMOUNT, wallet_limit
from perkamo_core.program import (
    ROUNDING_MODES,
    AchievementDef,
    AchievementTrigger,
    CompiledAchievement,
    CompiledBoost,
    CompiledRule,
    EventCountTrigger,
    LevelTrigger,
    Perk,
    PointsThresholdTrigger,
    Program,
    StreakDef,
    StreakTrigger,
)

__all__ = [
    "MAX_AMOUNT",
    "AchievementIncrement",
    "CustomerState",
    "EngineEvent",
    "LevelState",
    "Outcome",
    "PerkUnlock",
    "RedemptionPlan",
    "RuleTrace",
    "StateQuery",
    "StreakState",
    "Unlock",
    "WalletDelta",
    "achievements_view",
    "active_boosts",
    "apply_outcome",
    "apply_redemption",
    "compute_level",
    "customer_view",
    "evaluate",
    "flags_view",
    "format_datetime",
    "next_perks_view",
    "perks_view",
    "period_label",
    "plan_read_query",
    "plan_redemption",
    "plan_state_query",
    "prune_state",
    "streaks_view",
    "wallet_state",
]

_CTX = Context(prec=60, traps=[InvalidOperation])
"""Balances and totals: 60 significant digits, so sums of bounded amounts never round silently."""

# MAX_AMOUNT (perkamo_core.limits): achievement steps stay below it; wallet values below
# ``wallet_limit(quantum)``. Beyond either the event is rejected (``Outcome.rejection``).

_ZERO = Decimal(0)
_ONE = Decimal(1)
_PROGRESS_QUANTUM = Decimal("0.0001")


# --- inputs -----------------------------------------------------------------------------------


_FRESH_CONTEXT: Mapping[str, Any] = MappingProxyType({})
"""The default `EngineEvent.context` marker: each event without a context gets a new empty dict."""


@dataclass(frozen=True, slots=True, init=False)
class EngineEvent:
    """One event as the engine sees it; `occurred_at` must be timezone-aware."""

    event: str
    occurred_at: datetime
    context: Mapping[str, Any] = field(default_factory=dict)
    transaction_id: str | None = None

    def __init__(
        self,
        event: str,
        occurred_at: datetime,
        context: Mapping[str, Any] = _FRESH_CONTEXT,
        transaction_id: str | None = None,
    ) -> None:
        # What the generated __init__ does (one is built per ingested event), at about half the
        # cost: each slot is set through its descriptor (see the fast constructors below).
        _e_event(self, event)
        _e_occurred_at(self, occurred_at)
        _e_context(self, {} if context is _FRESH_CONTEXT else context)
        _e_transaction_id(self, transaction_id)


@dataclass(frozen=True, slots=True)
class StreakState:
    """A streak's counters; `last_period` is the first local day of the last counted period."""

    current: int = 0
    longest: int = 0
    last_period: date | None = None


@dataclass(frozen=True, slots=True)
class PerkUnlock:
    """An unlocked perk: when, and the trigger (JSON-ready; numbers int or Decimal) that fired."""

    key: str
    unlocked_at: datetime
    trigger: Mapping[str, Any]


@dataclass(slots=True)
class CustomerState:
    """What the engine knows about one customer (sparse: absent keys read as zero/none).

    - `balances`, `lifetime`: per wallet; lifetime = sum of positive movements.
    - `perks`: unlocked perks by key.  `achievements`: completed achievement key -> completed_at.
    - `event_counts`: event type -> number of events of that type so far.
    - `counters`: rule-limit counter key -> applications; `last_applied`: rule id -> time.
    - `achievement_totals`: all-time progress of achievements without a window.
    - `achievement_days`: achievement key -> {local day -> progress that day} (windowed ones).
    - `streaks`: streak key -> `StreakState`.  `reward_counts`: reward key -> redemptions so far.
    """

    balances: dict[str, Decimal] = field(default_factory=dict)
    lifetime: dict[str, Decimal] = field(default_factory=dict)
    perks: dict[str, PerkUnlock] = field(default_factory=dict)
    achievements: dict[str, datetime] = field(default_factory=dict)
    event_counts: dict[str, int] = field(default_factory=dict)
    counters: dict[str, int] = field(default_factory=dict)
    last_applied: dict[str, datetime] = field(default_factory=dict)
    achievement_totals: dict[str, Decimal] = field(default_factory=dict)
    achievement_days: dict[str, dict[date, Decimal]] = field(default_factory=dict)
    streaks: dict[str, StreakState] = field(default_factory=dict)
    reward_counts: dict[str, int] = field(default_factory=dict)

    def copy(self) -> CustomerState:
        """A copy safe to mutate independently of this one."""
        return CustomerState(
            balances=dict(self.balances),
            lifetime=dict(self.lifetime),
            perks=dict(self.perks),
            achievements=dict(self.achievements),
            event_counts=dict(self.event_counts),
            counters=dict(self.counters),
            last_applied=dict(self.last_applied),
            achievement_totals=dict(self.achievement_totals),
            achievement_days={k: dict(v) for k, v in self.achievement_days.items()},
            streaks=dict(self.streaks),
            reward_counts=dict(self.reward_counts),
        )

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (Decimals as strings, dates/datetimes ISO-8601) without empty sections."""
        out: dict[str, Any] = {}
        if self.balances:
            out["balances"] = {k: str(v) for k, v in self.balances.items()}
        if self.lifetime:
            out["lifetime"] = {k: str(v) for k, v in self.lifetime.items()}
        if self.perks:
            out["perks"] = {
                k: {"unlocked_at": p.unlocked_at.isoformat(), "trigger": _trigger_to_json(p.trigger)}
                for k, p in self.perks.items()
            }
        if self.achievements:
            out["achievements"] = {k: v.isoformat() for k, v in self.achievements.items()}
        if self.event_counts:
            out["event_counts"] = dict(self.event_counts)
        if self.counters:
            out["counters"] = dict(self.counters)
        if self.last_applied:
            out["last_applied"] = {k: v.isoformat() for k, v in self.last_applied.items()}
        if self.achievement_totals:
            out["achievement_totals"] = {k: str(v) for k, v in self.achievement_totals.items()}
        if self.achievement_days:
            out["achievement_days"] = {
                k: {d.isoformat(): str(v) for d, v in days.items()} for k, days in self.achievement_days.items()
            }
        if self.streaks:
            out["streaks"] = {
                k: [s.current, s.longest, s.last_period.isoformat() if s.last_period else None]
                for k, s in self.streaks.items()
            }
        if self.reward_counts:
            out["reward_counts"] = dict(self.reward_counts)
        return out

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CustomerState:
        """Inverse of `to_json`; missing sections are empty."""
        state = cls()
        fromiso = datetime.fromisoformat
        for section, value in data.items():
            if not value:
                continue
            if section == "balances":
                state.balances = {k: Decimal(v) for k, v in value.items()}
            elif section == "lifetime":
                state.lifetime = {k: Decimal(v) for k, v in value.items()}
            elif section == "perks":
                state.perks = {
                    k: PerkUnlock(k, fromiso(p["unlocked_at"]), _trigger_from_json(p.get("trigger") or {}))
                    for k, p in value.items()
                }
            elif section == "achievements":
                state.achievements = {k: fromiso(v) for k, v in value.items()}
            elif section == "event_counts":
                state.event_counts = {k: int(v) for k, v in value.items()}
            elif section == "counters":
                state.counters = {k: int(v) for k, v in value.items()}
            elif section == "last_applied":
                state.last_applied = {k: fromiso(v) for k, v in value.items()}
            elif section == "achievement_totals":
                state.achievement_totals = {k: Decimal(v) for k, v in value.items()}
            elif section == "achievement_days":
                state.achievement_days = {
                    k: {date.fromisoformat(d): Decimal(v) for d, v in days.items()} for k, days in value.items()
                }
            elif section == "streaks":
                state.streaks = {k: _streak_from_json(v) for k, v in value.items()}
            elif section == "reward_counts":
                state.reward_counts = {k: int(v) for k, v in value.items()}
        return state


def _streak_from_json(value: Any) -> StreakState:
    if isinstance(value, Mapping):  # the first format: {"current", "longest", "last_period"}
        current, longest, last = value.get("current", 0), value.get("longest", 0), value.get("last_period")
    else:
        current, longest, last = value
    return StreakState(int(current), int(longest), date.fromisoformat(last) if last else None)


def _trigger_to_json(trigger: Mapping[str, Any]) -> dict[str, Any]:
    return {k: (str(v) if isinstance(v, Decimal) else v) for k, v in trigger.items()}


def _trigger_from_json(trigger: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in trigger.items():
        if k in ("amount",) and isinstance(v, str):
            out[k] = _json_number(Decimal(v))
        else:
            out[k] = v
    return out


@dataclass(frozen=True, slots=True)
class StateQuery:
    """What the service must load for one event (or for several, via `merge`).

    `achievement_days` maps an achievement key to the inclusive range of local days whose buckets
    are needed. Balances, lifetime totals, unlocked perks and completed achievements are always needed.
    """

    counter_keys: frozenset[str] = frozenset()
    last_applied_rules: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()
    achievement_totals: frozenset[str] = frozenset()
    achievement_days: Mapping[str, tuple[date, date]] = field(default_factory=dict)
    streaks: frozenset[str] = frozenset()

    def merge(self, other: StateQuery) -> StateQuery:
        """The union of two queries (day ranges are widened to cover both)."""
        days = dict(self.achievement_days)
        for key, (first, last) in other.achievement_days.items():
            if key in days:
                a, b = days[key]
                days[key] = (min(a, first), max(b, last))
            else:
                days[key] = (first, last)
        return StateQuery(
            counter_keys=self.counter_keys | other.counter_keys,
            last_applied_rules=self.last_applied_rules | other.last_applied_rules,
            event_types=self.event_types | other.event_types,
            achievement_totals=self.achievement_totals | other.achievement_totals,
            achievement_days=days,
            streaks=self.streaks | other.streaks,
        )


# --- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalletDelta:
    """One movement: `amount` on `wallet` from the rule `rule_id` (None for redemptions)."""

    wallet: str
    amount: Decimal
    rule_id: str | None = None


@dataclass(frozen=True, slots=True)
class LevelState:
    """The wire level object; `to_json` gives `{wallet, level, current, nextLevelAt, currentLevelAt, progress}`."""

    wallet: str
    level: int
    current: Decimal
    current_level_at: Decimal
    next_level_at: Decimal | None
    progress: Decimal
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The seed's key order; numbers stay Decimal (a Decimal-aware JSON encoder prints numbers)."""
        return {
            "wallet": self.wallet,
            "level": self.level,
            "current": self.current,
            "nextLevelAt": self.next_level_at,
            "currentLevelAt": self.current_level_at,
            "progress": self.progress,
        }


@dataclass(frozen=True, slots=True)
class Unlock:
    """An item of the wire `unlocked` list."""

    type: Literal["perk", "achievement", "level"]
    key: str
    name: str

    def to_json(self) -> dict[str, str]:
        return {"type": self.type, "key": self.key, "name": self.name}


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """Why a rule, boost, achievement or streak did or did not apply to this event."""

    kind: Literal["rule", "boost", "achievement", "streak", "perk"]
    key: str
    applied: bool
    reason: str
    amount: Decimal | None = None

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": self.kind, "key": self.key, "applied": self.applied, "reason": self.reason}
        if self.amount is not None:
            out["amount"] = self.amount
        return out


@dataclass(frozen=True, slots=True)
class AchievementIncrement:
    """Progress to add: to the all-time total (`day` None) or to one local day's bucket."""

    key: str
    day: date | None
    amount: Decimal


@dataclass(frozen=True, slots=True)
class Outcome:
    """Everything one event changes, as explicit values; `to_result()` is the wire result."""

    event: str
    occurred_at: datetime
    deltas: tuple[WalletDelta, ...]
    balances: Mapping[str, Decimal]  # wallet_state after the event (every known wallet)
    lifetime: Mapping[str, Decimal]  # lifetime totals after the event (every wallet with one)
    level: LevelState | None
    previous_level: int | None
    leveled_up: bool
    unlocked: tuple[Unlock, ...]
    new_perks: tuple[PerkUnlock, ...]
    new_achievements: Mapping[str, datetime]
    counter_increments: Mapping[str, int]
    last_applied: Mapping[str, datetime]
    event_count_increments: Mapping[str, int]
    achievement_increments: tuple[AchievementIncrement, ...]
    streak_updates: Mapping[str, StreakState]
    trace: tuple[RuleTrace, ...]
    rejection: str | None = None
    """Why the event cannot be applied at all (a wallet could not hold its result exactly, or a
    context number is out of range); then nothing else is set and nothing may be recorded."""

    @property
    def changed_wallets(self) -> frozenset[str]:
        """Wallets whose balance this event moved."""
        return frozenset(d.wallet for d in self.deltas)

    def to_result(self) -> dict[str, Any]:
        """`{applied, duplicate, delta, leveled_up, unlocked, wallet_state, level}`; numbers are Decimal."""
        return {
            "applied": True,
            "duplicate": False,
            "delta": [{"wallet": d.wallet, "amount": d.amount} for d in self.deltas],
            "leveled_up": self.leveled_up,
            "unlocked": [u.to_json() for u in self.unlocked],
            "wallet_state": dict(self.balances),
            "level": self.level.to_json() if self.level is not None else None,
        }

    def trace_json(self) -> list[dict[str, Any]]:
        """The trace as JSON-ready dicts (for the stored outcome / debugging)."""
        return [t.to_json() for t in self.trace]


@dataclass(frozen=True, slots=True)
class RedemptionPlan:
    """The result of planning a redemption; `status != "ok"` means nothing may change."""

    status: Literal["ok", "unknown_reward", "insufficient_balance", "limit_reached"]
    reward_key: str
    message: str
    wallet: str | None = None
    cost: Decimal = _ZERO
    balance_before: Decimal = _ZERO
    balance_after: Decimal = _ZERO
    effect: Mapping[str, Any] = field(default_factory=dict)
    level: LevelState | None = None
    reward_name: str | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    @property
    def delta(self) -> WalletDelta | None:
        """The movement to record (negative cost), or None when the plan is not ok."""
        return WalletDelta(self.wallet, -self.cost) if self.ok and self.wallet is not None else None


# --- fast constructors for the per-event objects ----------------------------------------------
#
# A frozen dataclass's generated `__init__` sets every field through `object.__setattr__` (about
# 0.1 µs a field; `Outcome` has 17). The makers below build the same objects — same class, same
# field values, equal to what `__init__` builds — by calling each slot's descriptor directly, at
# about half the cost. The field lists are checked when the module loads: adding a field to one
# of these classes without updating its maker fails at import instead of leaving a field unset.


def _slot_setters(cls: type, names: tuple[str, ...]) -> tuple[Callable[[Any, Any], None], ...]:
    actual = tuple(f.name for f in fields(cls))
    if actual != names or hasattr(cls, "__post_init__"):
        raise AssertionError(f"{cls.__name__} has fields {actual}; update its fast constructor")
    return tuple(getattr(cls, name).__set__ for name in names)


_new = object.__new__

_e_event, _e_occurred_at, _e_context, _e_transaction_id = _slot_setters(
    EngineEvent, ("event", "occurred_at", "context", "transaction_id")
)

(
    _o_event,
    _o_occurred_at,
    _o_deltas,
    _o_balances,
    _o_lifetime,
    _o_level,
    _o_previous_level,
    _o_leveled_up,
    _o_unlocked,
    _o_new_perks,
    _o_new_achievements,
    _o_counter_increments,
    _o_last_applied,
    _o_event_count_increments,
    _o_achievement_increments,
    _o_streak_updates,
    _o_trace,
    _o_rejection,
) = _slot_setters(
    Outcome,
    (
        "event",
        "occurred_at",
        "deltas",
        "balances",
        "lifetime",
        "level",
        "previous_level",
        "leveled_up",
        "unlocked",
        "new_perks",
        "new_achievements",
        "counter_increments",
        "last_applied",
        "event_count_increments",
        "achievement_increments",
        "streak_updates",
        "trace",
        "rejection",
    ),
)


def _new_outcome(
    event: str,
    occurred_at: datetime,
    deltas: tuple[WalletDelta, ...],
    balances: Mapping[str, Decimal],
    lifetime: Mapping[str, Decimal],
    level: LevelState | None,
    previous_level: int | None,
    leveled_up: bool,
    unlocked: tuple[Unlock, ...],
    new_perks: tuple[PerkUnlock, ...],
    new_achievements: Mapping[str, datetime],
    counter_increments: Mapping[str, int],
    last_applied: Mapping[str, datetime],
    event_count_increments: Mapping[str, int],
    achievement_increments: tuple[AchievementIncrement, ...],
    streak_updates: Mapping[str, StreakState],
    trace: tuple[RuleTrace, ...],
    rejection: str | None = None,
) -> Outcome:
    """`Outcome(...)` with the arguments in field order, built faster."""
    o: Outcome = _new(Outcome)
    _o_event(o, event)
    _o_occurred_at(o, occurred_at)
    _o_deltas(o, deltas)
    _o_balances(o, balances)
    _o_lifetime(o, lifetime)
    _o_level(o, level)
    _o_previous_level(o, previous_level)
    _o_leveled_up(o, leveled_up)
    _o_unlocked(o, unlocked)
    _o_new_perks(o, new_perks)
    _o_new_achievements(o, new_achievements)
    _o_counter_increments(o, counter_increments)
    _o_last_applied(o, last_applied)
    _o_event_count_increments(o, event_count_increments)
    _o_achievement_increments(o, achievement_increments)
    _o_streak_updates(o, streak_updates)
    _o_trace(o, trace)
    _o_rejection(o, rejection)
    return o


_d_wallet, _d_amount, _d_rule_id = _slot_setters(WalletDelta, ("wallet", "amount", "rule_id"))


def _new_delta(wallet: str, amount: Decimal, rule_id: str | None) -> WalletDelta:
    """`WalletDelta(wallet, amount, rule_id)`, built faster."""
    d: WalletDelta = _new(WalletDelta)
    _d_wallet(d, wallet)
    _d_amount(d, amount)
    _d_rule_id(d, rule_id)
    return d


_t_kind, _t_key, _t_applied, _t_reason, _t_amount = _slot_setters(
    RuleTrace, ("kind", "key", "applied", "reason", "amount")
)


def _new_trace(
    kind: Literal["rule", "boost", "achievement", "streak", "perk"],
    key: str,
    applied: bool,
    reason: str,
    amount: Decimal | None = None,
) -> RuleTrace:
    """`RuleTrace(kind, key, applied, reason, amount)`, built faster."""
    t: RuleTrace = _new(RuleTrace)
    _t_kind(t, kind)
    _t_key(t, key)
    _t_applied(t, applied)
    _t_reason(t, reason)
    _t_amount(t, amount)
    return t


# --- per-event-type plans, derived once per program -------------------------------------------


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


def _json_number(value: Decimal) -> int | Decimal:
    """An int when integral (prints as `30`), else the Decimal."""
    if value == value.to_integral_value():
        return int(value)
    return value


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


# --- periods ----------------------------------------------------------------------------------


def _local_day(moment: datetime, tz: tzinfo) -> date:
    return moment.astimezone(tz).date()


def _week_label(day: date) -> str:
    year, week, _ = day.isocalendar()
    return f"{year}-W{week:02d}"


def _period_start(day: date, period: str) -> date:
    return day - timedelta(days=day.weekday()) if period == "week" else day


def period_label(start: date, period: str) -> str:
    """`2026-06-01` for a day, `2026-W22` for the week starting on that Monday."""
    return _week_label(start) if period == "week" else start.isoformat()


def _day_key(rule_id: str, day: date) -> str:
    return f"{rule_id}|d|{day.isoformat()}"


def _week_key(rule_id: str, day: date) -> str:
    return f"{rule_id}|w|{_week_label(day)}"


def _life_key(rule_id: str) -> str:
    return f"{rule_id}|life"


def _limit_keys(rp: _RulePlan, day: date | None) -> list[tuple[str, int, str]]:
    """(limit name, limit, counter key) for each counted limit of a rule; `day` is set when needed."""
    out: list[tuple[str, int, str]] = []
    if rp.per_day is not None and day is not None:
        out.append(("per_day", rp.per_day, _day_key(rp.rule_id, day)))
    if rp.per_week is not None and day is not None:
        out.append(("per_week", rp.per_week, _week_key(rp.rule_id, day)))
    if rp.lifetime is not None:
        out.append(("lifetime", rp.lifetime, _life_key(rp.rule_id)))
    return out


def _window_days(day: date, window: int) -> Iterable[date]:
    for i in range(window):
        yield day - timedelta(days=i)


# --- the engine ---------------------------------------------------------------------------------


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


def _quantize(amount: Decimal, quantum: Decimal, rounding: str) -> Decimal:
    return amount.quantize(quantum, rounding=rounding, context=_CTX)


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


def _level_name(pplan: _ProgramPlan, n: int) -> str:
    if pplan.level_names is not None and 0 < n <= len(pplan.level_names):
        return pplan.level_names[n - 1]
    return f"Level {n}"


def _wallet_state(pplan: _ProgramPlan, balances: Mapping[str, Decimal]) -> dict[str, Decimal]:
    out: dict[str, Decimal] = {}
    get = balances.get
    for key, quantum, rounding in pplan.wallet_quanta:
        out[key] = get(key, _ZERO).quantize(quantum, rounding, _CTX)
    for key, value in balances.items():
        if key not in out:
            out[key] = value
    return out


def wallet_state(program: Program, balances: Mapping[str, Decimal]) -> dict[str, Decimal]:
    """Every known wallet's balance at its precision (program wallets first, then any other held)."""
    return _wallet_state(_program_plan(program), balances)


def _level_number(
    program: Program, pplan: _ProgramPlan, balances: Mapping[str, Decimal], lifetime: Mapping[str, Decimal]
) -> int:
    lv = program.leveling
    assert lv is not None
    raw = (lifetime if lv.basis == "lifetime" else balances).get(lv.wallet, _ZERO)
    return max(1, bisect_right(pplan.thresholds, raw))


def compute_level(
    program: Program, balances: Mapping[str, Decimal], lifetime: Mapping[str, Decimal]
) -> LevelState | None:
    """The level object for these totals, or None without a leveling module."""
    lv = program.leveling
    if lv is None:
        return None
    pplan = _program_plan(program)
    raw = (lifetime if lv.basis == "lifetime" else balances).get(lv.wallet, _ZERO)
    cache = pplan.level_cache
    hit = cache.get(raw)
    if hit is not None:
        return hit
    if len(cache) >= _LEVEL_CACHE_SIZE:
        cache.clear()
    cache[raw] = level = _make_level(lv.wallet, pplan, raw)
    return level


_LEVEL_CACHE_SIZE = 4096


def _make_level(wallet: str, pplan: _ProgramPlan, raw: Decimal) -> LevelState:
    thresholds = pplan.thresholds
    q = pplan.quanta.get(wallet)
    current = _quantize(raw, *q) if q is not None else raw
    n = max(1, bisect_right(thresholds, current))
    at = thresholds[n - 1]
    if n < len(thresholds):
        nxt: Decimal | None = thresholds[n]
        assert nxt is not None
        ratio = _CTX.divide(_CTX.subtract(current, at), _CTX.subtract(nxt, at))
        ratio = min(max(ratio, _ZERO), _ONE)
        progress = ratio.quantize(_PROGRESS_QUANTUM, rounding=ROUND_DOWN, context=_CTX).normalize(_CTX)
    else:
        nxt = None
        progress = _ONE
    return LevelState(wallet, n, current, at, nxt, progress, _level_name(pplan, n))


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


# --- redemption -----------------------------------------------------------------------------------


def plan_redemption(program: Program, state: CustomerState, reward_key: str) -> RedemptionPlan:
    """Check a reward's cost against the balance (and its per-customer limit); changes nothing."""
    reward = program.reward_defs.get(reward_key)
    if reward is None:
        return RedemptionPlan("unknown_reward", reward_key, f"reward {reward_key!r} is not configured")
    wallet = program.wallet(reward.wallet)
    cost = _quantize(reward.cost, wallet.quantum, ROUNDING_MODES[wallet.rounding])
    balance = state.balances.get(reward.wallet, _ZERO)
    refused = RedemptionPlan(
        "insufficient_balance",
        reward_key,
        f"reward {reward_key!r} costs {cost} {reward.wallet}; the balance is {balance}",
        wallet=reward.wallet,
        cost=cost,
        balance_before=balance,
        balance_after=balance,
        effect=dict(reward.effect),
        reward_name=reward.name,
    )
    limit = reward.limits.per_customer
    if limit is not None and state.reward_counts.get(reward_key, 0) >= limit:
        message = f"reward {reward_key!r} may be redeemed {limit} time(s) per customer"
        return replace(refused, status="limit_reached", message=message)
    if cost > balance and not wallet.allow_negative:
        return refused
    after = _CTX.subtract(balance, cost)
    level = compute_level(program, {**state.balances, reward.wallet: after}, state.lifetime)
    return replace(refused, status="ok", message="redeemed", balance_after=after, level=level)


def apply_redemption(state: CustomerState, plan: RedemptionPlan) -> CustomerState:
    """A new state after a successful redemption plan (the input state is not modified)."""
    if not plan.ok or plan.wallet is None:
        raise ValueError(f"cannot apply a redemption plan with status {plan.status!r}")
    new = _shallow_copy(state)
    new.balances = {**state.balances, plan.wallet: plan.balance_after}
    new.reward_counts = {**state.reward_counts, plan.reward_key: state.reward_counts.get(plan.reward_key, 0) + 1}
    return new


# --- read model -------------------------------------------------------------------------------------


def plan_read_query(program: Program, now: datetime, tz: tzinfo) -> StateQuery:
    """What the customer read model needs (windowed achievement days ending at `now`, totals, streaks)."""
    today = _local_day(now, tz)
    totals: set[str] = set()
    days: dict[str, tuple[date, date]] = {}
    for ach in program.achievements.achievements:
        if ach.window_days:
            days[ach.key] = (today - timedelta(days=ach.window_days - 1), today)
        else:
            totals.add(ach.key)
    return StateQuery(
        achievement_totals=frozenset(totals),
        achievement_days=days,
        streaks=frozenset(program.streak_defs),
    )


def format_datetime(value: datetime) -> str:
    """UTC ISO-8601 with milliseconds and `Z`, as the seed prints (`2026-06-01T10:00:00.000Z`)."""
    utc = value.astimezone(UTC)
    return utc.strftime("%Y-%m-%dT%H:%M:%S.") + f"{utc.microsecond // 1000:03d}Z"


def perks_view(program: Program, state: CustomerState) -> list[dict[str, Any]]:
    """`perks`: `[{key, unlocked_at, metadata: {trigger}}]` in unlock order (perks stay unlocked)."""
    ordered = sorted(state.perks.values(), key=lambda p: (p.unlocked_at, p.key))
    return [
        {"key": p.key, "unlocked_at": format_datetime(p.unlocked_at), "metadata": {"trigger": dict(p.trigger)}}
        for p in ordered
    ]


def next_perks_view(program: Program, state: CustomerState) -> list[dict[str, Any]]:
    """`next_perks`: locked perks `[{key, name, description}]` in configured order."""
    return [
        {"key": p.key, "name": p.name, "description": p.description}
        for p in program.perks.perks
        if p.key not in state.perks
    ]


def flags_view(program: Program, state: CustomerState) -> dict[str, dict[str, bool]]:
    """`flags`: `{levels: {level_N: true}, has_level_at_least: {level_1..N: true}, perks: {key: true}}`."""
    level = compute_level(program, state.balances, state.lifetime)
    levels: dict[str, bool] = {}
    at_least: dict[str, bool] = {}
    if level is not None:
        levels[f"level_{level.level}"] = True
        for n in range(1, level.level + 1):
            at_least[f"level_{n}"] = True
    perks = {p["key"]: True for p in perks_view(program, state)}
    return {"levels": levels, "has_level_at_least": at_least, "perks": perks}


def _achievement_progress(ach: AchievementDef, state: CustomerState, today: date) -> Decimal:
    if ach.window_days:
        buckets = state.achievement_days.get(ach.key) or {}
        total = _ZERO
        for d in _window_days(today, ach.window_days):
            v = buckets.get(d)
            if v is not None:
                total = _CTX.add(total, v)
        return total
    return state.achievement_totals.get(ach.key, _ZERO)


def achievements_view(program: Program, state: CustomerState, now: datetime, tz: tzinfo) -> dict[str, Any]:
    """`achievements`: `{completed: [key], in_progress: [{key, progress, target}], unlocked: [{key, name, unlocked_at}]}`.

    `completed` and `unlocked` list the same achievements in completion order (keys, and the
    detailed form); `in_progress` lists configured, not completed achievements with progress > 0.
    """
    today = _local_day(now, tz)
    done = sorted(state.achievements.items(), key=lambda kv: (kv[1], kv[0]))
    in_progress: list[dict[str, Any]] = []
    for ach in program.achievements.achievements:
        if ach.key in state.achievements:
            continue
        progress = _achievement_progress(ach, state, today)
        if progress > 0:
            in_progress.append({"key": ach.key, "progress": progress, "target": _json_number(ach.target)})
    return {
        "completed": [k for k, _ in done],
        "in_progress": in_progress,
        "unlocked": [
            {
                "key": k,
                "name": program.achievement_defs[k].name if k in program.achievement_defs else k,
                "unlocked_at": format_datetime(when),
            }
            for k, when in done
        ],
    }


def streaks_view(program: Program, state: CustomerState, now: datetime, tz: tzinfo) -> list[dict[str, Any]]:
    """`streaks`: `[{key, current, longest, last_period}]`; current reads 0 once the streak is broken at `now`."""
    today = _local_day(now, tz)
    out: list[dict[str, Any]] = []
    for sd in program.achievements.streaks:
        st = state.streaks.get(sd.key) or StreakState()
        current = st.current
        if st.last_period is not None:
            step = 7 if sd.period == "week" else 1
            gap = (_period_start(today, sd.period) - st.last_period).days // step
            if gap > 1 + sd.grace_periods:
                current = 0
        out.append(
            {
                "key": sd.key,
                "current": current,
                "longest": st.longest,
                "last_period": period_label(st.last_period, sd.period) if st.last_period else None,
            }
        )
    return out


def active_boosts(program: Program, now: datetime) -> list[dict[str, Any]]:
    """`active_boosts` at `now`: `[{key, name, multiplier, events, wallets, starts_at, ends_at}]`."""
    out: list[dict[str, Any]] = []
    for b in program.boosts.boosts:
        if (b.starts_at is not None and now < b.starts_at) or (b.ends_at is not None and now >= b.ends_at):
            continue
        out.append(
            {
                "key": b.key,
                "name": b.name,
                "multiplier": _json_number(b.multiplier),
                "events": list(b.events) if b.events is not None else None,
                "wallets": list(b.wallets) if b.wallets is not None else None,
                "starts_at": format_datetime(b.starts_at) if b.starts_at else None,
                "ends_at": format_datetime(b.ends_at) if b.ends_at else None,
            }
        )
    return out


def customer_view(program: Program, state: CustomerState, now: datetime, tz: tzinfo) -> dict[str, Any]:
    """The pure part of the customer read model, keys in the seed's order: wallets, level, perks,
    next_perks, achievements, flags, streaks, active_boosts (the service adds tenant, user_id,
    traits and events, and places `events` before `streaks`)."""
    level = compute_level(program, state.balances, state.lifetime)
    return {
        "wallets": wallet_state(program, state.balances),
        "level": level.to_json() if level is not None else None,
        "perks": perks_view(program, state),
        "next_perks": next_perks_view(program, state),
        "achievements": achievements_view(program, state, now, tz),
        "flags": flags_view(program, state),
        "streaks": streaks_view(program, state, now, tz),
        "active_boosts": active_boosts(program, now),
    }
