"""Perkville perks → Perkamo program modules (EARN → ``events`` rules, REDEEM → ``perks.rewards``)."""

from __future__ import annotations

import copy
import hashlib
import re
from collections.abc import Iterable, Mapping
from datetime import UTC, date, datetime, timedelta
from decimal import Decimal
from typing import Any

from mapping import _coerce as c
from mapping.perk_limits import LIFETIME_INTERVALS, perk_limits
from mapping.perk_limits import interval_codes as _code_table
from mapping.records import PerkvillePerk, Zone, parse_perk
from mapping.types import MappingIssue, ProgramTranslation, Skipped

__all__ = ["LIFETIME_INTERVALS", "perk_key", "to_program_modules"]

_SAFE_ID = re.compile(r"^[A-Za-z0-9_.\-]{1,90}$")


def perk_key(perk_id: str) -> str:
    """The program key of a Perkville perk: ``perkville_perk_{id}`` (hashed if the id is unusual)."""
    if _SAFE_ID.match(perk_id):
        return f"perkville_perk_{perk_id}"
    return "perkville_perk_h" + hashlib.sha256(perk_id.encode("utf-8", "surrogatepass")).hexdigest()[:32]


def _number(value: Decimal) -> int | Decimal:
    return int(value) if value == value.to_integral_value() else value


def _boundary(value: date | datetime, zone: Any, *, end: bool) -> datetime:
    """A perk date as an instant: a calendar date starts (or, for ``to_date``, ends) at local midnight."""
    if isinstance(value, datetime):
        return value.astimezone(UTC)
    day = value + timedelta(days=1) if end else value
    return datetime(day.year, day.month, day.day, tzinfo=zone).astimezone(UTC)


def _iso(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")


def to_program_modules(
    perks: Iterable[PerkvillePerk | Mapping[str, Any]],
    *,
    wallet: str = "points",
    timezone: Zone = "UTC",
    event_perks: Mapping[str, int | str] | None = None,
    base: Mapping[str, Mapping[str, Any]] | None = None,
    interval_codes: Mapping[Any, Any] | None = None,
) -> ProgramTranslation:
    """Translate perks into program modules, appended to a copy of ``base`` (e.g. the migration program).

    EARN perks become ``events`` rules: fixed ``amount`` = |points|, ``from_date``/``to_date`` →
    ``active_from``/``active_until`` (a date is inclusive: it ends at the next local midnight in
    ``timezone``). The rule's event is every key that ``event_perks`` (the write-back table, event →
    perk) maps to the perk, else ``perk.{perk_id}``. REDEEM perks become rewards costing |points|.
    Limits (``mapping.perk_limits``): a redemption limit per 1 DAY/WEEK becomes a rule's
    ``per_day``/``per_week``, a lifetime one ``lifetime`` or a reward's ``per_customer``; anything else,
    an unknown interval and an earn perk whose limit is unknown are warnings. ``interval_codes``
    replaces the table that reads integer ``redemption_limit_interval`` codes (``{1: "DAY", ...}``).
    Perks that are not ACTIVE, 0-point earn perks and unreadable perks are skipped or issues.
    """
    zone = c.resolve_timezone(timezone)
    codes = _code_table(interval_codes)
    modules: dict[str, dict[str, Any]] = copy.deepcopy({k: dict(v) for k, v in (base or {}).items()})
    rules: list[dict[str, Any]] = list(modules.get("events", {}).get("rules", []))
    perks_module = modules.get("perks", {})
    rewards: list[dict[str, Any]] = list(perks_module.get("rewards", []))
    issues: list[MappingIssue] = []
    skipped: list[Skipped] = []
    events_for: dict[str, list[str]] = {}
    for event_key, mapped_perk in (event_perks or {}).items():
        try:
            events_for.setdefault(c.to_id(mapped_perk, "perks"), []).append(event_key)
        except c.Invalid:
            issues.append(MappingIssue(record_id=None, field="event_perks", record_type="perk",
                                       reason=f"unusable perk id for event {event_key!r}", raw={event_key: str(mapped_perk)}))
    seen: set[str] = set()
    for item in perks:
        if isinstance(item, PerkvillePerk):
            perk: PerkvillePerk | None = item
            issues.extend(item.issues)
        else:
            parsed = parse_perk(item, timezone=zone)
            perk = parsed.record
            issues.extend(parsed.issues)
        if perk is None:
            continue
        pid = perk.perk_id
        raw = c.json_safe(perk.raw)

        def problem(field: str | None, reason: str, severity: str = "error") -> None:
            issues.append(MappingIssue(record_id=pid, field=field, reason=reason, raw=raw, record_type="perk",
                                       severity="warning" if severity == "warning" else "error"))

        def note_limits(record: PerkvillePerk, *, earn: bool) -> dict[str, int]:
            found = perk_limits(record, earn=earn, codes=codes)
            for field, reason in found.notes:
                problem(field, reason, severity="warning")
            return found.limits

        def skip(reason: str) -> None:
            skipped.append(Skipped(record_id=pid, reason=reason, raw=raw, record_type="perk"))

        if pid in seen:
            skip("duplicate perk id: already translated")
            continue
        seen.add(pid)
        if perk.status is not None and perk.status != "ACTIVE":
            skip(f"perk status is {perk.status}, not ACTIVE")
            continue
        if perk.classification not in ("EARN", "REDEEM"):
            problem("classification", f"unknown classification {perk.classification!r} (expected EARN or REDEEM)"
                    if perk.classification else "missing classification")
            continue
        if perk.points is None:
            problem("points", "missing or unreadable points")
            continue
        points = abs(perk.points)
        title = perk.title or f"Perkville perk {pid}"
        key = perk_key(pid)
        if perk.classification == "EARN":
            if points == 0:
                skip("0-point earn perk (an activity): events are recorded without a rule")
                continue
            try:
                start = _boundary(perk.from_date, zone, end=False) if perk.from_date else None
                end = _boundary(perk.to_date, zone, end=True) if perk.to_date else None
            except (OverflowError, ValueError):
                problem("to_date", "from_date/to_date out of range")
                continue
            if start is not None and end is not None and end <= start:
                problem("to_date", "to_date is before from_date")
                continue
            limits = note_limits(perk, earn=True)
            events = sorted(events_for.get(pid, [])) or [f"perk.{key.removeprefix('perkville_perk_')}"]
            for n, event_key in enumerate(events):
                rule: dict[str, Any] = {
                    "event": event_key,
                    "key": key if n == 0 else f"{key}_{n}",
                    "label": title,
                    "wallet": wallet,
                    "amount": _number(points),
                }
                if limits:
                    rule["limits"] = dict(limits)
                if start is not None:
                    rule["active_from"] = _iso(start)
                if end is not None:
                    rule["active_until"] = _iso(end)
                rules.append(rule)
            continue
        if points == 0:
            problem("points", "a reward must cost more than 0 points")
            continue
        reward: dict[str, Any] = {
            "key": key,
            "name": title,
            "wallet": wallet,
            "cost": _number(points),
            "effect": {"type": "perkville_perk", "perk_id": pid},
        }
        if perk.description:
            reward["description"] = perk.description
        limits = note_limits(perk, earn=False)
        if limits:
            reward["limits"] = limits
        rewards.append(reward)
    if rules or "events" in modules:
        modules["events"] = {**modules.get("events", {}), "rules": rules}
    if rewards or "perks" in modules:
        modules["perks"] = {**perks_module, "rewards": rewards}
    wallets = modules.get("wallets")
    if wallets is not None and (rules or rewards):
        known = {w.get("key") for w in wallets.get("wallets", [])}
        if wallet not in known:
            modules["wallets"] = {**wallets, "wallets": [*wallets.get("wallets", []), {"key": wallet}]}
    return ProgramTranslation(modules=modules, issues=issues, skipped=skipped)
