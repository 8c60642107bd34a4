"""The pure rules engine: (program, customer state, event) -> outcome, plus redemption and read-model pieces.

No database session, clock or I/O lives here. The service loads a `CustomerState` (only the parts
`plan_state_query` names for the event), calls `evaluate`, persists the explicit changes the
`Outcome` lists, and may fold them into the in-memory state with `apply_outcome` to evaluate the
next event of the same customer (the bulk path). A state key the service did not load reads as
zero / absent.

Counter keys (rule limits) are ``"{rule_id}|d|YYYY-MM-DD"`` (local day), ``"{rule_id}|w|YYYY-Www"``
(ISO week of the local day) and ``"{rule_id}|life"``; ``last_applied`` is keyed by rule id.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import Any, Literal

from perkamo_core.program import Program

__all__ = [
    "AchievementIncrement",
    "EngineEvent",
    "CustomerState",
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
    "plan_read_query",
    "plan_redemption",
    "plan_state_query",
    "streaks_view",
]


# --- inputs -----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class EngineEvent:
    """One event as the engine sees it; `occurred_at` must be timezone-aware."""

    event: str
    occurred_at: datetime
    context: Mapping[str, Any] = field(default_factory=dict)
    transaction_id: str | None = None


@dataclass(frozen=True, slots=True)
class StreakState:
    """A streak's counters; `last_period` is the first local day of the last counted period."""

    current: int = 0
    longest: int = 0
    last_period: date | None = None


@dataclass(frozen=True, slots=True)
class PerkUnlock:
    """An unlocked perk: when, and the trigger (as JSON) that fired."""

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
        raise NotImplementedError

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict (Decimals as strings, dates/datetimes ISO) for storage as one blob."""
        raise NotImplementedError

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> CustomerState:
        """Inverse of `to_json`."""
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class StateQuery:
    """What the service must load for one event (or the union for several, via `merge`)."""

    counter_keys: frozenset[str] = frozenset()
    last_applied_rules: frozenset[str] = frozenset()
    event_types: frozenset[str] = frozenset()
    achievement_totals: frozenset[str] = frozenset()
    achievement_days: Mapping[str, tuple[date, date]] = field(default_factory=dict)  # key -> (first, last) inclusive
    streaks: frozenset[str] = frozenset()

    def merge(self, other: StateQuery) -> StateQuery:
        raise NotImplementedError


# --- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class WalletDelta:
    """One movement: `amount` on `wallet` from the rule `rule_id` (None for redemptions)."""

    wallet: str
    amount: Decimal
    rule_id: str | None = None


@dataclass(frozen=True, slots=True)
class LevelState:
    """The wire level object; `to_json` gives `{wallet, level, current, currentLevelAt, nextLevelAt, progress}`."""

    wallet: str
    level: int
    current: Decimal
    current_level_at: Decimal
    next_level_at: Decimal | None
    progress: Decimal
    name: str | None = None

    def to_json(self) -> dict[str, Any]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class Unlock:
    """An item of the wire `unlocked` list."""

    type: Literal["perk", "achievement", "level"]
    key: str
    name: str


@dataclass(frozen=True, slots=True)
class RuleTrace:
    """Why a rule, boost or achievement did or did not apply to this event."""

    kind: Literal["rule", "boost", "achievement", "streak", "perk"]
    key: str
    applied: bool
    reason: str
    amount: Decimal | None = None


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
    lifetime: Mapping[str, Decimal]  # lifetime totals after the event (wallets that moved up)
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

    @property
    def changed_wallets(self) -> frozenset[str]:
        raise NotImplementedError

    def to_result(self) -> dict[str, Any]:
        """`{applied: true, duplicate: false, delta, leveled_up, unlocked, wallet_state, level}`; numbers are Decimal."""
        raise NotImplementedError

    def trace_json(self) -> list[dict[str, Any]]:
        raise NotImplementedError


@dataclass(frozen=True, slots=True)
class RedemptionPlan:
    """The result of planning a redemption; `status != "ok"` means nothing may change."""

    status: Literal["ok", "unknown_reward", "insufficient_balance", "limit_reached"]
    reward_key: str
    message: str
    wallet: str | None = None
    cost: Decimal = Decimal(0)
    balance_before: Decimal = Decimal(0)
    balance_after: Decimal = Decimal(0)
    effect: Mapping[str, Any] = field(default_factory=dict)
    level: LevelState | None = None

    @property
    def ok(self) -> bool:
        return self.status == "ok"


# --- functions --------------------------------------------------------------------------------


def plan_state_query(program: Program, event: EngineEvent, tz: tzinfo) -> StateQuery:
    """The counter keys, event counts, achievement ranges and streaks `evaluate` reads for `event`."""
    raise NotImplementedError


def evaluate(program: Program, state: CustomerState, event: EngineEvent, tz: tzinfo) -> Outcome:
    """Apply `program` to one event of a customer in `state`; pure, never raises for bad context data."""
    raise NotImplementedError


def apply_outcome(state: CustomerState, outcome: Outcome) -> CustomerState:
    """A new state with `outcome`'s changes folded in (the input state is not modified)."""
    raise NotImplementedError


def compute_level(
    program: Program, balances: Mapping[str, Decimal], lifetime: Mapping[str, Decimal]
) -> LevelState | None:
    """The level object for these totals, or None without a leveling module."""
    raise NotImplementedError


def plan_redemption(program: Program, state: CustomerState, reward_key: str) -> RedemptionPlan:
    """Check a reward's cost against the balance (and its per-customer limit); changes nothing."""
    raise NotImplementedError


def apply_redemption(state: CustomerState, plan: RedemptionPlan) -> CustomerState:
    """A new state after a successful redemption plan."""
    raise NotImplementedError


def plan_read_query(program: Program, now: datetime, tz: tzinfo) -> StateQuery:
    """What the customer read model needs (windowed achievement days ending at `now`, all streaks)."""
    raise NotImplementedError


def format_datetime(value: datetime) -> str:
    """UTC ISO-8601 with milliseconds and `Z`, as the seed prints (`2026-06-01T10:00:00.000Z`)."""
    raise NotImplementedError


def perks_view(program: Program, state: CustomerState) -> list[dict[str, Any]]:
    """`perks`: `[{key, unlocked_at, metadata: {trigger}}]` in unlock order."""
    raise NotImplementedError


def next_perks_view(program: Program, state: CustomerState) -> list[dict[str, Any]]:
    """`next_perks`: locked perks `[{key, name, description}]` in configured order."""
    raise NotImplementedError


def flags_view(program: Program, state: CustomerState) -> dict[str, dict[str, bool]]:
    """`flags`: `{levels: {level_N: true}, has_level_at_least: {level_1..N: true}, perks: {key: true}}`."""
    raise NotImplementedError


def achievements_view(program: Program, state: CustomerState, now: datetime, tz: tzinfo) -> dict[str, Any]:
    """`achievements`: `{completed: [{key, name, completed_at}], in_progress: [{key, progress, target}], unlocked: [key]}`."""
    raise NotImplementedError


def streaks_view(program: Program, state: CustomerState, now: datetime, tz: tzinfo) -> list[dict[str, Any]]:
    """`streaks`: `[{key, current, longest, last_period}]` (current 0 once the streak is broken at `now`)."""
    raise NotImplementedError


def active_boosts(program: Program, now: datetime) -> list[dict[str, Any]]:
    """`active_boosts` at `now`: `[{key, name, multiplier, events, wallets, starts_at, ends_at}]`."""
    raise NotImplementedError


def customer_view(program: Program, state: CustomerState, now: datetime, tz: tzinfo) -> dict[str, Any]:
    """The pure part of the customer read model: wallets, level, perks, next_perks, achievements, flags,
    streaks, active_boosts (the service adds tenant, user_id, traits and events)."""
    raise NotImplementedError
