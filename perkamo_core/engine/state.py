"""The engine's inputs: the event, the customer state (and its JSON form) and the state query."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from types import MappingProxyType
from typing import Any

from perkamo_core.engine.slots import _slot_setters

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
        # cost: each slot is set through its descriptor (see the fast constructors in outcome.py).
        _e_event(self, event)
        _e_occurred_at(self, occurred_at)
        _e_context(self, {} if context is _FRESH_CONTEXT else context)
        _e_transaction_id(self, transaction_id)


_e_event, _e_occurred_at, _e_context, _e_transaction_id = _slot_setters(
    EngineEvent, ("event", "occurred_at", "context", "transaction_id")
)


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


def _json_number(value: Decimal) -> int | Decimal:
    """An int when integral (prints as `30`), else the Decimal."""
    if value == value.to_integral_value():
        return int(value)
    return value





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
