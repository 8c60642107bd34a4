"""Perkville ledger rows → Perkamo events (sign from ``classification``, voids, opening balances, repairs)."""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any
from zoneinfo import ZoneInfo

from mapping import _coerce as c
from mapping.errors import MappingConfigError
from mapping.ids import (
    MAX_ID_LENGTH,
    PERKAMO_SOURCE_PREFIX,
    PERKVILLE_PREFIX,
    encode_business_id,
    to_adjustment_transaction_id,
    to_customer_id,
    to_opening_transaction_id,
    to_transaction_id,
    to_void_transaction_id,
)
from mapping.records import (
    CLASSIFICATIONS,
    TRANSACTION_STATUSES,
    PerkvilleConnection,
    PerkvilleTransaction,
    Zone,
    parse_connection,
    parse_transaction,
)
from mapping.types import MappingIssue, MappingResult, PerkamoEvent, Skipped, trusted_event, trusted_result

__all__ = [
    "EVENT_ACTIVITY",
    "EVENT_BALANCE_ADJUSTED",
    "EVENT_BALANCE_MIGRATED",
    "EVENT_EARNED",
    "EVENT_REDEEMED",
    "EVENT_VOIDED",
    "PERKVILLE_EVENTS",
    "RESERVED_CONTEXT_KEYS",
    "to_adjustment_event",
    "to_events",
    "to_events_many",
    "to_opening_balance_event",
]

EVENT_EARNED = "perkville.points_earned"
EVENT_REDEEMED = "perkville.points_redeemed"
EVENT_ACTIVITY = "perkville.activity"
EVENT_VOIDED = "perkville.transaction_voided"
EVENT_BALANCE_MIGRATED = "perkville.balance_migrated"
EVENT_BALANCE_ADJUSTED = "perkville.balance_adjusted"
PERKVILLE_EVENTS = (
    EVENT_EARNED, EVENT_REDEEMED, EVENT_ACTIVITY, EVENT_VOIDED, EVENT_BALANCE_MIGRATED, EVENT_BALANCE_ADJUSTED,
)
# Perkamo rejects these top-level context keys (case-insensitively): they name customer state.
RESERVED_CONTEXT_KEYS = frozenset({"xp", "wallet", "wallets", "rewards", "level", "perks", "achievements"})
_CRITICAL = ("user_id", "classification", "points", "transaction_dt", "transaction_status")


def _number(value: Decimal) -> int | Decimal:
    """Whole numbers as ``int`` (plain JSON); fractional points stay exact as ``Decimal``."""
    return int(value) if value == value.to_integral_value() else value


def _issue(record: PerkvilleTransaction | PerkvilleConnection, record_id: str | None, field: str | None,
           reason: str, kind: str, severity: str = "error") -> MappingIssue:
    return MappingIssue(record_id=record_id, field=field, reason=reason, raw=c.json_safe(record.raw),
                        severity="warning" if severity == "warning" else "error", record_type=kind)


def _same_business(found: str, configured: str | int) -> bool:
    try:
        return encode_business_id(found) == encode_business_id(configured)
    except MappingConfigError:  # the row's id is not even a valid business id
        return False


def _resolve_customer(
    perkville_user_id: str, customer_ids: Mapping[str, str] | None
) -> str | MappingIssue:
    if customer_ids is not None:
        found = customer_ids.get(perkville_user_id)
        if found:
            return found
        return MappingIssue(record_id=None, field="user_id", reason=(
            f"no customer id assigned to perkville user {perkville_user_id}: identify the user first"))
    assigned = to_customer_id(perkville_user_id)
    return assigned if isinstance(assigned, MappingIssue) else assigned.customer_id


def to_events(
    transaction: PerkvilleTransaction | Mapping[str, Any],
    *,
    business_id: str | int,
    timezone: Zone = "UTC",
    customer_ids: Mapping[str, str] | None = None,
) -> MappingResult:
    """Map one Perkville ledger row (raw JSON or parsed) to Perkamo events.

    ``customer_ids`` maps Perkville user ids to customer ids (from the id map); without it the
    default strategy ``perkville:{id}`` is used. Never raises on data: problems come back as issues.
    """
    encoded = encode_business_id(business_id)  # a bad parameter fails before any data is read
    zone = c.resolve_timezone(timezone)
    if type(transaction) is dict:
        fast = _fast_events(transaction, business_id, encoded, zone, customer_ids)
        if fast is not None:
            return fast
    return _reference_events(transaction, business_id, zone, customer_ids)


def to_events_many(
    transactions: Sequence[Mapping[str, Any]],
    *,
    business_id: str | int,
    timezone: Zone = "UTC",
    customer_ids: Mapping[str, str] | None = None,
) -> list[MappingResult]:
    """``to_events`` of every row, in order, with the per-call set-up (zone, business) done once."""
    encoded = encode_business_id(business_id)
    zone = c.resolve_timezone(timezone)
    fast = _fast_mapper(business_id, encoded, zone, customer_ids)
    out: list[MappingResult] = []
    append = out.append
    for raw in transactions:
        result = fast(raw) if type(raw) is dict else None
        append(result if result is not None else _reference_events(raw, business_id, zone, customer_ids))
    return out


def _reference_events(
    transaction: PerkvilleTransaction | Mapping[str, Any],
    business_id: str | int,
    zone: tzinfo,
    customer_ids: Mapping[str, str] | None,
) -> MappingResult:
    """The general (lenient, issue-reporting) path of ``to_events``; the fast path must equal it."""
    if isinstance(transaction, PerkvilleTransaction):
        record: PerkvilleTransaction | None = transaction
        issues: list[MappingIssue] = list(transaction.issues)
    else:
        parsed = parse_transaction(transaction, timezone=zone)
        record, issues = parsed.record, list(parsed.issues)
    if record is None:
        return MappingResult(issues=issues)
    rid = record.transaction_id
    if record.transaction_status == "VOID_REF":
        # Nothing of a VOID_REF row is used (the reversal comes from the voided row), so its other
        # fields cannot make it an error.
        skip = Skipped(record_id=rid, record_type="transaction", raw=c.json_safe(record.raw),
                       reason="VOID_REF row: the reversal is derived from the voided row itself")
        return MappingResult(skipped=[skip])
    seen = {issue.field for issue in issues}
    for field in _CRITICAL:
        if getattr(record, field) is None and field not in seen:
            issues.append(_issue(record, rid, field, f"missing {field}", "transaction"))
    if record.classification is not None and record.classification not in CLASSIFICATIONS:
        issues.append(_issue(record, rid, "classification", (
            f"unknown classification {record.classification!r} (expected EARN or REDEEM)"), "transaction"))
    if record.transaction_status is not None and record.transaction_status not in TRANSACTION_STATUSES:
        issues.append(_issue(record, rid, "transaction_status", (
            f"unknown transaction_status {record.transaction_status!r} (expected ACTIVE, VOID or VOID_REF)"),
            "transaction"))
    if record.quantity is not None and record.quantity < 0:
        issues.append(_issue(record, rid, "quantity", f"negative quantity {record.quantity}", "transaction"))
    if record.business_id is not None and not _same_business(record.business_id, business_id):
        issues.append(_issue(record, rid, "business", (
            f"row belongs to business {record.business_id}, not to {business_id}"), "transaction"))
    if any(issue.severity == "error" for issue in issues):
        return MappingResult(issues=issues)
    assert record.user_id is not None and record.points is not None and record.transaction_dt is not None
    customer = _resolve_customer(record.user_id, customer_ids)
    if isinstance(customer, MappingIssue):
        issues.append(_issue(record, rid, "user_id", customer.reason, "transaction"))
        return MappingResult(issues=issues)

    quantity = record.quantity if record.quantity is not None else Decimal(1)
    amount = abs(record.points) * quantity
    if amount != amount.to_integral_value():
        issues.append(_issue(record, rid, "points", (
            f"fractional amount {amount}: the shipped migration program keeps whole points "
            "(raise the wallet precision to keep fractions)"), "transaction", "warning"))
    if amount == 0:
        name = EVENT_ACTIVITY
    else:
        name = EVENT_EARNED if record.classification == "EARN" else EVENT_REDEEMED
    context: dict[str, Any] = {
        "source": "perkville",
        "classification": record.classification,
        "points": _number(record.points),
        "quantity": _number(quantity),
        "amount": _number(amount),
        "perkville_transaction_id": record.transaction_id,
    }
    optional = {
        "perk_id": record.perk_id,
        "perk_title": record.title,
        "location_id": record.location_id,
        "perkville_user_id": record.user_id,
        "voucher_id": record.voucher_id,
        "trans_source_id": record.trans_source_id,
    }
    context.update({key: value for key, value in optional.items() if value is not None})
    transaction_id = to_transaction_id(business_id, record.transaction_id, record.trans_source_id)
    events = [PerkamoEvent(user_id=customer, event=name, transaction_id=transaction_id,
                           context=context, occurred_at=record.transaction_dt)]
    if record.transaction_status == "VOID":
        # The original's context does not depend on the row's status, so it is identical whether
        # the row was first seen active or already void; the reversal names what it undoes.
        reversal = dict(context, transaction_status="VOID", voided_event=name,
                        voided_transaction_id=transaction_id)
        events.append(PerkamoEvent(
            user_id=customer, event=EVENT_VOIDED,
            transaction_id=to_void_transaction_id(business_id, record.transaction_id),
            context=reversal, occurred_at=record.transaction_dt,
        ))
    return MappingResult(events=events, issues=issues)


# --- fast path ----------------------------------------------------------------------------------
# Rows of the usual shape (URI or integer ids, exact enum spellings, integer points, naive
# ``YYYY-MM-DD HH:MM:SS`` datetimes, ACTIVE, VOID or VOID_REF) are mapped here with plain dict
# access. Anything else — or anything that would raise an issue — returns ``None`` and goes through
# ``_reference_events``; property tests hold the two paths equal. One mapper serves one call of
# ``to_events_many``: relation URIs repeat across rows (one business, few perks and locations, a
# member's many rows), so each distinct string is parsed once per call.

_URI_PREFIXES = {
    "businesses": "/v2/businesses/", "users": "/v2/users/", "connections": "/v2/connections/",
    "perks": "/v2/perks/", "locations": "/v2/locations/", "vouchers": "/v2/vouchers/",
}
_EVENT_OF = {"EARN": EVENT_EARNED, "REDEEM": EVENT_REDEEMED}
_MAX_INT_POINTS = int(c.MAX_POINTS)
_ID_LIMIT = 10**30
_CACHE_LIMIT = 1 << 16
"""Distinct strings remembered per relation field and call (a hostile page cannot grow it further)."""
_VOID_REF_REASON = "VOID_REF row: the reversal is derived from the voided row itself"
_NAIVE_DATETIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}[ T](?:[01][0-9]|2[0-3]):[0-9]{2}:[0-9]{2}")
_naive_match = _NAIVE_DATETIME.fullmatch
_from_iso = datetime.fromisoformat
_FIXED_OFFSET = type(UTC)  # datetime.timezone (the name ``timezone`` is a parameter here)
_BAD = object()
"""Marks a value the fast path does not read (the reference path decides)."""


def _uri_id(value: str, prefix: str) -> Any:
    """The digits of ``{prefix}{digits}/``, else ``_BAD``."""
    if value.startswith(prefix) and value[-1] == "/":
        middle = value[len(prefix):-1]
        if middle.isascii() and middle.isdigit():
            return middle
    return _BAD


def _fast_id(raw: dict[str, Any], key: str, alternate: str | None, resource: str) -> Any:
    """A relation id (``None`` when absent), or ``_BAD`` for anything but ``/v2/{resource}/{digits}/`` or an int."""
    value = raw.get(key)
    if type(value) is str:
        return _uri_id(value, _URI_PREFIXES[resource])
    return _other_id(raw, value, alternate)


def _other_id(raw: dict[str, Any], value: Any, alternate: str | None) -> Any:
    """``_fast_id`` of a value that is not a ``str``: ``None`` when absent, an int in range, else ``_BAD``."""
    if value is None:
        return _BAD if alternate is not None and alternate in raw else None
    if type(value) is int and -_ID_LIMIT < value < _ID_LIMIT:
        return str(value)
    return _BAD


class _IdCache(dict[str, Any]):
    """Raw relation string → ``_uri_id`` of it, computed on first use."""

    __slots__ = ("prefix",)

    def __init__(self, resource: str) -> None:
        super().__init__()
        self.prefix = _URI_PREFIXES[resource]

    def __missing__(self, value: str) -> Any:
        parsed = _uri_id(value, self.prefix)
        if len(self) < _CACHE_LIMIT:
            self[value] = parsed
        return parsed


def _fast_datetime(value: Any, zone: tzinfo) -> datetime | None:
    """A naive ``YYYY-MM-DD[ T]HH:MM:SS`` string read in ``zone`` as UTC, else ``None``."""
    if type(value) is not str or _naive_match(value) is None:
        return None
    try:
        if zone is UTC:
            return _from_iso(value + "+00:00")  # the same value as .replace(tzinfo=UTC), ~10x cheaper
        moment = _from_iso(value)
    except ValueError:  # an impossible date such as 2024-02-30
        return None
    try:
        # For a zone of known behaviour, what astimezone(UTC) computes for a fold-0 wall time,
        # without the costly replace().
        offset = zone.utcoffset(moment) if type(zone) is ZoneInfo or type(zone) is _FIXED_OFFSET else None
        if offset is None:
            return moment.replace(tzinfo=zone).astimezone(UTC)
        utc = moment - offset
        return datetime(utc.year, utc.month, utc.day, utc.hour, utc.minute, utc.second, utc.microsecond, UTC)
    except (OverflowError, ValueError):
        return None


def _fast_events(
    raw: dict[str, Any],
    business_id: str | int,
    encoded: str,
    zone: tzinfo,
    customer_ids: Mapping[str, str] | None,
) -> MappingResult | None:
    """The result of one usual-shape row, or ``None`` to use the reference path."""
    return _fast_mapper(business_id, encoded, zone, customer_ids)(raw)


def _fast_mapper(
    business_id: str | int,
    encoded: str,
    zone: tzinfo,
    customer_ids: Mapping[str, str] | None,
) -> Callable[[dict[str, Any]], MappingResult | None]:
    """The fast path for one call: a function of a row, with per-call caches of parsed relation URIs."""
    businesses = _IdCache("businesses")
    users = _IdCache("users")
    perks = _IdCache("perks")
    locations = _IdCache("locations")
    vouchers = _IdCache("vouchers")
    connections = _IdCache("connections")
    customers: dict[str, Any] = {}  # perkville user id → customer id ("" when the map has none)
    txn_prefix = f"{PERKVILLE_PREFIX}{encoded}:txn:"
    void_prefix = f"{PERKVILLE_PREFIX}{encoded}:void:"
    src_prefix = f"{PERKVILLE_PREFIX}{encoded}:src:"

    def events(raw: dict[str, Any]) -> MappingResult | None:
        get = raw.get
        rid = get("transaction_id")
        if type(rid) is int and -_ID_LIMIT < rid < _ID_LIMIT:
            rid = str(rid)
        elif not (type(rid) is str and rid and rid.isascii() and rid.isdigit()):
            return None
        status = get("transaction_status")
        if type(status) is not str:
            return None
        if status == "VOID_REF":
            # As in the reference path: nothing else of the row is read, so nothing else can fail.
            return MappingResult(skipped=[Skipped(record_id=rid, record_type="transaction",
                                                  raw=c.json_safe(raw), reason=_VOID_REF_REASON)])
        if status != "ACTIVE" and status != "VOID":
            return None
        classification = get("classification")
        points = get("points")
        quantity = get("quantity")
        if (
            type(classification) is not str or classification not in _EVENT_OF
            or type(points) is not int or not -_MAX_INT_POINTS <= points <= _MAX_INT_POINTS
        ):
            return None
        if quantity is None:
            if "quantity" in raw:
                return None
            quantity = 1
        elif type(quantity) is not int or not 0 <= quantity <= _MAX_INT_POINTS:
            return None
        occurred = _fast_datetime(get("transaction_dt"), zone)
        if occurred is None:
            return None
        last_mod = get("last_mod_dt")
        if last_mod is not None and _fast_datetime(last_mod, zone) is None:
            return None
        value = get("business")
        business = businesses[value] if type(value) is str else _other_id(raw, value, "business_id")
        value = get("user")
        user = users[value] if type(value) is str else _other_id(raw, value, "user_id")
        value = get("perk")
        perk = perks[value] if type(value) is str else _other_id(raw, value, "perk_id")
        value = get("location")
        location = locations[value] if type(value) is str else _other_id(raw, value, "location_id")
        value = get("voucher")
        voucher = vouchers[value] if type(value) is str else _other_id(raw, value, None)
        value = get("connection")
        connection = connections[value] if type(value) is str else _other_id(raw, value, None)
        if (
            user is None or user is _BAD or business is _BAD or perk is _BAD or location is _BAD
            or voucher is _BAD or connection is _BAD
        ):
            return None
        if business is not None and business != encoded:
            return None
        title = get("title")
        if title is not None:
            if type(title) is not str:
                return None
            title = title.strip() or None
        source = get("trans_source_id")
        if source is not None:
            if type(source) is not str:
                return None
            if not source.strip():
                source = None
        customer = customers.get(user)
        if customer is None:
            customer = (customer_ids.get(user) or "") if customer_ids is not None else f"perkville:{user}"
            if len(customers) < _CACHE_LIMIT:
                customers[user] = customer
        if not customer:
            return None
        amount = abs(points) * quantity
        name = EVENT_ACTIVITY if amount == 0 else _EVENT_OF[classification]
        context: dict[str, Any] = {
            "source": "perkville",
            "classification": classification,
            "points": points,
            "quantity": quantity,
            "amount": amount,
            "perkville_transaction_id": rid,
        }
        if perk is not None:
            context["perk_id"] = perk
        if title is not None:
            context["perk_title"] = title
        if location is not None:
            context["location_id"] = location
        context["perkville_user_id"] = user
        if voucher is not None:
            context["voucher_id"] = voucher
        # The ids below are what ``to_transaction_id`` / ``to_void_transaction_id`` give for a short
        # id (the usual case): the row id is digits, and a printable source holds none of the
        # characters that make ``ids`` hash an id. Anything else is left to those functions.
        if source is not None:
            context["trans_source_id"] = source
            transaction_id = src_prefix + source
            if (
                len(transaction_id) > MAX_ID_LENGTH or not source.isprintable()
                or source.startswith(PERKAMO_SOURCE_PREFIX)
            ):
                transaction_id = to_transaction_id(business_id, rid, source)
        else:
            transaction_id = txn_prefix + rid
            if len(transaction_id) > MAX_ID_LENGTH:
                transaction_id = to_transaction_id(business_id, rid)
        first = trusted_event(customer, name, transaction_id, context, occurred)
        if status == "ACTIVE":
            return trusted_result([first])
        reversal = dict(context, transaction_status="VOID", voided_event=name,
                        voided_transaction_id=transaction_id)
        void_id = void_prefix + rid
        if len(void_id) > MAX_ID_LENGTH:
            void_id = to_void_transaction_id(business_id, rid)
        return trusted_result([first, trusted_event(customer, EVENT_VOIDED, void_id, reversal, occurred)])

    return events


def _aware_utc(moment: datetime, name: str) -> datetime:
    if moment.tzinfo is None or moment.utcoffset() is None:
        raise MappingConfigError(f"{name} must be timezone-aware")
    return moment.astimezone(UTC)


def to_opening_balance_event(
    connection: PerkvilleConnection | Mapping[str, Any],
    *,
    business_id: str | int,
    cutover_at: datetime,
    timezone: Zone = "UTC",
    customer_ids: Mapping[str, str] | None = None,
) -> MappingResult:
    """The ``perkville.balance_migrated`` event carrying a member's ``point_balance`` (balance mode).

    ``context.amount`` is the signed balance; the event's id is ``opening:{perkville_user_id}``, so
    migrating the same member twice changes nothing.
    """
    encode_business_id(business_id)
    moment = _aware_utc(cutover_at, "cutover_at")
    if isinstance(connection, PerkvilleConnection):
        record: PerkvilleConnection | None = connection
        issues: list[MappingIssue] = list(connection.issues)
    else:
        parsed = parse_connection(connection, timezone=timezone)
        record, issues = parsed.record, list(parsed.issues)
    if record is None:
        return MappingResult(issues=issues)
    rid = record.connection_id or record.user_id
    if record.business_id is not None and not _same_business(record.business_id, business_id):
        issues.append(_issue(record, rid, "business", (
            f"connection belongs to business {record.business_id}, not to {business_id}"), "connection"))
        return MappingResult(issues=issues)
    if record.point_balance is None:
        if "point_balance" not in {issue.field for issue in issues}:
            issues.append(_issue(record, rid, "point_balance", "missing point_balance", "connection"))
        else:
            issues = [i.model_copy(update={"severity": "error"}) if i.field == "point_balance" else i for i in issues]
        return MappingResult(issues=issues)
    customer = _resolve_customer(record.user_id, customer_ids)
    if isinstance(customer, MappingIssue):
        issues.append(_issue(record, rid, "user_id", customer.reason, "connection"))
        return MappingResult(issues=issues)
    context: dict[str, Any] = {
        "source": "perkville",
        "amount": _number(record.point_balance),
        "perkville_user_id": record.user_id,
    }
    if record.connection_id is not None:
        context["perkville_connection_id"] = record.connection_id
    if record.lifetime_earned_points is not None:
        context["lifetime_earned_points"] = _number(record.lifetime_earned_points)
    event = PerkamoEvent(
        user_id=customer, event=EVENT_BALANCE_MIGRATED, context=context, occurred_at=moment,
        transaction_id=to_opening_transaction_id(business_id, record.user_id),
    )
    return MappingResult(events=[event], issues=issues)


def to_adjustment_event(
    *,
    business_id: str | int,
    perkville_user_id: str | int,
    n: int,
    amount: Decimal | int,
    occurred_at: datetime,
    customer_id: str | None = None,
    reason: str | None = None,
) -> MappingResult:
    """Repair adjustment number ``n``: a ``perkville.balance_adjusted`` event moving ``amount`` (signed).

    ``amount`` is Perkville's balance minus Perkamo's; zero is skipped (nothing to repair).
    """
    if isinstance(amount, bool) or not isinstance(amount, (int, Decimal)) or not Decimal(amount).is_finite():
        raise MappingConfigError("adjustment amount must be a finite Decimal or int")
    moment = _aware_utc(occurred_at, "occurred_at")
    user = str(perkville_user_id)
    transaction_id = to_adjustment_transaction_id(business_id, user, n)
    if amount == 0:
        return MappingResult(skipped=[Skipped(record_id=user, record_type="adjustment",
                                              reason="balances already match: nothing to adjust")])
    if customer_id is None:
        assigned = to_customer_id(user)
        if isinstance(assigned, MappingIssue):
            return MappingResult(issues=[assigned])
        customer_id = assigned.customer_id
    context: dict[str, Any] = {"source": "perkville", "amount": _number(Decimal(amount)),
                               "perkville_user_id": user, "adjustment": n}
    if reason:
        context["reason"] = reason
    event = PerkamoEvent(user_id=customer_id, event=EVENT_BALANCE_ADJUSTED, transaction_id=transaction_id,
                         context=context, occurred_at=moment)
    return MappingResult(events=[event])
