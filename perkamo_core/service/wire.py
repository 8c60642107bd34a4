"""The wire's JSON values: Decimals as JSON numbers, and the shapes of ingest results."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from perkamo_core import engine as core_engine


def wire_number(value: Decimal | int) -> int | Decimal:
    """A JSON number for the wire: an int when integral, else the (exact) Decimal."""
    if isinstance(value, int):
        return value
    if value == value.to_integral_value():
        return int(value)
    return value.normalize()


def to_wire(value: Any) -> Any:
    """``value`` with every Decimal turned into :func:`wire_number` (dicts and lists recursively)."""
    if isinstance(value, Decimal):
        return wire_number(value)
    if isinstance(value, dict):
        return {k: to_wire(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_wire(v) for v in value]
    return value


def _num(value: Decimal) -> int | Decimal:
    integral = int(value)
    if integral == value:
        return integral
    return value.normalize()


def wire_result(outcome: core_engine.Outcome) -> dict[str, Any]:
    """The wire result of a first application (``Outcome.to_result`` with JSON-number values)."""
    level = outcome.level
    return {
        "applied": True,
        "duplicate": False,
        "delta": [{"wallet": d.wallet, "amount": _num(d.amount)} for d in outcome.deltas],
        "leveled_up": outcome.leveled_up,
        "unlocked": [{"type": u.type, "key": u.key, "name": u.name} for u in outcome.unlocked],
        "wallet_state": {k: _num(v) for k, v in outcome.balances.items()},
        "level": None if level is None else {
            "wallet": level.wallet,
            "level": level.level,
            "current": _num(level.current),
            "nextLevelAt": None if level.next_level_at is None else _num(level.next_level_at),
            "currentLevelAt": _num(level.current_level_at),
            "progress": _num(level.progress),
        },
    }


def as_duplicate(result: Mapping[str, Any]) -> dict[str, Any]:
    out = dict(result)
    out["applied"] = False
    out["duplicate"] = True
    return out


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, datetime):
        return core_engine.format_datetime(value)
    return value
