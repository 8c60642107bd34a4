"""Tolerant parsing of Perkville datetimes and formatting of datetime filter values."""

from __future__ import annotations

import re
from datetime import UTC, date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

_DATETIME = re.compile(
    r"""^\s*
    (?P<date>\d{4}-\d{2}-\d{2})
    (?:[T\s]+
        (?P<hour>\d{2}):(?P<minute>\d{2})(?::(?P<second>\d{2})(?:[.,](?P<fraction>\d{1,9}))?)?
    )?
    \s*(?P<offset>Z|z|UTC|[+-]\d{2}(?::?\d{2})?)?
    \s*$""",
    re.VERBOSE,
)
# The shapes Perkville itself sends (naive local time, or UTC with ``Z``/``±00:00``), ASCII digits
# only. Every string this matches is one ``_DATETIME`` accepts, and ``datetime.fromisoformat``
# reads it field for field the same way, so it may skip the tolerant path.
_CANONICAL = re.compile(
    r"[0-9]{4}-[0-9]{2}-[0-9]{2}[T ][0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?(Z|[+-]00:00)?"
).fullmatch
_from_iso = datetime.fromisoformat


def to_tzinfo(tz: str | tzinfo) -> tzinfo:
    """Resolve an IANA zone name (or pass a ``tzinfo`` through); ``ValueError`` when unknown."""
    if isinstance(tz, tzinfo):
        return tz
    if tz.upper() in {"UTC", "Z"}:
        return UTC
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError) as exc:
        raise ValueError(f"unknown time zone {tz!r}") from exc


def _offset(raw: str) -> tzinfo:
    if raw.upper() in {"Z", "UTC"}:
        return UTC
    sign = -1 if raw[0] == "-" else 1
    digits = raw[1:].replace(":", "")
    hours = int(digits[:2])
    minutes = int(digits[2:4]) if len(digits) > 2 else 0
    if hours > 23 or minutes > 59:
        raise ValueError(f"invalid UTC offset {raw!r}")
    return timezone(sign * timedelta(hours=hours, minutes=minutes))


def parse_perkville_datetime(value: object, tz: str | tzinfo = "UTC") -> datetime | None:
    """Parse a Perkville ``*_dt`` value into an aware UTC datetime (``None`` for null or "").

    Accepts a space or ``T`` between date and time, optional seconds, 1–9 fractional digits
    (truncated to microseconds), an optional ``Z``/``±HH[:MM]`` offset, a date alone (midnight)
    and ``datetime`` objects. Values without an offset are read in ``tz``. Raises ``ValueError``
    for anything else.
    """
    if value is None:
        return None
    zone = tz if isinstance(tz, tzinfo) else to_tzinfo(tz)
    if type(value) is str and (match := _CANONICAL(value)) is not None:
        # The fast path for the canonical shapes. Invalid ones (month 13, hour 25, 9999-12-31
        # read west of UTC) fall through, so errors keep the tolerant path's type and message.
        try:
            if match.lastindex is not None:  # Z or ±00:00: fromisoformat gives the UTC singleton
                return _from_iso(value)
            if zone is UTC:  # appending the offset is cheaper than .replace(tzinfo=UTC)
                return _from_iso(value + "+00:00")
            return _from_iso(value).replace(tzinfo=zone).astimezone(UTC)
        except (ValueError, OverflowError):
            pass
    return _parse_tolerant(value, zone)


def _parse_tolerant(value: object, zone: tzinfo) -> datetime | None:
    """The reference reading of every accepted shape (see ``parse_perkville_datetime``)."""
    if isinstance(value, datetime):
        parsed = value
    elif isinstance(value, date):
        parsed = datetime(value.year, value.month, value.day)
    elif isinstance(value, str):
        if not value.strip():
            return None
        match = _DATETIME.match(value)
        if match is None:
            raise ValueError(f"not a Perkville datetime: {value[:40]!r}")
        year, month, day = (int(part) for part in match["date"].split("-"))
        fraction = (match["fraction"] or "").ljust(6, "0")[:6]
        parsed = datetime(
            year,
            month,
            day,
            int(match["hour"] or 0),
            int(match["minute"] or 0),
            int(match["second"] or 0),
            int(fraction or 0),
        )
        if match["offset"]:
            parsed = parsed.replace(tzinfo=_offset(match["offset"]))
    else:
        raise ValueError(f"not a Perkville datetime: {type(value).__name__}")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zone)
    return parsed.astimezone(UTC)


def format_filter_datetime(value: datetime, tz: str | tzinfo = "UTC") -> str:
    """Render a filter bound the way Perkville's own values look: naive ``YYYY-MM-DDTHH:MM:SS`` in ``tz``.

    Aware values are converted to ``tz`` first; naive values are taken to be in ``tz`` already.
    Microseconds are kept when present so half-open windows stay exact.
    """
    zone = to_tzinfo(tz)
    local = value.astimezone(zone) if value.tzinfo is not None else value
    text = local.replace(tzinfo=None).isoformat(timespec="microseconds" if local.microsecond else "seconds")
    return text
