"""Tiers carried over from Perkville without demoting anyone: the tier map, its program modules, its events.

A ``[tiers]`` map names the Perkamo level (1-based) of each Perkville level name. The migration
program then gets a dedicated wallet ``tier_points`` (nothing spends it: no reward or redemption
names it), a ``leveling`` module on it with basis ``lifetime`` (a sum of positive movements,
which never falls), and one *step* rule per level above the first::

    perkville.tier_migrated, when {{tier_level}} >= n: + (threshold n − threshold n−1), lifetime 1

A member's ``perkville.tier_migrated`` event for level L applies every step up to L the member
has not had yet, so it lifts ``tier_points`` to at least L's threshold; a member already there
gets nothing, a lower level applies no step, and ``points`` is never named. Nothing here does
I/O: the bridge decides which members get an event (``next_tier_event``) from what it recorded.
"""

from __future__ import annotations

import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any

from mapping.errors import MappingConfigError
from mapping.ids import to_tier_transaction_id
from mapping.types import PerkamoEvent

__all__ = [
    "EVENT_TIER_MIGRATED",
    "TIER_STEP",
    "TIER_WALLET",
    "TierProposal",
    "add_tier_modules",
    "check_tiers",
    "level_for_points",
    "next_tier_event",
    "propose_tiers",
    "tier_level",
    "tier_modules",
    "tier_thresholds",
    "unknown_levels",
]

EVENT_TIER_MIGRATED = "perkville.tier_migrated"
TIER_WALLET = "tier_points"
TIER_STEP = 1000
"""``tier_points`` between two consecutive levels: level n starts at ``(n − 1) × TIER_STEP``."""
STEP_RULE_PREFIX = "perkville_tier_step_"
MAX_LEVEL = 100


def check_tiers(tiers: Mapping[str, Any]) -> dict[str, int]:
    """The tier map with its names trimmed; ``MappingConfigError`` naming the entry if one is unusable."""
    out: dict[str, int] = {}
    for name, level in tiers.items():
        key = str(name).strip()
        if not key:
            raise MappingConfigError("[tiers]: a Perkville level name is empty")
        if isinstance(level, bool) or not isinstance(level, int) or not 1 <= level <= MAX_LEVEL:
            raise MappingConfigError(
                f"[tiers] {key!r} = {level!r}: a Perkamo level is a whole number from 1 to {MAX_LEVEL}"
            )
        if key in out and out[key] != level:
            raise MappingConfigError(f"[tiers]: {key!r} is mapped twice, to {out[key]} and {level}")
        out[key] = level
    return out


def tier_level(perkville_level: str | None, tiers: Mapping[str, int]) -> int | None:
    """The Perkamo level a Perkville level name maps to (``None``: no level, or not in the map)."""
    if perkville_level is None:
        return None
    return tiers.get(perkville_level.strip())


def tier_thresholds(tiers: Mapping[str, int]) -> list[int]:
    """``tier_points`` thresholds of levels 1 … the highest mapped level."""
    top = max(tiers.values(), default=1)
    return [(n - 1) * TIER_STEP for n in range(1, max(top, 1) + 1)]


def level_for_points(thresholds: list[int], lifetime: Decimal | int) -> int:
    """The level ``lifetime`` tier points reach (the leveling module's rule, for predictions)."""
    level = 1
    for n, threshold in enumerate(thresholds, start=1):
        if lifetime >= threshold:
            level = n
    return level


def tier_modules(tiers: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """The ``wallets``, ``events`` and ``leveling`` bodies the tier map adds to the migration program.

    Level names: the Perkville names mapped to each level (joined with `` / ``), ``Member`` for an
    unnamed level 1, ``Level n`` otherwise.
    """
    tiers = check_tiers(tiers)
    thresholds = tier_thresholds(tiers)
    names_of: dict[int, list[str]] = {}
    for name, level in sorted(tiers.items()):
        names_of.setdefault(level, []).append(name)
    names = [
        " / ".join(names_of[n]) if n in names_of else ("Member" if n == 1 else f"Level {n}")
        for n in range(1, len(thresholds) + 1)
    ]
    rules = [
        {
            "event": EVENT_TIER_MIGRATED,
            "key": f"{STEP_RULE_PREFIX}{n}",
            "label": f"Perkville tier carried over: step to level {n}",
            "wallet": TIER_WALLET,
            "when": f"{{{{tier_level}}}} >= {n}",
            "amount": thresholds[n - 1] - thresholds[n - 2],
            "limits": {"lifetime": 1},
        }
        for n in range(2, len(thresholds) + 1)
    ]
    return {
        "wallets": {
            "wallets": [{"key": TIER_WALLET, "name": "Tier points", "precision": 0, "allow_negative": False}]
        },
        "events": {"rules": rules},
        "leveling": {"wallet": TIER_WALLET, "basis": "lifetime", "thresholds": thresholds, "names": names},
    }


def next_tier_event(
    *,
    business_id: str | int,
    perkville_user_id: str,
    customer_id: str,
    perkville_level: str | None,
    tiers: Mapping[str, int],
    migrated: int | None,
    occurred_at: datetime | None = None,
) -> tuple[PerkamoEvent | None, int | None]:
    """The member's next ``perkville.tier_migrated`` event (or ``None``) and the level then migrated.

    ``migrated`` is the highest level already sent for the member (``None``: none yet). The first
    event has the id ``tier:{user}``; a later, higher level ``tier:{user}:{level}``. A level at or
    below ``migrated`` (a lower Perkville level, or the same) gives no event: nothing is lowered.
    The context holds only what the level fixes, so the same id always carries the same payload.
    """
    level = tier_level(perkville_level, tiers)
    if level is None or level <= 1 or (migrated is not None and level <= migrated):
        return None, migrated
    transaction_id = to_tier_transaction_id(business_id, perkville_user_id, None if migrated is None else level)
    event = PerkamoEvent(
        user_id=customer_id,
        event=EVENT_TIER_MIGRATED,
        transaction_id=transaction_id,
        context={
            "source": "perkville",
            "perkville_user_id": perkville_user_id,
            "perkville_level": str(perkville_level).strip(),
            "tier_level": level,
            "tier_threshold": tier_thresholds(tiers)[level - 1],
        },
        occurred_at=occurred_at,
    )
    return event, level


def unknown_levels(levels: Iterable[str | None], tiers: Mapping[str, int]) -> dict[str, int]:
    """Perkville level names the map does not name, with how many members carry each."""
    counts = Counter(str(name).strip() for name in levels if name is not None and str(name).strip())
    return {name: n for name, n in sorted(counts.items()) if name not in tiers}


@dataclass(frozen=True)
class TierProposal:
    """A proposed ``[tiers]`` map: names in order of their members' median lifetime points."""

    tiers: dict[str, int]
    members: dict[str, int] = field(default_factory=dict)
    median_lifetime: dict[str, Decimal] = field(default_factory=dict)
    without_level: int = 0

    def to_toml(self) -> str:
        """The ``[tiers]`` table, one commented line per name (members, median lifetime points)."""
        lines = ["[tiers]"]
        for name, level in self.tiers.items():
            quoted = '"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'
            lines.append(
                f"{quoted} = {level}    # {self.members[name]} members, median lifetime "
                f"{self.median_lifetime[name]} points"
            )
        return "\n".join(lines) + "\n"


def propose_tiers(connections: Iterable[tuple[str | None, Decimal | None]]) -> TierProposal:
    """Propose levels 2, 3, … for the level names found, lowest median lifetime points first.

    ``connections`` are ``(level name, lifetime_earned_points)`` pairs. Level 1 is left to members
    without a level. Ties keep the names in alphabetical order.
    """
    points: dict[str, list[Decimal]] = {}
    without = 0
    for name, lifetime in connections:
        key = str(name).strip() if name is not None else ""
        if not key:
            without += 1
            continue
        points.setdefault(key, []).append(Decimal(lifetime) if lifetime is not None else Decimal(0))
    medians = {name: Decimal(statistics.median(values)) for name, values in points.items()}
    order = sorted(medians, key=lambda name: (medians[name], name))
    return TierProposal(
        tiers={name: n for n, name in enumerate(order, start=2)},
        members={name: len(points[name]) for name in order},
        median_lifetime={name: medians[name] for name in order},
        without_level=without,
    )


def add_tier_modules(base: Mapping[str, Mapping[str, Any]], tiers: Mapping[str, int]) -> dict[str, dict[str, Any]]:
    """A copy of program ``base`` (e.g. the migration program) with the tier modules added.

    Wallets and rules whose key ``base`` already has are replaced by the tier map's; ``base``
    must not level on another wallet (that leveling would be lost): ``MappingConfigError``.
    """
    modules: dict[str, dict[str, Any]] = {name: dict(body) for name, body in base.items()}
    extra = tier_modules(tiers)
    leveling = modules.get("leveling")
    if leveling and leveling.get("wallet", "points") != TIER_WALLET:
        raise MappingConfigError(
            f"the program already levels on wallet {leveling.get('wallet', 'points')!r}; tier mapping "
            f"needs the leveling module on {TIER_WALLET!r} (remove [tiers] or that leveling module)"
        )
    for module, field_name in (("wallets", "wallets"), ("events", "rules")):
        ours = extra[module][field_name]
        keys = {item["key"] for item in ours}
        kept = [
            dict(item) for item in (modules.get(module) or {}).get(field_name) or []
            if not (isinstance(item, Mapping) and item.get("key") in keys)
            and not (module == "events" and isinstance(item, Mapping)
                     and str(item.get("key") or "").startswith(STEP_RULE_PREFIX))
        ]
        modules[module] = {**(modules.get(module) or {}), field_name: kept + ours}
    modules["leveling"] = extra["leveling"]
    return modules
