"""The sandbox's reading of a REDEEM perk's ``redemption_limit_*`` fields (Perkville's is unknown).

Perkville documents the refusal code ``pv_perk_redemption_limit_reached`` (docs N4) and its perks
carry ``redemption_limit_count``, ``redemption_limit_interval`` and
``redemption_limit_interval_count`` (K1), but not how the window is counted. The sandbox's rule,
simple and deterministic: a customer may redeem a perk at most ``count`` times (the quantities
of ACTIVE rows; a voided redemption no longer counts) within ``interval_count`` × ``interval``
ending at the new redemption's ``transaction_dt``. ``interval`` is ``DAY``, ``WEEK``, ``MONTH`` (30 days) or ``YEAR``
(365 days); any other value, ``None`` included, counts over the customer's whole history.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Protocol

REDEMPTION_LIMIT_REACHED = "pv_perk_redemption_limit_reached"
"""Documented by Perkville (N4) for a redemption past the perk's limit."""

_UNITS = {
    "DAY": timedelta(days=1),
    "WEEK": timedelta(days=7),
    "MONTH": timedelta(days=30),
    "YEAR": timedelta(days=365),
}


class _Row(Protocol):
    connection_id: int
    perk_id: int
    status: str
    dt: datetime
    quantity: int


def redemption_limit_reached(
    perk: Mapping[str, Any], rows: Iterable[_Row], *, connection_id: int, when: datetime, quantity: int = 1
) -> str | None:
    """Why ``quantity`` more redemptions of ``perk`` by ``connection_id`` at ``when`` are refused, or None."""
    count = perk.get("redemption_limit_count")
    if perk.get("classification") != "REDEEM" or not isinstance(count, int) or count < 1:
        return None
    interval = perk.get("redemption_limit_interval")
    unit = _UNITS.get(str(interval).upper()) if interval is not None else None
    every = perk.get("redemption_limit_interval_count") or 1
    since = when - unit * int(every) if unit is not None else None
    used = sum(
        row.quantity
        for row in rows
        if row.connection_id == connection_id
        and row.perk_id == perk["perk_id"]
        and row.status == "ACTIVE"
        and row.dt <= when
        and (since is None or row.dt > since)
    )
    if used + quantity <= count:
        return None
    window = f"per {every} {interval}" if unit is not None else "in all"
    return f"This customer already redeemed this perk {used} time(s); the limit is {count} {window}."
