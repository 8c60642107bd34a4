"""Payload fingerprints: a replayed ``transaction_id`` with the same payload is a duplicate."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from decimal import Decimal
from typing import Any

import orjson

from perkamo_core.errors import TransactionIdConflictError

#
# A transaction_id names one business action. Its payload is (user_id, event, context): the same
# id with the same payload is a replay (``duplicate: true``); with another payload it is a
# conflict (409 ``transaction_id_conflict``). ``occurred_at`` is not part of it: the SDKs default
# it to the time of the call, so an application retrying an action sends a later one, and the
# bridge derives it from PERKVILLE_TIMEZONE, which an operator may correct between runs.
# Numbers compare by value: 1, 1.0 and Decimal("1.00") are the same number.

_FP_NATIVE = frozenset({str, bool, type(None)})
_FP_INT_MIN, _FP_INT_MAX = -(2**63), 2**64 - 1  # integers orjson writes itself
_FP_EXACT_INT = 10**30  # integral numbers below this are written as integers, others normalized


def _fp_number(value: Decimal) -> Any:
    if value.is_finite() and value == value.to_integral_value() and abs(value) < _FP_EXACT_INT:
        return _fp_int(int(value))
    return orjson.Fragment(str(value.normalize()))


def _fp_int(value: int) -> Any:
    if _FP_INT_MIN <= value <= _FP_INT_MAX:
        return value
    if abs(value) < _FP_EXACT_INT:
        return orjson.Fragment(str(value))
    return orjson.Fragment(str(Decimal(value).normalize()))


def _fp_canonical(value: Any) -> Any:
    kind = type(value)
    if kind in _FP_NATIVE:
        return value
    if kind is int:
        return _fp_int(value)
    if kind is float:
        return _fp_number(Decimal(repr(value)))
    if isinstance(value, Decimal):
        return _fp_number(value)
    if isinstance(value, Mapping):
        return {k: _fp_canonical(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_fp_canonical(v) for v in value]
    if isinstance(value, int):
        return _fp_int(int(value))
    return str(value)  # validated contexts hold nothing else


def payload_fingerprint(user_id: str, event: str, context: Mapping[str, Any]) -> str:
    """The sha256 (hex) of the canonical ``[user_id, event, context]``: keys sorted, numbers by
    value, text as given. Equal for a replay of the same action, different for another payload."""
    flat = True
    for value in context.values():
        kind = type(value)
        if kind is int:
            if not _FP_INT_MIN <= value <= _FP_INT_MAX:
                flat = False
                break
        elif kind not in _FP_NATIVE:
            flat = False
            break
    body = orjson.dumps(
        [user_id, event, context if flat else _fp_canonical(context)], option=orjson.OPT_SORT_KEYS
    )
    return hashlib.sha256(body).hexdigest()


def transaction_id_conflict(transaction_id: str) -> TransactionIdConflictError:
    """The 409 for a ``transaction_id`` already used for another payload (it names nothing of it)."""
    return TransactionIdConflictError(
        f"transaction_id {transaction_id[:80]!r} was already used for a different payload "
        "(another customer, event, context or reward); use a new transaction_id for a new action",
        field="transaction_id",
    )
