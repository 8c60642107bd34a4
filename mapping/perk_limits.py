"""A Perkville perk's limits as Perkamo program limits, and what cannot be carried over.

What Perkville shows (``docs/program.md``, "Limits: what is carried over"):

* ``redemption_limit_count`` per ``redemption_limit_interval_count`` × ``redemption_limit_interval``
  are perk fields [C-code] (K1's PerkVO). K1 types the interval as an ``int`` [C-code]; the sandbox
  sends a name such as ``"DAY"``. Both are read: whether Perkville sends names is [?] and what
  each integer means is [?], so a limit read through an integer code is translated with a
  warning. That the limit also caps how often an earn perk is awarded is [I]; whether its periods
  are calendar days/weeks (as Perkamo's are) or rolling ones is [?].
* ``limit_to_once_per_calendar_day`` is a flag of the award call [C] (S2), not a perk field: no
  public client shows it on a perk. A perk that carries it as ``true`` is honoured (unconfirmed);
  a perk without it tells nothing about daily limits, so an earn perk with no limit at all is
  reported instead of being silently translated as "no limit".
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from mapping import _coerce as c
from mapping.errors import MappingConfigError
from mapping.records import PerkvillePerk

__all__ = [
    "DEFAULT_INTERVAL_CODES",
    "INTERVALS",
    "INTERVAL_NAMES",
    "LIFETIME_INTERVALS",
    "PerkLimits",
    "interval_codes",
    "perk_limits",
]

INTERVALS = ("DAY", "WEEK", "MONTH", "YEAR", "LIFETIME")
# Redemption-limit intervals that mean "ever" (Perkamo's ``limits.lifetime`` / ``per_customer``).
LIFETIME_INTERVALS = frozenset({"LIFETIME", "EVER", "TOTAL", "ALL_TIME", "NONE"})
INTERVAL_NAMES: Mapping[str, str] = {
    **{name: "DAY" for name in ("DAY", "DAYS", "DAILY", "CALENDAR_DAY")},
    **{name: "WEEK" for name in ("WEEK", "WEEKS", "WEEKLY")},
    **{name: "MONTH" for name in ("MONTH", "MONTHS", "MONTHLY")},
    **{name: "YEAR" for name in ("YEAR", "YEARS", "YEARLY", "ANNUAL", "ANNUALLY")},
    **{name: "LIFETIME" for name in LIFETIME_INTERVALS},
}
# [?] No source says what K1's integer codes mean: this is a guess (the units in increasing size,
# from 1), every limit read through it is translated with a warning, and the operator can replace
# it (``perkbridge program from-perkville --interval-code 1=DAY``).
DEFAULT_INTERVAL_CODES: Mapping[int, str] = {1: "DAY", 2: "WEEK", 3: "MONTH", 4: "YEAR"}


@dataclass(frozen=True)
class PerkLimits:
    """The ``limits`` object of a rule (``per_day``/``per_week``/``lifetime``) or a reward
    (``per_customer``), and ``(field, reason)`` warnings about what was not carried over."""

    limits: dict[str, int] = field(default_factory=dict)
    notes: list[tuple[str, str]] = field(default_factory=list)


def interval_codes(codes: Mapping[Any, Any] | None) -> dict[int, str]:
    """Check an integer-code table (``{1: "DAY", ...}``; keys may be numeric strings); ``None`` = the default."""
    if codes is None:
        return dict(DEFAULT_INTERVAL_CODES)
    table: dict[int, str] = {}
    for code, name in codes.items():
        try:
            number = int(str(code).strip())
        except ValueError:
            raise MappingConfigError(f"interval code {code!r} is not an integer") from None
        interval = INTERVAL_NAMES.get(str(name).strip().upper())
        if interval is None:
            raise MappingConfigError(
                f"interval code {number}: {name!r} is not an interval (one of {', '.join(INTERVALS)})")
        table[number] = interval
    return table


def _interval(value: int | str, codes: Mapping[int, str]) -> tuple[str | None, str]:
    """The interval a code names (``None`` when unknown) and how to describe the code in a warning."""
    if isinstance(value, int):
        name = codes.get(value)
        if name is None:
            return None, f"{value} (an integer code the interval-code table does not name)"
        return name, f"{name} (integer code {value}, read through the interval-code table: undocumented)"
    return INTERVAL_NAMES.get(value), repr(value)


def perk_limits(perk: PerkvillePerk, *, earn: bool, codes: Mapping[int, str]) -> PerkLimits:
    """Translate ``perk``'s limits for an earn rule (``earn=True``) or a reward."""
    out = PerkLimits()
    note = out.notes.append
    what = "rule" if earn else "reward"
    count, value = perk.redemption_limit_count, perk.redemption_limit_interval
    if count:  # 0 and null: no limit
        every = perk.redemption_limit_interval_count or 1
        unread = perk.raw.get("redemption_limit_interval")
        if value is not None:
            interval, shown = _interval(value, codes)
        elif c.is_missing(unread):
            interval, shown = "LIFETIME", ""
        else:  # present but unreadable (parsing reported it): never read it as "ever"
            interval, shown = None, repr(c.json_safe(unread))
        period = shown if every == 1 else f"{every} × {shown}"
        if interval is None:
            note(("redemption_limit_interval",
                  f"unknown redemption_limit_interval {shown}: the limit of {count} is not carried over; "
                  f"the {what} is translated without it"))
        elif interval == "LIFETIME":
            out.limits["lifetime" if earn else "per_customer"] = count
        elif earn and every == 1 and interval in ("DAY", "WEEK"):
            out.limits["per_day" if interval == "DAY" else "per_week"] = count
        else:
            note(("redemption_limit_interval",
                  f"redemption limit of {count} per {period} has no Perkamo equivalent for a {what}; "
                  f"the {what} is translated without it"))
        if out.limits and isinstance(value, int):
            got = ", ".join(f"limits.{key} = {n}" for key, n in out.limits.items())
            note(("redemption_limit_interval", f"redemption limit of {count} per {period} translated as {got}: "
                  "check what the integer code means in Perkville's admin"))
    daily = perk.limit_to_once_per_calendar_day
    if daily is True:
        if earn:
            out.limits["per_day"] = 1
        else:
            note(("limit_to_once_per_calendar_day",
                  "a once-a-day flag on a reward has no Perkamo equivalent; the reward is translated without it"))
    elif earn and daily is None and not count:
        if "redemption_limit_count" not in perk.raw:
            source = "the perk carries no redemption_limit_count"
        elif count is None and not c.is_missing(perk.raw["redemption_limit_count"]):
            source = "redemption_limit_count is unreadable"
        else:
            source = f"redemption_limit_count is {'null' if count is None else count}"
        note(("limit_to_once_per_calendar_day",
              f"limit unknown: {source}, and once-a-day limits are a flag of each award call "
              "(limit_to_once_per_calendar_day), not of the perk; the rule is translated without a limit "
              "(add limits.per_day by hand if the business awards it once a day)"))
    elif not earn and not count and "redemption_limit_count" not in perk.raw:
        note(("redemption_limit_count",
              "limit unknown: the perk carries no redemption_limit_count; the reward is translated without one"))
    return out
