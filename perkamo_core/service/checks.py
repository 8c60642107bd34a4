"""The checks every input passes before it is stored: text, JSON values, contexts, traits and
``occurred_at``; :func:`check_event` applies them to one event."""

from __future__ import annotations

import re
import uuid
from collections.abc import Mapping
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any, NamedTuple

from perkamo_core.errors import ValidationError
from perkamo_core.limits import OCCURRED_AT_END, OCCURRED_AT_MIN, OCCURRED_AT_RANGE
from perkamo_core.models import MAX_EVENT, MAX_TRANSACTION_ID, MAX_USER_ID, RESERVED_CONTEXT_KEYS


def parse_occurred_at(value: datetime | str | None, now: datetime) -> datetime:
    """An aware UTC datetime from an ISO-8601 string/datetime (naive = UTC); ``now`` when absent."""
    if value is None:
        return now
    if isinstance(value, str):
        raw = value.strip()
        if not raw:
            raise ValidationError("occurred_at must be an ISO-8601 date-time", field="occurred_at")
        try:
            parsed = datetime.fromisoformat(raw[:-1] + "+00:00" if raw[-1:] in "zZ" else raw)
        except ValueError:
            raise ValidationError(
                f"occurred_at {value[:64]!r} is not an ISO-8601 date-time", field="occurred_at"
            ) from None
    elif isinstance(value, datetime):
        parsed = value
    else:
        raise ValidationError("occurred_at must be an ISO-8601 date-time", field="occurred_at")
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    try:
        utc = parsed.astimezone(UTC)
    except (OverflowError, ValueError):  # e.g. 9999-12-31T23:59:59-14:00 is past year 9999 in UTC
        utc = None
    if utc is None or not OCCURRED_AT_MIN <= utc < OCCURRED_AT_END:
        raise ValidationError(
            f"occurred_at {str(value)[:64]!r} is out of range: it must be from {OCCURRED_AT_RANGE} in UTC",
            code="occurred_at_out_of_range", field="occurred_at",
        )
    return utc


_UNSTORABLE = re.compile("[\x00\ud800-\udfff]")
"""NUL (PostgreSQL text refuses it) and surrogate code points (UTF-8 cannot encode them)."""


def storable(value: str) -> bool:
    """Whether both databases can store ``value``: no NUL character, no lone surrogate."""
    if value.isascii():
        return "\x00" not in value
    return _UNSTORABLE.search(value) is None


def _unstorable(field: str, *, key: bool = False) -> ValidationError:
    what = f"a key of {field}" if key else field
    return ValidationError(
        f"{what} contains a NUL character or a lone surrogate, which cannot be stored",
        code="invalid_text", field=field,
    )


def check_text(value: Any, field: str, limit: int) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValidationError(f"{field} is required and must be a non-empty string", field=field)
    if len(value) > limit:
        raise ValidationError(f"{field} is longer than {limit} characters", field=field)
    if not (value.isascii() and "\x00" not in value) and not storable(value):
        raise _unstorable(field)
    return value


def _check_json_value(value: Any, field: str, depth: int = 0) -> None:
    if depth > 32:
        raise ValidationError(f"{field} is nested too deeply", field=field)
    if isinstance(value, str):
        if not storable(value):
            raise _unstorable(field)
        return
    if value is None or isinstance(value, (bool, int, Decimal)):
        if isinstance(value, Decimal) and not value.is_finite():
            raise ValidationError(f"{field} must be a finite number", field=field)
        return
    if isinstance(value, float):
        if value != value or value in (float("inf"), float("-inf")):
            raise ValidationError(f"{field} must be a finite number", field=field)
        return
    if isinstance(value, (list, tuple)):
        for i, item in enumerate(value):
            _check_json_value(item, f"{field}[{i}]", depth + 1)
        return
    if isinstance(value, Mapping):
        for key, item in value.items():
            if not isinstance(key, str) or not key:
                raise ValidationError(f"{field} keys must be non-empty strings", field=field)
            if not storable(key):
                raise _unstorable(field, key=True)
            _check_json_value(item, f"{field}.{key}", depth + 1)
        return
    raise ValidationError(f"{field} holds a {type(value).__name__}, not a JSON value", field=field)


_SCALAR_TYPES = frozenset({int, bool, type(None)})


def validate_context(context: Any, known_keys: set[str] | None = None) -> dict[str, Any]:
    """The event context as a plain dict; reserved top-level keys rejected case-insensitively.

    ``known_keys`` (optional, the caller's) remembers top-level keys that passed, so a page whose
    events share their keys checks each key once.
    """
    if context is None:
        return {}
    if not isinstance(context, Mapping):
        raise ValidationError("context must be a JSON object", field="context")
    nested = False
    for key, value in context.items():
        if known_keys is None or key not in known_keys:
            if not isinstance(key, str) or not key:
                raise ValidationError("context keys must be non-empty strings", field="context")
            if not storable(key):
                raise _unstorable("context", key=True)
            if key.lower() in RESERVED_CONTEXT_KEYS:
                raise ValidationError(
                    f"context key {key!r} is reserved for customer state; rename it",
                    code="reserved_context_key",
                    field=f"context.{key}",
                )
            if known_keys is not None and len(known_keys) < 1024:
                known_keys.add(key)
        if type(value) is str:
            if not (value.isascii() and "\x00" not in value) and not storable(value):
                raise _unstorable(f"context.{key}")
        elif type(value) not in _SCALAR_TYPES:
            nested = True
    if nested:  # the common flat context of scalars needs no deeper walk
        _check_json_value(context, "context")
    return dict(context)


def validate_traits(traits: Any) -> dict[str, Any]:
    if traits is None:
        return {}
    if not isinstance(traits, Mapping):
        raise ValidationError("traits must be a JSON object", field="traits")
    _check_json_value(traits, "traits")
    return dict(traits)


class CheckedEvent(NamedTuple):
    """An event as :func:`check_event` validated it. ``occurred_at`` None means "now", which the
    ingest fills in."""

    user_id: str
    event: str
    transaction_id: str
    context: dict[str, Any]
    occurred_at: datetime | None


def check_event(
    user_id: Any,
    event: Any,
    transaction_id: Any,
    context: Any,
    occurred_at: Any,
    *,
    known_keys: set[str] | None = None,
) -> CheckedEvent:
    """The checks ``ingest`` applies to every event, as a :class:`CheckedEvent`, or a
    ``ValidationError`` naming the field.

    A missing ``transaction_id`` gets a fresh ``tx_…`` id here, as it would at ingest.
    ``known_keys`` (the caller's, per page) lets events sharing their context keys check each once.
    """
    user = check_text(user_id, "user_id", MAX_USER_ID)
    name = check_text(event, "event", MAX_EVENT)
    if transaction_id is None:
        txid = f"tx_{uuid.uuid4()}"
    else:
        txid = check_text(transaction_id, "transaction_id", MAX_TRANSACTION_ID)
    checked_context = validate_context(context, known_keys)
    at = None if occurred_at is None else parse_occurred_at(occurred_at, _EPOCH)
    return CheckedEvent(user, name, txid, checked_context, at)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
