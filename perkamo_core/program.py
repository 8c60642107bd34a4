"""Program modules of a Space (wallets, events, leveling, perks, achievements, boosts) as validated models."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from decimal import (
    ROUND_CEILING,
    ROUND_DOWN,
    ROUND_FLOOR,
    ROUND_HALF_DOWN,
    ROUND_HALF_EVEN,
    ROUND_HALF_UP,
    ROUND_UP,
    Decimal,
)
from typing import Annotated, Any, Literal, Union

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field, ValidationError, model_validator

from perkamo_core.errors import ProgramValidationError
from perkamo_core.formula import Expression, FormulaSyntaxError, compile_expression
from perkamo_core.limits import held_exactly, wallet_limit

__all__ = [
    "MODULE_NAMES",
    "ROUNDING_MODES",
    "AchievementDef",
    "AchievementTrigger",
    "AchievementsModule",
    "Boost",
    "BoostsModule",
    "CompiledAchievement",
    "CompiledBoost",
    "CompiledRule",
    "EarningRule",
    "EventCountTrigger",
    "EventsModule",
    "LevelTrigger",
    "LevelingModule",
    "ModuleBody",
    "Perk",
    "PerkTrigger",
    "PerksModule",
    "PointsThresholdTrigger",
    "Program",
    "ProgramError",
    "ProgramValidationError",
    "Reward",
    "RewardLimits",
    "RuleLimits",
    "StreakDef",
    "StreakTrigger",
    "Wallet",
    "WalletsModule",
    "validate_module",
]

MODULE_NAMES: tuple[str, ...] = ("wallets", "events", "leveling", "perks", "achievements", "boosts")

ROUNDING_MODES: dict[str, str] = {
    "half_even": ROUND_HALF_EVEN,
    "half_up": ROUND_HALF_UP,
    "half_down": ROUND_HALF_DOWN,
    "down": ROUND_DOWN,
    "up": ROUND_UP,
    "floor": ROUND_FLOOR,
    "ceiling": ROUND_CEILING,
}

_KEY_PATTERN = r"^[A-Za-z0-9_.:\-]{1,128}$"
Key = Annotated[str, Field(pattern=_KEY_PATTERN)]
EventName = Annotated[str, Field(min_length=1, max_length=128)]
PositiveInt = Annotated[int, Field(ge=1)]
Amount = Annotated[Decimal, Field(allow_inf_nan=False, max_digits=30)]
PositiveAmount = Annotated[Decimal, Field(allow_inf_nan=False, max_digits=30, gt=0)]


def _error(path: str, message: str) -> ProgramValidationError:
    return ProgramValidationError(f"{path}: {message}", path=path)


ProgramError = ProgramValidationError
"""Alias kept for callers written against the first draft; raise/catch `ProgramValidationError`."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- wallets -------------------------------------------------------------------------------


class Wallet(_Model):
    """A named balance; `precision` decimal places are kept, rounded with `rounding`."""

    key: Key
    name: str | None = None
    precision: Annotated[int, Field(ge=0, le=12)] = 0
    allow_negative: bool = False
    rounding: Literal["half_even", "half_up", "half_down", "down", "up", "floor", "ceiling"] = "half_even"

    @property
    def quantum(self) -> Decimal:
        return Decimal(1).scaleb(-self.precision)


class WalletsModule(_Model):
    wallets: list[Wallet] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> WalletsModule:
        _check_unique([w.key for w in self.wallets], "wallets")
        return self


# --- events ---------------------------------------------------------------------------------


class RuleLimits(_Model):
    """How often one rule may apply per customer; `None` = unlimited."""

    per_day: PositiveInt | None = None
    per_week: PositiveInt | None = None
    lifetime: PositiveInt | None = None
    cooldown_seconds: Annotated[int, Field(ge=1)] | None = None


class EarningRule(_Model):
    """Gives `amount` (fixed) or `formula` (computed) to `wallet` for each matching event."""

    event: EventName
    key: Key | None = None
    label: str | None = None
    wallet: Key = "points"
    amount: Amount | None = None
    formula: Annotated[str, Field(min_length=1)] | None = None
    when: Annotated[str, Field(min_length=1)] | None = None
    limits: RuleLimits = Field(default_factory=RuleLimits)
    active_from: AwareDatetime | None = None
    active_until: AwareDatetime | None = None

    @model_validator(mode="after")
    def _amount_xor_formula(self) -> EarningRule:
        if (self.amount is None) == (self.formula is None):
            raise ValueError("exactly one of 'amount' or 'formula' is required")
        if self.active_from and self.active_until and self.active_until <= self.active_from:
            raise ValueError("'active_until' must be after 'active_from'")
        return self


class EventsModule(_Model):
    rules: list[EarningRule] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> EventsModule:
        _check_unique([r.key for r in self.rules if r.key is not None], "rules")
        return self


# --- leveling -------------------------------------------------------------------------------


class LevelingModule(_Model):
    """Levels derived from one wallet; level n (1-based) starts at `thresholds[n-1]`."""

    wallet: Key = "points"
    basis: Literal["lifetime", "balance"] = "lifetime"
    thresholds: Annotated[list[Amount], Field(min_length=1)]
    names: list[str] | None = None

    @model_validator(mode="after")
    def _shape(self) -> LevelingModule:
        if self.thresholds[0] != 0:
            raise ValueError("thresholds[0] must be 0 (level 1 starts at zero)")
        for a, b in zip(self.thresholds, self.thresholds[1:]):
            if b <= a:
                raise ValueError("thresholds must be strictly increasing")
        if self.names is not None and len(self.names) != len(self.thresholds):
            raise ValueError("names must have one entry per threshold")
        return self


# --- perks and rewards ------------------------------------------------------------------------


class PointsThresholdTrigger(_Model):
    type: Literal["points_threshold"]
    wallet: Key = "points"
    amount: Amount


class LevelTrigger(_Model):
    type: Literal["level"]
    level: PositiveInt


class EventCountTrigger(_Model):
    type: Literal["event_count"]
    event: EventName
    count: PositiveInt


class StreakTrigger(_Model):
    type: Literal["streak"]
    streak: Key
    count: PositiveInt


class AchievementTrigger(_Model):
    type: Literal["achievement"]
    achievement: Key


PerkTrigger = Annotated[
    Union[PointsThresholdTrigger, LevelTrigger, EventCountTrigger, StreakTrigger, AchievementTrigger],
    Field(discriminator="type"),
]


class Perk(_Model):
    """Unlocks once, when its trigger first holds, and stays unlocked."""

    key: Key
    name: str
    description: str | None = None
    trigger: PerkTrigger


class RewardLimits(_Model):
    per_customer: PositiveInt | None = None


class Reward(_Model):
    """Redeeming subtracts `cost` from `wallet` and returns the declarative `effect`."""

    key: Key
    name: str
    description: str | None = None
    wallet: Key = "points"
    cost: PositiveAmount
    effect: dict[str, Any] = Field(default_factory=dict)
    limits: RewardLimits = Field(default_factory=RewardLimits)


class PerksModule(_Model):
    perks: list[Perk] = Field(default_factory=list)
    rewards: list[Reward] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> PerksModule:
        _check_unique([p.key for p in self.perks], "perks")
        _check_unique([r.key for r in self.rewards], "rewards")
        return self


# --- achievements and streaks -------------------------------------------------------------------


class AchievementDef(_Model):
    """Completes when the count (or sum of `field`) of matching events reaches `target`."""

    key: Key
    name: str
    description: str | None = None
    event: EventName
    measure: Literal["count", "sum"] = "count"
    field: Annotated[str, Field(pattern=r"^[A-Za-z0-9_\-]+(\.[A-Za-z0-9_\-]+)*$")] | None = None
    target: PositiveAmount
    window_days: Annotated[int, Field(ge=1, le=3660)] | None = None
    when: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _field_for_sum(self) -> AchievementDef:
        if self.measure == "sum" and not self.field:
            raise ValueError("'field' is required when measure is 'sum'")
        if self.measure == "count" and self.field:
            raise ValueError("'field' is only allowed when measure is 'sum'")
        return self


class StreakDef(_Model):
    """Consecutive local days/weeks with a matching event; `grace_periods` missed periods are forgiven."""

    key: Key
    name: str | None = None
    event: EventName
    period: Literal["day", "week"] = "day"
    grace_periods: Annotated[int, Field(ge=0, le=365)] = 0


class AchievementsModule(_Model):
    achievements: list[AchievementDef] = Field(default_factory=list)
    streaks: list[StreakDef] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> AchievementsModule:
        _check_unique([a.key for a in self.achievements], "achievements")
        _check_unique([s.key for s in self.streaks], "streaks")
        return self


# --- boosts -----------------------------------------------------------------------------------


class Boost(_Model):
    """Multiplies positive deltas of matching rules while `occurred_at` is in [starts_at, ends_at)."""

    key: Key
    name: str | None = None
    multiplier: Annotated[Decimal, Field(allow_inf_nan=False, gt=0, le=1000, max_digits=12)]
    events: list[EventName] | None = None
    wallets: list[Key] | None = None
    starts_at: AwareDatetime | None = None
    ends_at: AwareDatetime | None = None
    when: Annotated[str, Field(min_length=1)] | None = None

    @model_validator(mode="after")
    def _window(self) -> Boost:
        if self.starts_at and self.ends_at and self.ends_at <= self.starts_at:
            raise ValueError("'ends_at' must be after 'starts_at'")
        return self


class BoostsModule(_Model):
    boosts: list[Boost] = Field(default_factory=list)

    @model_validator(mode="after")
    def _unique(self) -> BoostsModule:
        _check_unique([b.key for b in self.boosts], "boosts")
        return self


ModuleBody = Union[WalletsModule, EventsModule, LevelingModule, PerksModule, AchievementsModule, BoostsModule]
"""A validated module body (what `validate_module` returns)."""

_MODULE_MODELS: dict[str, type[_Model]] = {
    "wallets": WalletsModule,
    "events": EventsModule,
    "leveling": LevelingModule,
    "perks": PerksModule,
    "achievements": AchievementsModule,
    "boosts": BoostsModule,
}


def _check_unique(keys: list[str], where: str) -> None:
    seen: set[str] = set()
    for key in keys:
        if key in seen:
            raise ValueError(f"duplicate key {key!r} in {where}")
        seen.add(key)


def _loc_to_path(module: str, loc: tuple[int | str, ...]) -> str:
    path = module
    previous: int | str | None = None
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif previous == "trigger" and part in _TRIGGER_TAGS:
            pass  # pydantic puts the union tag in the location; the user never wrote it
        else:
            path += f".{part}"
        previous = part
    return path


_TRIGGER_TAGS = frozenset({"points_threshold", "level", "event_count", "streak", "achievement"})


def validate_module(name: str, body: Mapping[str, Any]) -> ModuleBody:
    """Parse one module body; raise `ProgramValidationError` naming the offending path (formulas included)."""
    model_type = _MODULE_MODELS.get(name)
    if model_type is None:
        raise _error(name, f"unknown module {name!r}; expected one of {', '.join(MODULE_NAMES)}")
    if not isinstance(body, Mapping):
        raise _error(name, "module body must be a JSON object")
    try:
        module: ModuleBody = model_type.model_validate(dict(body))  # type: ignore[assignment]
    except ValidationError as exc:
        first = exc.errors()[0]
        raise _error(_loc_to_path(name, tuple(first["loc"])), first["msg"]) from None
    _compile_module_expressions(name, module)
    return module


def _compile(path: str, text: str | None) -> Expression | None:
    if text is None:
        return None
    try:
        return compile_expression(text)
    except FormulaSyntaxError as exc:
        raise _error(path, str(exc)) from None


def _compile_module_expressions(name: str, module: _Model) -> None:
    if isinstance(module, EventsModule):
        for i, rule in enumerate(module.rules):
            _compile(f"events.rules[{i}].formula", rule.formula)
            _compile(f"events.rules[{i}].when", rule.when)
    elif isinstance(module, AchievementsModule):
        for i, ach in enumerate(module.achievements):
            _compile(f"achievements.achievements[{i}].when", ach.when)
    elif isinstance(module, BoostsModule):
        for i, boost in enumerate(module.boosts):
            _compile(f"boosts.boosts[{i}].when", boost.when)


# --- the compiled aggregate -------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CompiledRule:
    """An earning rule with its stable id (`key`, else `"{event}#{index}"`) and compiled expressions."""

    rule_id: str
    index: int
    rule: EarningRule
    formula: Expression | None
    when: Expression | None


@dataclass(frozen=True, slots=True)
class CompiledAchievement:
    achievement: AchievementDef
    when: Expression | None
    field_path: tuple[str, ...] | None


@dataclass(frozen=True, slots=True)
class CompiledBoost:
    boost: Boost
    when: Expression | None


@dataclass(frozen=True, slots=True)
class Program:
    """The active program of a Space: module bodies plus indexes the engine needs, built once."""

    wallets: WalletsModule = field(default_factory=WalletsModule)
    events: EventsModule = field(default_factory=EventsModule)
    leveling: LevelingModule | None = None
    perks: PerksModule = field(default_factory=PerksModule)
    achievements: AchievementsModule = field(default_factory=AchievementsModule)
    boosts: BoostsModule = field(default_factory=BoostsModule)
    active_modules: frozenset[str] = frozenset()
    # indexes (derived; do not pass)
    wallet_defs: Mapping[str, Wallet] = field(default_factory=dict)
    rules_by_event: Mapping[str, tuple[CompiledRule, ...]] = field(default_factory=dict)
    achievements_by_event: Mapping[str, tuple[CompiledAchievement, ...]] = field(default_factory=dict)
    streaks_by_event: Mapping[str, tuple[StreakDef, ...]] = field(default_factory=dict)
    compiled_boosts: tuple[CompiledBoost, ...] = ()
    perk_defs: Mapping[str, Perk] = field(default_factory=dict)
    reward_defs: Mapping[str, Reward] = field(default_factory=dict)
    achievement_defs: Mapping[str, AchievementDef] = field(default_factory=dict)
    streak_defs: Mapping[str, StreakDef] = field(default_factory=dict)
    counted_events: frozenset[str] = frozenset()
    engine_cache: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)
    """Per-event-type plans the engine derives lazily from the fields above (never part of equality)."""

    @classmethod
    def empty(cls) -> Program:
        return cls.from_modules({})

    @classmethod
    def from_modules(cls, modules: Mapping[str, Mapping[str, Any]]) -> Program:
        """Validate every module body, cross-check references, compile expressions and build indexes.

        A missing module is an empty default (no leveling module = no level). When the `wallets`
        module is absent, every wallet a rule, perk, reward, boost or the leveling names exists
        implicitly with defaults (precision 0, half-even, no negative); when present, names must match.
        """
        parsed: dict[str, Any] = {}
        for name, body in modules.items():
            parsed[name] = validate_module(name, body)
        return cls._build(parsed)

    def with_module(self, name: str, body: Mapping[str, Any] | None) -> Program:
        """This program with module `name` replaced by `body` (or removed when `None`), re-checked."""
        current = self.to_modules()
        if body is None:
            current.pop(name, None)
        else:
            if name not in _MODULE_MODELS:
                raise _error(name, f"unknown module {name!r}; expected one of {', '.join(MODULE_NAMES)}")
            current[name] = dict(body)
        return Program.from_modules(current)

    def to_modules(self) -> dict[str, dict[str, Any]]:
        """The active module bodies as normalized JSON-ready dicts (Decimals stay Decimal)."""
        out: dict[str, dict[str, Any]] = {}
        for name in MODULE_NAMES:
            if name in self.active_modules:
                module = getattr(self, name)
                out[name] = module.model_dump(mode="python", exclude_none=True)
        return out

    @classmethod
    def _build(cls, parsed: Mapping[str, Any]) -> Program:
        wallets: WalletsModule = parsed.get("wallets") or WalletsModule()
        events: EventsModule = parsed.get("events") or EventsModule()
        leveling: LevelingModule | None = parsed.get("leveling")
        perks: PerksModule = parsed.get("perks") or PerksModule()
        achievements: AchievementsModule = parsed.get("achievements") or AchievementsModule()
        boosts: BoostsModule = parsed.get("boosts") or BoostsModule()

        explicit_wallets = "wallets" in parsed
        wallet_defs: dict[str, Wallet] = {w.key: w for w in wallets.wallets}

        def need_wallet(key: str, path: str) -> None:
            if key in wallet_defs:
                return
            if explicit_wallets:
                raise _error(path, f"unknown wallet {key!r}; define it in the wallets module")
            wallet_defs[key] = Wallet(key=key)

        def need_held(value: Decimal, key: str, path: str) -> None:
            quantum = wallet_defs[key].quantum
            if not held_exactly(value, quantum):
                raise _error(path, (
                    f"{value} is beyond what wallet {key!r} holds exactly "
                    f"(at most 15 significant digits: |value| < {wallet_limit(quantum).normalize():f})"
                ))

        rules_by_event: dict[str, list[CompiledRule]] = {}
        for i, rule in enumerate(events.rules):
            need_wallet(rule.wallet, f"events.rules[{i}].wallet")
            if rule.amount is not None:
                need_held(rule.amount, rule.wallet, f"events.rules[{i}].amount")
            compiled = CompiledRule(
                rule_id=rule.key if rule.key is not None else f"{rule.event}#{i}",
                index=i,
                rule=rule,
                formula=_compile(f"events.rules[{i}].formula", rule.formula),
                when=_compile(f"events.rules[{i}].when", rule.when),
            )
            rules_by_event.setdefault(rule.event, []).append(compiled)
        # ids are unique: keys are checked unique, and generated ids contain '#', which keys may not

        if leveling is not None:
            need_wallet(leveling.wallet, "leveling.wallet")

        achievement_defs = {a.key: a for a in achievements.achievements}
        streak_defs = {s.key: s for s in achievements.streaks}
        counted: set[str] = set()
        for i, perk in enumerate(perks.perks):
            trig = perk.trigger
            path = f"perks.perks[{i}].trigger"
            if isinstance(trig, PointsThresholdTrigger):
                need_wallet(trig.wallet, f"{path}.wallet")
            elif isinstance(trig, LevelTrigger):
                if leveling is None:
                    raise _error(f"{path}.level", "a level trigger needs a leveling module")
                if trig.level > len(leveling.thresholds):
                    raise _error(
                        f"{path}.level", f"level {trig.level} does not exist (leveling has {len(leveling.thresholds)})"
                    )
            elif isinstance(trig, EventCountTrigger):
                counted.add(trig.event)
            elif isinstance(trig, StreakTrigger):
                if trig.streak not in streak_defs:
                    raise _error(f"{path}.streak", f"unknown streak {trig.streak!r}")
            elif isinstance(trig, AchievementTrigger):
                if trig.achievement not in achievement_defs:
                    raise _error(f"{path}.achievement", f"unknown achievement {trig.achievement!r}")
        for i, reward in enumerate(perks.rewards):
            need_wallet(reward.wallet, f"perks.rewards[{i}].wallet")
            need_held(reward.cost, reward.wallet, f"perks.rewards[{i}].cost")

        achievements_by_event: dict[str, list[CompiledAchievement]] = {}
        for i, ach in enumerate(achievements.achievements):
            achievements_by_event.setdefault(ach.event, []).append(
                CompiledAchievement(
                    achievement=ach,
                    when=_compile(f"achievements.achievements[{i}].when", ach.when),
                    field_path=tuple(ach.field.split(".")) if ach.field else None,
                )
            )
        streaks_by_event: dict[str, list[StreakDef]] = {}
        for streak in achievements.streaks:
            streaks_by_event.setdefault(streak.event, []).append(streak)

        compiled_boosts: list[CompiledBoost] = []
        for i, boost in enumerate(boosts.boosts):
            for j, wkey in enumerate(boost.wallets or ()):
                need_wallet(wkey, f"boosts.boosts[{i}].wallets[{j}]")
            compiled_boosts.append(CompiledBoost(boost=boost, when=_compile(f"boosts.boosts[{i}].when", boost.when)))

        return cls(
            wallets=wallets,
            events=events,
            leveling=leveling,
            perks=perks,
            achievements=achievements,
            boosts=boosts,
            active_modules=frozenset(parsed),
            wallet_defs=wallet_defs,
            rules_by_event={k: tuple(v) for k, v in rules_by_event.items()},
            achievements_by_event={k: tuple(v) for k, v in achievements_by_event.items()},
            streaks_by_event={k: tuple(v) for k, v in streaks_by_event.items()},
            compiled_boosts=tuple(compiled_boosts),
            perk_defs={p.key: p for p in perks.perks},
            reward_defs={r.key: r for r in perks.rewards},
            achievement_defs=achievement_defs,
            streak_defs=streak_defs,
            counted_events=frozenset(counted),
        )

    def wallet(self, key: str) -> Wallet:
        """The wallet definition (an implicit default one for a name the program does not define)."""
        found = self.wallet_defs.get(key)
        return found if found is not None else Wallet(key=key)

    def rule_ids(self) -> tuple[str, ...]:
        return tuple(r.rule_id for rs in self.rules_by_event.values() for r in rs)
