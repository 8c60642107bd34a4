"""Typed Perkville records parsed leniently from raw Tastypie JSON; bad input becomes issues."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import date, datetime, tzinfo
from decimal import Decimal
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from mapping import _coerce as c
from mapping.types import MappingIssue, Severity

__all__ = [
    "CLASSIFICATIONS",
    "TRANSACTION_STATUSES",
    "Parsed",
    "PerkvilleBusiness",
    "PerkvilleConnection",
    "PerkvilleExternalMember",
    "PerkvilleLocation",
    "PerkvillePerk",
    "PerkvilleRecord",
    "PerkvilleTransaction",
    "PerkvilleUser",
    "parse_business",
    "parse_connection",
    "parse_external_member",
    "parse_location",
    "parse_perk",
    "parse_transaction",
    "parse_user",
]

CLASSIFICATIONS = frozenset({"EARN", "REDEEM"})
TRANSACTION_STATUSES = frozenset({"ACTIVE", "VOID", "VOID_REF"})
Zone = str | tzinfo


class PerkvilleRecord(BaseModel):
    """Common part of every record: the raw JSON it came from and the fields this layer does not know."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True)

    raw: dict[str, Any] = Field(default_factory=dict, repr=False)
    extra: dict[str, Any] = Field(default_factory=dict, repr=False)
    issues: list[MappingIssue] = Field(default_factory=list, repr=False)
    """What parsing found wrong (also in ``Parsed.issues``); mapping a record reports them again."""


class PerkvilleBusiness(PerkvilleRecord):
    """A Perkville business (the loyalty program's owner)."""

    business_id: str
    name: str | None = None
    slug: str | None = None


class PerkvilleLocation(PerkvilleRecord):
    """A business location; ``external_location_id`` links it to a POS or club system."""

    location_id: str
    business_id: str | None = None
    name: str | None = None
    external_location_id: str | None = None
    timezone: str | None = None


class PerkvillePerk(PerkvilleRecord):
    """An earning (``EARN``) or redeeming (``REDEEM``) rule."""

    perk_id: str
    business_id: str | None = None
    title: str | None = None
    description: str | None = None
    classification: str | None = None
    type: str | None = None
    status: str | None = None
    points: Decimal | None = None
    from_date: datetime | date | None = None
    to_date: datetime | date | None = None
    eligible_at_all_locations: bool | None = None
    limit_to_once_per_calendar_day: bool | None = None
    """Unconfirmed on a perk: the docs name it as a flag of the award call (``mapping.perk_limits``)."""
    redemption_limit_count: int | None = None
    redemption_limit_interval: int | str | None = None
    """An integer code (K1 types it as an int) or an upper-case name such as ``DAY`` (the sandbox)."""
    redemption_limit_interval_count: int | None = None


class PerkvilleUser(PerkvilleRecord):
    """A Perkville person; ``primary_email`` is the first email (or the one flagged primary)."""

    user_id: str
    first_name: str | None = None
    last_name: str | None = None
    phone_number: str | None = None
    birthday: date | None = None
    emails: list[str] = Field(default_factory=list)
    last_mod_dt: datetime | None = None

    @property
    def primary_email(self) -> str | None:
        """The primary email address, if any."""
        return self.emails[0] if self.emails else None


class PerkvilleConnection(PerkvilleRecord):
    """A user's membership of one business's program: status, balance, level, home location."""

    connection_id: str | None = None
    business_id: str | None = None
    user_id: str
    status: str | None = None
    point_balance: Decimal | None = None
    lifetime_earned_points: Decimal | None = None
    level: str | None = None
    home_location_id: str | None = None
    last_visited_location_id: str | None = None
    last_transaction_dt: datetime | None = None
    last_mod_dt: datetime | None = None
    external_membership_status: str | None = None
    external_membership_type: str | None = None
    external_join_dt: date | None = None
    external_cancel_dt: date | None = None


class PerkvilleTransaction(PerkvilleRecord):
    """One row of the points ledger; critical fields are ``None`` when missing or unreadable."""

    transaction_id: str
    business_id: str | None = None
    user_id: str | None = None
    connection_id: str | None = None
    perk_id: str | None = None
    location_id: str | None = None
    title: str | None = None
    classification: str | None = None
    points: Decimal | None = None
    quantity: Decimal | None = None
    transaction_dt: datetime | None = None
    transaction_status: str | None = None
    voucher_id: str | None = None
    trans_source_id: str | None = None
    last_mod_dt: datetime | None = None


class PerkvilleExternalMember(PerkvilleRecord):
    """A membership record from the business's own system (POS, club software)."""

    member_id: str
    system_id: str | None = None
    business_id: str | None = None
    user_id: str | None = None
    email: str | None = None
    external_home_location_id: str | None = None
    membership_type: str | None = None
    membership_status: str | None = None
    join_dt: date | None = None
    cancel_dt: date | None = None


R = TypeVar("R", bound=PerkvilleRecord)


class Parsed(BaseModel, Generic[R]):
    """A parsed record (``None`` when it is unusable) and the issues found while reading it."""

    model_config = ConfigDict(frozen=True)

    record: R | None
    issues: list[MappingIssue] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when a record was produced and no issue is an error."""
        return self.record is not None and not any(i.severity == "error" for i in self.issues)


# --- field specifications ----------------------------------------------------------------------

Reader = Callable[[Any, tzinfo], Any]


@dataclass(frozen=True)
class _Field:
    name: str
    keys: tuple[str, ...]
    read: Reader
    severity: Severity = "warning"
    required: bool = False  # missing is an issue of ``severity``


def _id(resource: str) -> Reader:
    return lambda value, _zone: c.to_id(value, resource)


def _text(value: Any, _zone: tzinfo) -> str:
    return c.to_text(value)


def _enum(value: Any, _zone: tzinfo) -> str:
    return c.to_enum(value)


def _interval(value: Any, _zone: tzinfo) -> int | str:
    """A number (or numeric text) is an integer code, anything else an upper-case name."""
    if isinstance(value, (bool, list, dict)):
        raise c.Invalid(f"expected an integer code or a name, got {type(value).__name__}")
    text = value.strip() if isinstance(value, str) else None
    if text is None or (text.isascii() and text.lstrip("+-").isdigit()):
        number = c.to_decimal(value)
        if number != number.to_integral_value():
            raise c.Invalid(f"expected an integer code or a name, got {number}")
        return int(number)
    return c.to_enum(value)


def _decimal(value: Any, _zone: tzinfo) -> Decimal:
    return c.to_decimal(value)


def _bool(value: Any, _zone: tzinfo) -> bool:
    return c.to_bool(value)


def _count(value: Any, _zone: tzinfo) -> int:
    number = c.to_decimal(value)
    if number != number.to_integral_value() or number < 0:
        raise c.Invalid(f"expected a whole non-negative number, got {number}")
    return int(number)


def _datetime(value: Any, zone: tzinfo) -> datetime:
    return c.to_datetime(value, zone)


def _date(value: Any, _zone: tzinfo) -> date:
    return c.to_date(value)


def _date_or_datetime(value: Any, zone: tzinfo) -> date | datetime:
    if isinstance(value, str) and len(value.strip()) <= 10:
        return c.to_date(value)
    return c.to_datetime(value, zone)


def _level(value: Any, _zone: tzinfo) -> str:
    if isinstance(value, dict):
        for key in ("name", "title", "level"):
            if not c.is_missing(value.get(key)):
                return c.to_text(value[key])
        raise c.Invalid("level object without a name")
    return c.to_text(value)


def _verbatim(value: Any, _zone: tzinfo) -> str:
    """Source ids are kept exactly as written (surrounding spaces included): they are compared."""
    if isinstance(value, str):
        return value
    return c.to_text(value)


def _emails(value: Any, _zone: tzinfo) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list):
        raise c.Invalid(f"expected a list of emails, got {type(value).__name__}")
    found: list[tuple[bool, str]] = []
    for item in value:
        primary = False
        if isinstance(item, dict):
            primary = item.get("primary") is True or item.get("is_primary") is True
            item = item.get("email")
        if isinstance(item, str) and item.strip():
            found.append((primary, item.strip()))
    # Stable: the flagged primary first, then the order Perkville gave.
    return [email for _, email in sorted(found, key=lambda pair: not pair[0])]


_SPECS: dict[str, tuple[_Field, ...]] = {
    "business": (
        _Field("name", ("name",), _text),
        _Field("slug", ("slug",), _text),
    ),
    "location": (
        _Field("business_id", ("business", "business_id"), _id("businesses")),
        _Field("name", ("name",), _text),
        _Field("external_location_id", ("external_location_id",), _text),
        _Field("timezone", ("timezone", "time_zone"), _text),
    ),
    "perk": (
        _Field("business_id", ("business", "business_id"), _id("businesses")),
        _Field("title", ("title",), _text),
        _Field("description", ("description",), _text),
        _Field("classification", ("classification",), _enum),
        _Field("type", ("type",), _enum),
        _Field("status", ("status",), _enum),
        _Field("points", ("points",), _decimal),
        _Field("from_date", ("from_date",), _date_or_datetime),
        _Field("to_date", ("to_date",), _date_or_datetime),
        _Field("eligible_at_all_locations", ("eligible_at_all_locations",), _bool),
        _Field("limit_to_once_per_calendar_day", ("limit_to_once_per_calendar_day",), _bool),
        _Field("redemption_limit_count", ("redemption_limit_count",), _count),
        _Field("redemption_limit_interval", ("redemption_limit_interval",), _interval),
        _Field("redemption_limit_interval_count", ("redemption_limit_interval_count",), _count),
    ),
    "user": (
        _Field("first_name", ("first_name",), _text),
        _Field("last_name", ("last_name",), _text),
        _Field("phone_number", ("phone_number", "phone"), _text),
        _Field("birthday", ("birthday",), _date),
        _Field("emails", ("emails", "email"), _emails),
        _Field("last_mod_dt", ("last_mod_dt",), _datetime),
    ),
    "connection": (
        _Field("connection_id", ("connection_id", "id", "resource_uri"), _id("connections")),
        _Field("business_id", ("business", "business_id"), _id("businesses")),
        _Field("user_id", ("user", "user_id"), _id("users"), "error", required=True),
        _Field("status", ("status",), _enum),
        _Field("point_balance", ("point_balance",), _decimal),
        _Field("lifetime_earned_points", ("lifetime_earned_points",), _decimal),
        _Field("level", ("level",), _level),
        _Field("home_location_id", ("home_location",), _id("locations")),
        _Field("last_visited_location_id", ("last_visited_location",), _id("locations")),
        _Field("last_transaction_dt", ("last_transaction_dt",), _datetime),
        _Field("last_mod_dt", ("last_mod_dt",), _datetime),
        _Field("external_membership_status", ("external_membership_status",), _enum),
        _Field("external_membership_type", ("external_membership_type",), _text),
        _Field("external_join_dt", ("external_join_dt",), _date),
        _Field("external_cancel_dt", ("external_cancel_dt",), _date),
    ),
    "transaction": (
        _Field("business_id", ("business", "business_id"), _id("businesses")),
        _Field("user_id", ("user", "user_id"), _id("users"), "error", required=True),
        _Field("connection_id", ("connection",), _id("connections")),
        _Field("perk_id", ("perk", "perk_id"), _id("perks")),
        _Field("location_id", ("location", "location_id"), _id("locations")),
        _Field("title", ("title",), _text),
        _Field("classification", ("classification",), _enum, "error", required=True),
        _Field("points", ("points",), _decimal, "error", required=True),
        _Field("quantity", ("quantity",), _decimal, "error"),
        _Field("transaction_dt", ("transaction_dt",), _datetime, "error", required=True),
        _Field("transaction_status", ("transaction_status", "status"), _enum, "error", required=True),
        _Field("voucher_id", ("voucher",), _id("vouchers")),
        _Field("trans_source_id", ("trans_source_id",), _verbatim, "error"),  # decides the id
        _Field("last_mod_dt", ("last_mod_dt",), _datetime),
    ),
    "external_member": (
        _Field("system_id", ("system_id", "external_system_id"), _text),
        _Field("business_id", ("business", "business_id"), _id("businesses")),
        _Field("user_id", ("user", "user_id"), _id("users")),
        _Field("email", ("email",), _text),
        _Field("external_home_location_id", ("external_home_location_id", "home_location"), _text),
        _Field("membership_type", ("membership_type", "external_membership_type"), _text),
        _Field("membership_status", ("membership_status", "external_membership_status"), _enum),
        _Field("join_dt", ("join_dt", "external_join_dt"), _date),
        _Field("cancel_dt", ("cancel_dt", "external_cancel_dt"), _date),
    ),
}

_ID_KEYS: dict[str, tuple[str, tuple[str, ...], str]] = {
    "business": ("business_id", ("business_id", "id", "resource_uri"), "businesses"),
    "location": ("location_id", ("location_id", "id", "resource_uri"), "locations"),
    "perk": ("perk_id", ("perk_id", "id", "resource_uri"), "perks"),
    "user": ("user_id", ("user_id", "id", "resource_uri"), "users"),
    "transaction": ("transaction_id", ("transaction_id", "id", "resource_uri"), "transactions"),
    "external_member": ("member_id", ("member_id", "external_member_id"), ""),
}


def _lookup(raw: dict[str, Any], keys: tuple[str, ...]) -> tuple[str | None, Any]:
    """The first of ``keys`` that holds a non-missing value (or the first present key)."""
    present: str | None = None
    for key in keys:
        if key in raw:
            if not c.is_missing(raw[key]):
                return key, raw[key]
            present = present or key
    return present, None


def _parse(
    kind: str,
    model: type[R],
    raw: object,
    zone: Zone,
    *,
    id_required: bool = True,
) -> Parsed[R]:
    tz = c.resolve_timezone(zone)
    if not isinstance(raw, dict):
        issue = MappingIssue(
            record_id=None, field=None, record_type=kind, raw=c.json_safe(raw),
            reason=f"expected a JSON object for a {kind}, got {type(raw).__name__}",
        )
        return Parsed[R](record=None, issues=[issue])
    raw = {str(k): v for k, v in raw.items()}
    issues: list[MappingIssue] = []
    values: dict[str, Any] = {}
    used: set[str] = set()
    record_id: str | None = None

    if kind in _ID_KEYS:
        id_name, id_keys, resource = _ID_KEYS[kind]
        used.update(id_keys)
        key, value = _lookup(raw, id_keys)
        reason: str | None = None
        if value is None:
            reason = f"missing {id_name}"
        else:
            try:
                read_id = c.to_id(value, resource or None) if resource else c.to_text(value)
                if resource and key == "resource_uri" and not isinstance(value, str):
                    raise c.Invalid("resource_uri is not a string")
                record_id = read_id
            except c.Invalid as exc:
                reason = f"unreadable {id_name}: {exc.reason}"
        if record_id is None:
            if id_required:
                issues.append(MappingIssue(
                    record_id=None, field=id_name, reason=reason or "missing id",
                    raw=c.json_safe(raw), record_type=kind,
                ))
                return Parsed[R](record=None, issues=issues)
        else:
            values[id_name] = record_id

    for spec in _SPECS[kind]:
        used.update(spec.keys)
        key, value = _lookup(raw, spec.keys)
        if value is None:
            if spec.required:
                issues.append(MappingIssue(
                    record_id=record_id, field=spec.name, reason=f"missing {spec.name}",
                    raw=c.json_safe(raw), severity=spec.severity, record_type=kind,
                ))
            continue
        try:
            values[spec.name] = spec.read(value, tz)
        except c.Invalid as exc:
            issues.append(MappingIssue(
                record_id=record_id, field=spec.name, reason=f"unreadable {spec.name}: {exc.reason}",
                raw=c.json_safe(raw), severity=spec.severity, record_type=kind,
            ))

    if kind == "connection" and "connection_id" in values:
        record_id = values["connection_id"]
    if kind == "connection" and "user_id" not in values:
        return Parsed[R](record=None, issues=issues)
    extra = {k: v for k, v in raw.items() if k not in used}
    record = model.model_construct(raw=raw, extra=extra, issues=list(issues), **values)
    return Parsed[R](record=record, issues=issues)


def parse_business(raw: object, *, timezone: Zone = "UTC") -> Parsed[PerkvilleBusiness]:
    """Parse a ``/v2/businesses/`` object."""
    return _parse("business", PerkvilleBusiness, raw, timezone)


def parse_location(raw: object, *, timezone: Zone = "UTC") -> Parsed[PerkvilleLocation]:
    """Parse a ``/v2/locations/`` object."""
    return _parse("location", PerkvilleLocation, raw, timezone)


def parse_perk(raw: object, *, timezone: Zone = "UTC") -> Parsed[PerkvillePerk]:
    """Parse a ``/v2/perks/`` object (dates without an offset are read in ``timezone``)."""
    return _parse("perk", PerkvillePerk, raw, timezone)


def parse_user(raw: object, *, timezone: Zone = "UTC") -> Parsed[PerkvilleUser]:
    """Parse a ``/v2/users/`` object."""
    return _parse("user", PerkvilleUser, raw, timezone)


def parse_connection(raw: object, *, timezone: Zone = "UTC") -> Parsed[PerkvilleConnection]:
    """Parse a ``/v2/connections/`` object; a connection without a readable user is unusable."""
    return _parse("connection", PerkvilleConnection, raw, timezone, id_required=False)


def parse_transaction(raw: object, *, timezone: Zone = "UTC") -> Parsed[PerkvilleTransaction]:
    """Parse a ``/v2/transactions/`` object; problems with event-critical fields are errors."""
    return _parse("transaction", PerkvilleTransaction, raw, timezone)


def parse_external_member(raw: object, *, timezone: Zone = "UTC") -> Parsed[PerkvilleExternalMember]:
    """Parse an external member (membership) record."""
    return _parse("external_member", PerkvilleExternalMember, raw, timezone)

