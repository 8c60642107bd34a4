"""Perkville ledger rows → Perkamo events (sign from ``classification``, voids, opening balances, repairs)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime, tzinfo
from decimal import Decimal
from typing import Any

from mapping import _coerce as c
from mapping.errors import MappingConfigError
from mapping.ids import (
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
    out: list[MappingResult] = []
    append = out.append
    for raw in transactions:
        fast = (
            _fast_events(raw, business_id, encoded, zone, customer_ids) if type(raw) is dict else None
        )
        append(fast if fast is not None else _reference_events(raw, business_id, zone, customer_ids))
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
# ``YYYY-MM-DD HH:MM:SS`` datetimes, ACTIVE or VOID) are mapped here with plain dict access.
# Anything else — or anything that would raise an issue or a skip — returns ``None`` and goes
# through ``_reference_events``; a property test holds the two paths equal.

_URI_PREFIXES = {
    "businesses": "/v2/businesses/", "users": "/v2/users/", "connections": "/v2/connections/",
    "perks": "/v2/perks/", "locations": "/v2/locations/", "vouchers": "/v2/vouchers/",
}
_FAST_STATUSES = frozenset({"ACTIVE", "VOID"})
_EVENT_OF = {"EARN": EVENT_EARNED, "REDEEM": EVENT_REDEEMED}
_MAX_INT_POINTS = int(c.MAX_POINTS)
_BAD = object()
"""Marks a value the fast path does not read (the reference path decides)."""


def _fast_id(raw: dict[str, Any], key: str, alternate: str | None, resource: str) -> Any:
    """A relation id (``None`` when absent), or ``_BAD`` for anything but ``/v2/{resource}/{digits}/`` or an int."""
    value = raw.get(key)
    if value is None:
        if alternate is not None and alternate in raw:
            return _BAD
        return None
    kind = type(value)
    if kind is str:
        prefix = _URI_PREFIXES[resource]
        if value.startswith(prefix) and value[-1] == "/":
            middle = value[len(prefix):-1]
            if middle.isascii() and middle.isdigit():
                return middle
        return _BAD
    if kind is int and -10**30 < value < 10**30:
        return str(value)
    return _BAD


def _fast_datetime(value: Any, zone: tzinfo) -> datetime | None:
    """A naive ``YYYY-MM-DD[ T]HH:MM:SS`` string read in ``zone`` as UTC, else ``None``."""
    if (
        type(value) is not str or len(value) != 19 or not value.isascii() or value[4] != "-"
        or value[7] != "-" or value[10] not in " T" or value[13] != ":" or value[16] != ":"
        or not (value[:4] + value[5:7] + value[8:10] + value[11:13] + value[14:16] + value[17:]).isdigit()
        or value[11:13] > "23"
    ):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    if zone is UTC:
        return moment.replace(tzinfo=UTC)
    try:
        return moment.replace(tzinfo=zone).astimezone(UTC)
    except (OverflowError, ValueError):
        return None


def _fast_events(
    raw: dict[str, Any],
    business_id: str | int,
    encoded: str,
    zone: tzinfo,
    customer_ids: Mapping[str, str] | None,
) -> MappingResult | None:
    """The events of a clean, usual-shape row, or ``None`` to use the reference path."""
    rid = raw.get("transaction_id")
    if type(rid) is int and -10**30 < rid < 10**30:
        rid = str(rid)
    elif not (type(rid) is str and rid and rid.isascii() and rid.isdigit()):
        return None
    status = raw.get("transaction_status")
    classification = raw.get("classification")
    points = raw.get("points")
    quantity = raw.get("quantity", None)
    if (
        type(status) is not str or status not in _FAST_STATUSES
        or type(classification) is not str or classification not in _EVENT_OF
        or type(points) is not int or not -_MAX_INT_POINTS <= points <= _MAX_INT_POINTS
    ):
        return None
    if quantity is None:
        if "quantity" in raw:
            return None
        quantity = 1
    elif type(quantity) is not int or not 0 <= quantity <= _MAX_INT_POINTS:
        return None
    occurred = _fast_datetime(raw.get("transaction_dt"), zone)
    if occurred is None:
        return None
    last_mod = raw.get("last_mod_dt")
    if last_mod is not None and _fast_datetime(last_mod, zone) is None:
        return None
    business = _fast_id(raw, "business", "business_id", "businesses")
    user = _fast_id(raw, "user", "user_id", "users")
    perk = _fast_id(raw, "perk", "perk_id", "perks")
    location = _fast_id(raw, "location", "location_id", "locations")
    voucher = _fast_id(raw, "voucher", None, "vouchers")
    connection = _fast_id(raw, "connection", None, "connections")
    if (
        user is None or user is _BAD or business is _BAD or perk is _BAD or location is _BAD
        or voucher is _BAD or connection is _BAD
    ):
        return None
    if business is not None and business != encoded:
        return None
    title = raw.get("title")
    if title is not None:
        if type(title) is not str:
            return None
        title = title.strip() or None
    source = raw.get("trans_source_id")
    if source is not None:
        if type(source) is not str:
            return None
        if not source.strip():
            source = None
    if customer_ids is not None:
        customer = customer_ids.get(user)
        if not customer:
            return None
    else:
        customer = f"perkville:{user}"
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
    if source is not None:
        context["trans_source_id"] = source
        transaction_id = to_transaction_id(business_id, rid, source)
    else:
        transaction_id = f"perkville:{encoded}:txn:{rid}"
        if len(transaction_id) > 256:
            return None
    events = [trusted_event(customer, name, transaction_id, context, occurred)]
    if status == "VOID":
        reversal = dict(context, transaction_status="VOID", voided_event=name,
                        voided_transaction_id=transaction_id)
        events.append(trusted_event(
            customer, EVENT_VOIDED, to_void_transaction_id(business_id, rid), reversal, occurred
        ))
    return trusted_result(events)


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
