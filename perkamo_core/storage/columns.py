"""How the core's values are stored: compact JSON text, exact Decimal text and UTC datetimes.

Decimals are stored as text (exact on both backends); datetimes as timezone-aware UTC.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import orjson
from sqlalchemy import DateTime, Dialect, String, Text
from sqlalchemy.types import TypeDecorator


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, (set, frozenset, tuple)):
        return list(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")


_ENCODER = json.JSONEncoder(default=_json_default, separators=(",", ":"), ensure_ascii=False)


def dump_json(value: Any) -> str:
    """Compact JSON with Decimals as numbers (ints when integral) and datetimes as ISO-8601.

    orjson writes the common documents about ten times faster; what it refuses (non-string keys,
    integers beyond 64 bits, lone surrogates) goes through the standard library's encoder, which
    gives the same text for everything orjson accepts.
    """
    try:
        return orjson.dumps(value, default=_json_default).decode()
    except orjson.JSONEncodeError:
        return _ENCODER.encode(value)


def load_json_exact(text: str | bytes) -> Any:
    """Parse JSON without float literals or integers beyond 64 bits (the state document, whose
    Decimals are strings) about five times faster than :func:`load_json`.

    Either would come back as a binary ``float``: documents with decimals need :func:`load_json`.
    """
    return orjson.loads(text)


def load_json(text: str) -> Any:
    """Parse stored JSON; non-integral numbers come back as Decimal (never float)."""
    return json.loads(text, parse_float=Decimal)


class JSONText(TypeDecorator[Any]):
    """JSON stored as text on both backends (no JSON operators needed, exact and fast).

    A ``str`` bound value is taken as already-serialized JSON (the bulk path serializes once).
    """

    impl = Text
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None or isinstance(value, str):
            return value
        return dump_json(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Any:
        return None if value is None else load_json(value)


class DecimalText(TypeDecorator[Decimal]):
    """A Decimal stored as its exact text (SQLite has no exact numeric type)."""

    impl = String(64)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> str | None:
        if value is None:
            return None
        return str(value if isinstance(value, Decimal) else Decimal(str(value)))

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(value)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC datetime on both backends (SQLite keeps naive UTC text)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: Any, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if not isinstance(value, datetime) or value.tzinfo is None:
            raise ValueError("a UTC column needs a timezone-aware datetime")
        utc = value.astimezone(UTC)
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: Any, dialect: Dialect) -> datetime | None:
        if not isinstance(value, datetime):
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)
