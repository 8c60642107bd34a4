"""Deterministic Perkamo ids: customer ids by strategy, and transaction ids per ARCHITECTURE §4.

Transaction ids (``b`` is the business id, percent-encoded so it never contains ``:``)::

    perkville:{b}:src:{S}            Perkville row with trans_source_id S
    {T}                              ... unless S = "perkamo:{T}" (a write-back coming home)
    perkville:{b}:txn:{id}           Perkville row without trans_source_id
    perkville:{b}:void:{id}          reversal of a voided row
    perkville:{b}:opening:{user}     opening balance (balance mode)
    perkville:{b}:adjust:{user}:{n}  repair adjustment number n (n a non-negative integer)
    perkville:{b}:tier:{u}           a member's first tier migration (``u``: the user id, encoded
    perkville:{b}:tier:{u}:{n}       like ``b``); a later lift to Perkamo level n
    perkville:{b}:h:{sha256}         any of the above that is longer than 256 characters or
                                     holds control/surrogate characters; the hash covers the
                                     whole un-hashed id, so business and namespace are inside it

Why this is injective: the first three colon-separated fields are ``perkville``, the encoded
business and the namespace; the namespace fixes how the rest is read (the whole rest is the key,
except ``adjust`` whose last field is the decimal ``n``, and ``tier``, whose encoded user holds no
colon, so a second field is its ``n``). ``h`` is used by no other namespace, so a
hashed id never equals an un-hashed one, and distinct un-hashed ids have distinct hashes. A
round-trip id ``T`` never starts with ``perkville:`` (such an S is treated as an ordinary source
id), so it cannot equal any id of the other forms.
"""

from __future__ import annotations

import hashlib
import re
from typing import NamedTuple

from mapping.errors import MappingConfigError
from mapping.types import CustomerIdAssignment, IdMapEntry, IdStrategy, MappingIssue

__all__ = [
    "ID_STRATEGIES",
    "MAX_ID_LENGTH",
    "PERKAMO_SOURCE_PREFIX",
    "PERKVILLE_PREFIX",
    "TransactionIdParts",
    "encode_business_id",
    "find_id_collisions",
    "is_perkville_transaction_id",
    "parse_transaction_id",
    "perkamo_origin_id",
    "to_adjustment_transaction_id",
    "to_customer_id",
    "to_opening_transaction_id",
    "to_tier_transaction_id",
    "to_transaction_id",
    "to_void_transaction_id",
]

MAX_ID_LENGTH = 256
PERKVILLE_PREFIX = "perkville:"
PERKAMO_SOURCE_PREFIX = "perkamo:"
ID_STRATEGIES: tuple[IdStrategy, ...] = ("perkville_user", "external_member", "email")
_MAX_BUSINESS_LENGTH = 64
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
_BUSINESS_SAFE = re.compile(r"[A-Za-z0-9._~\-]")
_BUSINESS_ID_PLAIN = re.compile(r"[A-Za-z0-9._~\-]+")
_NAMESPACES = ("src", "txn", "void", "opening", "adjust", "tier")


def _unsafe(text: str) -> bool:
    """Control characters break logs and PostgreSQL (NUL); lone surrogates cannot be sent as UTF-8."""
    return _UNSAFE.search(text) is not None


def encode_business_id(business_id: str | int) -> str:
    """The business id as it appears in transaction ids: percent-encoded outside ``[A-Za-z0-9._~-]``.

    Perkville business ids are integers, for which this is the identity. Raises
    ``MappingConfigError`` for an empty or over-long business id (it is configuration, not data).
    """
    if isinstance(business_id, bool) or not isinstance(business_id, (str, int)):
        raise MappingConfigError("business id must be a string or an integer")
    text = str(business_id).strip() if isinstance(business_id, str) else str(business_id)
    if not text:
        raise MappingConfigError("business id must not be empty")
    if _BUSINESS_ID_PLAIN.fullmatch(text):
        encoded = text
    else:
        encoded = "".join(
            ch if _BUSINESS_SAFE.fullmatch(ch) else "".join(f"%{b:02X}" for b in ch.encode("utf-8", "surrogatepass"))
            for ch in text
        )
    if len(encoded) > _MAX_BUSINESS_LENGTH:
        raise MappingConfigError(f"business id longer than {_MAX_BUSINESS_LENGTH} characters once encoded")
    return encoded


def _key(value: str | int, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise MappingConfigError(f"{what} must be a string or an integer")
    text = str(value)
    if not text:
        raise MappingConfigError(f"{what} must not be empty")
    return text


def _finish(business: str, namespace: str, rest: str) -> str:
    full = f"{PERKVILLE_PREFIX}{business}:{namespace}:{rest}"
    if len(full) <= MAX_ID_LENGTH and not _unsafe(full):
        return full
    digest = hashlib.sha256(full.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{PERKVILLE_PREFIX}{business}:h:{digest}"


def perkamo_origin_id(trans_source_id: str | None) -> str | None:
    """The Perkamo transaction id a write-back row came from, or ``None`` if S is not one.

    ``perkamo:{T}`` round-trips to T only when T could have been written back: non-empty, at most
    256 characters, no control characters, and not starting with ``perkville:`` (events born in
    Perkville are never written back, so such an S is an ordinary source id).
    """
    if trans_source_id is None or not trans_source_id.startswith(PERKAMO_SOURCE_PREFIX):
        return None
    origin = trans_source_id[len(PERKAMO_SOURCE_PREFIX):]
    if not origin or len(origin) > MAX_ID_LENGTH or _unsafe(origin) or origin.startswith(PERKVILLE_PREFIX):
        return None
    return origin


def to_transaction_id(
    business_id: str | int,
    transaction_id: str | int,
    trans_source_id: str | None = None,
) -> str:
    """The Perkamo transaction id of a Perkville ledger row (``src:``/round trip, else ``txn:``).

    Rows with the same ``trans_source_id`` get the same id: Perkville keeps it unique per business,
    so they are the same business action.
    """
    business = encode_business_id(business_id)
    if trans_source_id is not None and trans_source_id.strip():
        origin = perkamo_origin_id(trans_source_id)
        if origin is not None:
            return origin
        return _finish(business, "src", trans_source_id)
    return _finish(business, "txn", _key(transaction_id, "transaction id"))


def to_void_transaction_id(business_id: str | int, transaction_id: str | int) -> str:
    """The id of the reversal event of a voided Perkville row."""
    return _finish(encode_business_id(business_id), "void", _key(transaction_id, "transaction id"))


def to_opening_transaction_id(business_id: str | int, perkville_user_id: str | int) -> str:
    """The id of a member's opening-balance event (balance mode)."""
    return _finish(encode_business_id(business_id), "opening", _key(perkville_user_id, "perkville user id"))


def to_adjustment_transaction_id(business_id: str | int, perkville_user_id: str | int, n: int) -> str:
    """The id of repair adjustment number ``n`` (a non-negative integer) for a member."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise MappingConfigError("adjustment number n must be a non-negative integer")
    user = _key(perkville_user_id, "perkville user id")
    return _finish(encode_business_id(business_id), "adjust", f"{user}:{n}")


def to_tier_transaction_id(business_id: str | int, perkville_user_id: str | int, n: int | None = None) -> str:
    """The id of a member's tier migration: ``tier:{user}`` for the first, ``tier:{user}:{n}`` for a
    later lift to Perkamo level ``n`` (the user encoded like the business, so it holds no colon)."""
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 1):
        raise MappingConfigError("tier level n must be a positive integer")
    user = encode_business_id(_key(perkville_user_id, "perkville user id"))
    return _finish(encode_business_id(business_id), "tier", user if n is None else f"{user}:{n}")


class TransactionIdParts(NamedTuple):
    """The parts of an un-hashed ``perkville:`` id (``n`` only for ``adjust`` and a later
    ``tier``; business encoded)."""

    business: str
    namespace: str
    key: str
    n: int | None = None


def is_perkville_transaction_id(transaction_id: str) -> bool:
    """True for ids this layer derives from Perkville (they are never written back)."""
    return transaction_id.startswith(PERKVILLE_PREFIX)


def parse_transaction_id(transaction_id: str) -> TransactionIdParts | None:
    """Split a ``perkville:`` transaction id into its parts (``None`` for other ids).

    The business is returned encoded; hashed ids come back with namespace ``h`` and the digest as key.
    """
    if not transaction_id.startswith(PERKVILLE_PREFIX):
        return None
    parts = transaction_id[len(PERKVILLE_PREFIX):].split(":", 2)
    if len(parts) != 3 or not parts[0]:
        return None
    business, namespace, rest = parts
    if namespace == "adjust":
        user, sep, number = rest.rpartition(":")
        if not sep or not user or not number.isdigit() or str(int(number)) != number:
            return None
        return TransactionIdParts(business, namespace, user, int(number))
    if namespace == "tier":
        user, sep, number = rest.partition(":")
        if not user or (sep and (not number.isdigit() or str(int(number)) != number or int(number) < 1)):
            return None
        return TransactionIdParts(business, namespace, user, int(number) if sep else None)
    if namespace in _NAMESPACES or (namespace == "h" and re.fullmatch(r"[0-9a-f]{64}", rest)):
        return TransactionIdParts(business, namespace, rest) if rest else None
    return None


# --- customer ids ------------------------------------------------------------------------------


def _default_customer_id(perkville_user_id: str) -> str:
    return f"{PERKVILLE_PREFIX}{perkville_user_id}"


def _candidate_problem(value: str) -> str | None:
    if not value:
        return "it is empty"
    if len(value) > MAX_ID_LENGTH:
        return f"it is longer than {MAX_ID_LENGTH} characters"
    if _unsafe(value):
        return "it contains control characters"
    if value.lower().startswith(PERKVILLE_PREFIX):
        return "it starts with 'perkville:', which is reserved for the default strategy"
    return None


def to_customer_id(
    perkville_user_id: str | int,
    *,
    strategy: IdStrategy = "perkville_user",
    member_id: str | None = None,
    email: str | None = None,
) -> CustomerIdAssignment | MappingIssue:
    """Assign the Perkamo customer id of a Perkville user under ``strategy``.

    ``perkville_user``: ``perkville:{id}``. ``external_member``: the business's member id
    (verbatim), falling back to the default when absent or unusable. ``email``: the primary email,
    lower-cased, falling back likewise; every email assignment carries a warning (addresses change
    and can be shared). Returns a ``MappingIssue`` when not even the default id is usable.
    """
    if strategy not in ID_STRATEGIES:
        raise MappingConfigError(f"unknown id strategy {strategy!r}: use one of {', '.join(ID_STRATEGIES)}")
    user = str(perkville_user_id)
    default = _default_customer_id(user)
    if not user or len(default) > MAX_ID_LENGTH or _unsafe(default):
        return MappingIssue(
            record_id=user or None, field="user_id", record_type="user", raw={"user_id": user},
            reason="perkville user id cannot form a customer id (empty, too long or control characters)",
        )
    issues: list[MappingIssue] = []
    note: str | None = None
    if strategy != "perkville_user":
        field = "member_id" if strategy == "external_member" else "email"
        value = member_id if strategy == "external_member" else email
        if value is not None:
            value = value.strip()
            if strategy == "email":
                value = value.lower()
        problem = "it is missing" if not value else _candidate_problem(value)
        if strategy == "email" and problem is None and value is not None and "@" not in value:
            problem = "it is not an email address"
        if strategy == "email":
            issues.append(MappingIssue(
                record_id=user, field="email", severity="warning", record_type="user",
                reason="id strategy 'email' ties the customer to an address that can change or be "
                       "shared; prefer 'perkville_user' or 'external_member'",
            ))
        if problem is None and value is not None:
            entry = IdMapEntry(customer_id=value, perkville_user_id=user, strategy=strategy,
                               source=strategy, source_value=value)
            return CustomerIdAssignment(customer_id=value, entry=entry, issues=issues)
        note = f"{field} unusable ({problem}); fell back to perkville_user"
        issues.append(MappingIssue(
            record_id=user, field=field, reason=note, severity="warning", record_type="user",
        ))
    entry = IdMapEntry(customer_id=default, perkville_user_id=user, strategy=strategy,
                       source="perkville_user", source_value=user, note=note)
    return CustomerIdAssignment(customer_id=default, entry=entry, issues=issues)


def find_id_collisions(entries: list[IdMapEntry]) -> list[MappingIssue]:
    """Issues for every customer id assigned to more than one Perkville user (first one wins)."""
    owner: dict[str, str] = {}
    issues: list[MappingIssue] = []
    for entry in entries:
        first = owner.setdefault(entry.customer_id, entry.perkville_user_id)
        if first != entry.perkville_user_id:
            issues.append(MappingIssue(
                record_id=entry.perkville_user_id, field=entry.source, record_type="user",
                raw=entry.model_dump(),
                reason=f"customer id {entry.customer_id!r} is already assigned to perkville user {first}",
            ))
    return issues
