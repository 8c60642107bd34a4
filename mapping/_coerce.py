"""Lenient readers for raw Perkville JSON values: each returns a clean value or raises ``Invalid``."""

from __future__ import annotations

import math
import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from mapping.errors import MappingConfigError

__all__ = [
    "MAX_POINTS",
    "Invalid",
    "is_missing",
    "resolve_timezone",
    "to_bool",
    "to_date",
    "to_datetime",
    "to_decimal",
    "to_enum",
    "to_id",
    "to_text",
    "json_safe",
]

# Larger magnitudes are certainly corrupt, and bounding them keeps Decimal arithmetic exact and
# far away from the context's overflow traps.
MAX_POINTS = Decimal(10) ** 15
_MAX_INT_ID = 10**30

_URI = re.compile(r"^(?:https?://[^/]+)?/v\d+/(?P<resource>[a-z0-9_\-]+)/(?P<id>[^/?#]+)/?$")
_DATETIME = re.compile(
    r"^(?P<y>\d{4})-(?P<mo>\d{1,2})-(?P<d>\d{1,2})"
    r"(?:[T ]+(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d+))?)?)?"
    r"\s*(?P<tz>[Zz]|UTC|GMT|[+-]\d{2}(?::?\d{2})?)?$"
)


class Invalid(Exception):
    """A raw value could not be read; ``reason`` says why (without echoing secrets: values are data)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def is_missing(value: object) -> bool:
    """True for JSON null, absent values and strings that are empty or only whitespace."""
    return value is None or (isinstance(value, str) and not value.strip())


def resolve_timezone(zone: str | tzinfo) -> tzinfo:
    """Turn an IANA zone name (or a ready ``tzinfo``) into a ``tzinfo``; unknown names are config errors."""
    if isinstance(zone, tzinfo):
        return zone
    if not isinstance(zone, str) or not zone.strip():
        raise MappingConfigError("timezone must be an IANA zone name such as 'UTC' or 'America/Chicago'")
    if zone.strip().upper() == "UTC":
        return UTC
    try:
        return ZoneInfo(zone.strip())
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise MappingConfigError(f"unknown timezone {zone!r}: use an IANA zone name such as 'Europe/Prague'") from exc


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def to_id(value: object, resource: str | None = None) -> str:
    """Read an id given as an integer, a string, a resource URI (``/v2/users/123/``) or a nested object."""
    if isinstance(value, dict):
        singular = (resource[:-2] if resource.endswith("sses") else resource[:-1]) if resource else ""
        for key in ("resource_uri", f"{singular}_id" if singular else "id", "id"):
            if key in value and not is_missing(value[key]):
                return to_id(value[key], resource)
        raise Invalid("nested object without resource_uri or id")
    if isinstance(value, bool):
        raise Invalid(f"expected an id, got a boolean {value!r}")
    if isinstance(value, int):
        if abs(value) >= _MAX_INT_ID:
            raise Invalid("id number out of range")
        return str(value)
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise Invalid("empty id")
        if "/" in text:
            match = _URI.match(text)
            if match is None:
                raise Invalid(f"not a resource URI: {_short(text)}")
            if resource is not None and match["resource"] != resource:
                raise Invalid(f"URI of a {match['resource']!r} where a {resource!r} was expected")
            return match["id"]
        return text
    raise Invalid(f"expected an id, got {type(value).__name__}")


def to_text(value: object) -> str:
    """Read a non-empty text value (numbers are accepted and written in decimal)."""
    if isinstance(value, str):
        text = value.strip()
        if not text:
            raise Invalid("empty string")
        return text
    if isinstance(value, bool):
        raise Invalid(f"expected text, got a boolean {value!r}")
    if isinstance(value, int) and abs(value) < _MAX_INT_ID:
        return str(value)
    raise Invalid(f"expected text, got {type(value).__name__}")


def to_enum(value: object) -> str:
    """Read an enum value as upper-case text."""
    return to_text(value).upper()


def to_bool(value: object) -> bool:
    """Read a boolean given as JSON true/false, 0/1 or the strings true/false/yes/no."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in ("true", "1", "yes", "y", "t"):
            return True
        if text in ("false", "0", "no", "n", "f"):
            return False
    raise Invalid(f"expected a boolean, got {_short(value)}")


def to_decimal(value: object) -> Decimal:
    """Read a finite number of points (int, float or numeric string) as an exact ``Decimal``."""
    if isinstance(value, bool):
        raise Invalid(f"expected a number, got a boolean {value!r}")
    if isinstance(value, int):
        if abs(value) > MAX_POINTS:
            raise Invalid("number out of range")
        return Decimal(value)
    if isinstance(value, Decimal):  # raw JSON read with parse_float=Decimal
        number = value
        if not number.is_finite():
            raise Invalid(f"expected a finite number, got {_short(value)}")
    elif isinstance(value, float):
        if not math.isfinite(value):
            raise Invalid(f"expected a finite number, got {value!r}")
        number = Decimal(repr(value))
    elif isinstance(value, str):
        text = value.strip()
        if "_" in text:  # Decimal accepts digit separators; JSON numbers never contain them
            raise Invalid(f"not a number: {_short(value)}")
        try:
            number = Decimal(text)
        except InvalidOperation as exc:
            raise Invalid(f"not a number: {_short(value)}") from exc
        if not number.is_finite():
            raise Invalid(f"expected a finite number, got {_short(value)}")
    else:
        raise Invalid(f"expected a number, got {type(value).__name__}")
    if abs(number) > MAX_POINTS or (number != 0 and number.adjusted() < -12):
        raise Invalid(f"number out of range: {_short(value)}")
    return number + 0  # normalises -0 to 0


def _tz_from_suffix(suffix: str) -> tzinfo:
    if suffix in ("Z", "z", "UTC", "GMT"):
        return UTC
    sign = -1 if suffix[0] == "-" else 1
    digits = suffix[1:].replace(":", "")
    hours, minutes = int(digits[:2]), int(digits[2:] or 0)
    if hours > 23 or minutes > 59:
        raise Invalid(f"offset out of range: {suffix}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def to_datetime(value: object, zone: tzinfo) -> datetime:
    """Read a datetime leniently (space or ``T``, fractional seconds, offset or ``Z``, date only).

    A value without an offset is read in ``zone``; the result is always timezone-aware UTC.
    """
    if isinstance(value, datetime):
        moment = value
    else:
        if not isinstance(value, str):
            raise Invalid(f"expected a date-time string, got {type(value).__name__}")
        match = _DATETIME.match(value.strip())
        if match is None:
            raise Invalid(f"unreadable date-time: {_short(value)}")
        fraction = (match["f"] or "")[:6].ljust(6, "0")
        try:
            moment = datetime(
                int(match["y"]), int(match["mo"]), int(match["d"]),
                int(match["h"] or 0), int(match["mi"] or 0), int(match["s"] or 0), int(fraction),
            )
        except ValueError as exc:
            raise Invalid(f"impossible date-time: {_short(value)}") from exc
        if match["tz"]:
            moment = moment.replace(tzinfo=_tz_from_suffix(match["tz"]))
    if moment.tzinfo is None or moment.utcoffset() is None:
        moment = moment.replace(tzinfo=zone)
    try:
        return moment.astimezone(UTC)
    except (OverflowError, ValueError) as exc:
        raise Invalid(f"date-time out of range: {_short(value)}") from exc


def to_date(value: object) -> date:
    """Read a calendar date (``YYYY-MM-DD``, or the date part of a date-time as written)."""
    if isinstance(value, datetime):
        return value.date()
    if isinstance(value, date):
        return value
    if not isinstance(value, str):
        raise Invalid(f"expected a date string, got {type(value).__name__}")
    match = _DATETIME.match(value.strip())
    if match is None:
        raise Invalid(f"unreadable date: {_short(value)}")
    try:
        return date(int(match["y"]), int(match["mo"]), int(match["d"]))
    except ValueError as exc:
        raise Invalid(f"impossible date: {_short(value)}") from exc


def json_safe(value: Any) -> Any:
    """Return ``value`` if it is plain JSON data, else its ``repr`` (raw records stay printable)."""
    if value is None or isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return repr(value)
