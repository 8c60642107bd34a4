"""Tiers at the bridge's edge: the tier modules as configuration, the Perkamo levels a target holds,
and the comparison that finds a demoted member (dry run and reconcile).

The pure pieces (the map, its program modules, its events) are ``mapping.tiers``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from bridge.errors import ConfigurationError, TargetError


def with_tier_modules(
    modules: Mapping[str, Mapping[str, Any]], tiers: Mapping[str, int]
) -> dict[str, dict[str, Any]]:
    """``modules`` with the tier map's wallet, step rules and leveling (a configuration error if
    the map is unusable or the program already levels on another wallet)."""
    from mapping.errors import MappingConfigError
    from mapping.tiers import add_tier_modules

    try:
        return add_tier_modules(modules, tiers)
    except MappingConfigError as exc:
        raise ConfigurationError(str(exc)) from None


def perkamo_levels(target: Any, customer_ids: Sequence[str]) -> dict[str, int | None]:
    """Each customer's Perkamo level number (``None``: no leveling, or an unknown customer).

    The embedded core is read through its service; a remote Perkamo through ``GET /v1/customer``.
    """
    from perkamo_core.errors import NotFoundError

    out: dict[str, int | None] = {}
    service, space, client = getattr(target, "service", None), getattr(target, "space", None), None
    if service is None:
        client = getattr(target, "client", None)
    for cid in dict.fromkeys(customer_ids):
        try:
            if service is not None:
                body: Any = service.customer(space, cid)
            elif client is not None:
                body = client.customer(cid)
            else:
                raise TargetError("the target cannot report levels")
        except TargetError:
            raise
        except NotFoundError:  # an unknown customer has no level
            out[cid] = None
            continue
        except Exception as exc:  # noqa: BLE001 - a remote 404 is an unknown customer too
            if getattr(exc, "status", None) == 404:
                out[cid] = None
                continue
            raise TargetError(f"customer {cid} could not be read for its level: {type(exc).__name__}") from exc
        if not isinstance(body, Mapping) and hasattr(body, "model_dump"):
            body = body.model_dump()
        level = body.get("level") if isinstance(body, Mapping) else None
        number = level.get("level") if isinstance(level, Mapping) else level
        out[cid] = int(number) if isinstance(number, int) and not isinstance(number, bool) else None
    return out


@dataclass(frozen=True)
class TierRow:
    """One member's tier: the Perkville level, the level it maps to, the Perkamo level it has."""

    customer_id: str
    perkville_user_id: str
    perkville_level: str | None
    mapped_level: int | None
    perkamo_level: int | None

    @property
    def demoted(self) -> bool:
        """Perkamo holds the member below the level its Perkville level maps to."""
        return self.mapped_level is not None and (self.perkamo_level or 1) < self.mapped_level

    def to_json(self) -> dict[str, Any]:
        return {
            "customer_id": self.customer_id,
            "perkville_user_id": self.perkville_user_id,
            "perkville_level": self.perkville_level,
            "mapped_level": self.mapped_level,
            "perkamo_level": self.perkamo_level,
            "demoted": self.demoted,
        }


def tier_rows(
    members: Sequence[tuple[str, str, str | None]],
    tiers: Mapping[str, int],
    levels: Mapping[str, int | None],
) -> list[TierRow]:
    """``(customer id, Perkville user id, Perkville level)`` of each member, with both levels."""
    from mapping.tiers import tier_level

    return [
        TierRow(cid, uid, name, tier_level(name, tiers), levels.get(cid)) for cid, uid, name in members
    ]


def unknown_level_note(unknown: Mapping[str, int]) -> str | None:
    """One line naming each unmapped Perkville level with its member count, and what to do."""
    if not unknown:
        return None
    listed = ", ".join(f"{name!r} ({n} member{'s' if n != 1 else ''})" for name, n in sorted(unknown.items()))
    return (
        f"tiers: Perkville level names not in [tiers]: {listed}; their members keep their Perkamo "
        "level. Add the names to [tiers] and run the backfill again to apply them"
    )
