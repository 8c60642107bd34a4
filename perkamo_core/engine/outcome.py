"""The engine's outputs (deltas, levels, unlocks, trace, outcome, redemption plan) and their fast constructors."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from typing import Any, Literal

from perkamo_core.engine.decimals import _ZERO
from perkamo_core.engine.slots import _new, _slot_setters
from perkamo_core.engine.state import PerkUnlock, StreakState


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
# The check is `slots._slot_setters`; `EngineEvent` (state.py) and `apply_outcome`
# (transitions.py) use it the same way.


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
