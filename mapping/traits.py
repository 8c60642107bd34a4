"""Customer traits from a Perkville user, connection and external membership, with PII minimisation."""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping
from typing import Any, TypeVar

from mapping.errors import MappingConfigError
from mapping.events import RESERVED_CONTEXT_KEYS
from mapping.ids import to_customer_id
from mapping.records import (
    Parsed,
    PerkvilleConnection,
    PerkvilleExternalMember,
    PerkvilleLocation,
    PerkvilleRecord,
    PerkvilleUser,
    Zone,
    parse_connection,
    parse_external_member,
    parse_user,
)
from mapping.types import IdentifyCall, IdentifyResult, IdStrategy, MappingIssue

__all__ = ["PII_TRAITS", "TRAIT_KEYS", "to_identify", "to_traits"]

TRAIT_KEYS = (
    "email", "name", "first_name", "last_name", "phone", "birthday", "perkville_user_id",
    "perkville_connection_status", "perkville_level", "perkville_lifetime_earned_points",
    "home_location_id", "home_location_external_id", "home_location_name",
    "external_member_id", "external_system_id",
    "membership_type", "membership_status", "membership_join_date", "membership_cancel_date",
)
# Personal data a business may choose not to copy to Perkamo (``deny=PII_TRAITS``).
PII_TRAITS = frozenset({"email", "name", "first_name", "last_name", "phone", "birthday"})
assert not RESERVED_CONTEXT_KEYS.intersection(TRAIT_KEYS)

R = TypeVar("R", bound=PerkvilleRecord)


def _check_keys(keys: Collection[str] | None, what: str) -> frozenset[str] | None:
    if keys is None:
        return None
    if isinstance(keys, str):
        raise MappingConfigError(f"trait {what}-list must be a collection of trait names, not a string")
    unknown = sorted(set(keys) - set(TRAIT_KEYS))
    if unknown:
        raise MappingConfigError(f"unknown trait names in the {what}-list: {', '.join(unknown)}; "
                                 f"known: {', '.join(TRAIT_KEYS)}")
    return frozenset(keys)


def _number(value: Any) -> Any:
    return int(value) if value == value.to_integral_value() else value


def _home_location(
    connection: PerkvilleConnection | None,
    member: PerkvilleExternalMember | None,
    locations: Mapping[str, PerkvilleLocation] | None,
) -> dict[str, Any]:
    """Perkville's own home location (the connection's) wins; the membership's is the fallback."""
    found: dict[str, Any] = {}
    location: PerkvilleLocation | None = None
    if connection is not None and connection.home_location_id is not None:
        found["home_location_id"] = connection.home_location_id
        location = locations.get(connection.home_location_id) if locations is not None else None
    elif member is not None and member.external_home_location_id is not None:
        external = member.external_home_location_id
        found["home_location_external_id"] = external
        if locations is not None:
            location = next((loc for loc in locations.values() if loc.external_location_id == external), None)
    if location is not None:
        found["home_location_id"] = location.location_id
        found["home_location_external_id"] = location.external_location_id
        found["home_location_name"] = location.name
    return found


def to_traits(
    user: PerkvilleUser | None = None,
    connection: PerkvilleConnection | None = None,
    external_member: PerkvilleExternalMember | None = None,
    *,
    locations: Mapping[str, PerkvilleLocation] | None = None,
    allow: Collection[str] | None = None,
    deny: Collection[str] | None = None,
) -> dict[str, Any]:
    """The traits of one customer; absent values are omitted, reserved keys never used.

    ``locations`` (by Perkville location id) resolves the home location's external id and name.
    ``allow`` keeps only the named traits; ``deny`` then drops the named ones (e.g. ``PII_TRAITS``).
    """
    allowed, denied = _check_keys(allow, "allow"), _check_keys(deny, "deny")
    member = external_member
    traits: dict[str, Any] = {}
    if user is not None:
        name = " ".join(part for part in (user.first_name, user.last_name) if part)
        traits.update({
            "email": user.primary_email,
            "name": name or None,
            "first_name": user.first_name,
            "last_name": user.last_name,
            "phone": user.phone_number,
            "birthday": user.birthday.isoformat() if user.birthday else None,
            "perkville_user_id": user.user_id,
        })
    if connection is not None:
        join = member.join_dt if member and member.join_dt else connection.external_join_dt
        cancel = member.cancel_dt if member and member.cancel_dt else connection.external_cancel_dt
        traits.update({
            "perkville_user_id": traits.get("perkville_user_id") or connection.user_id,
            "perkville_connection_status": connection.status,
            "perkville_level": connection.level,
            "perkville_lifetime_earned_points": (
                _number(connection.lifetime_earned_points)
                if connection.lifetime_earned_points is not None else None),
            "membership_type": connection.external_membership_type,
            "membership_status": connection.external_membership_status,
            "membership_join_date": join.isoformat() if join else None,
            "membership_cancel_date": cancel.isoformat() if cancel else None,
        })
    if member is not None:
        traits.update({
            "external_member_id": member.member_id,
            "external_system_id": member.system_id,
            "membership_type": member.membership_type or traits.get("membership_type"),
            "membership_status": member.membership_status or traits.get("membership_status"),
        })
        if "membership_join_date" not in traits or traits["membership_join_date"] is None:
            traits["membership_join_date"] = member.join_dt.isoformat() if member.join_dt else None
        if "membership_cancel_date" not in traits or traits["membership_cancel_date"] is None:
            traits["membership_cancel_date"] = member.cancel_dt.isoformat() if member.cancel_dt else None
    traits.update(_home_location(connection, member, locations))
    return {
        key: traits[key] for key in TRAIT_KEYS
        if traits.get(key) is not None
        and (allowed is None or key in allowed)
        and (denied is None or key not in denied)
    }


def _as_record(
    value: R | Mapping[str, Any] | None, parse: Callable[..., Parsed[R]], kind: type[R], zone: Zone
) -> tuple[R | None, list[MappingIssue]]:
    if value is None:
        return None, []
    if isinstance(value, kind):
        return value, list(value.issues)
    parsed = parse(value, timezone=zone)
    return parsed.record, list(parsed.issues)


def to_identify(
    user: PerkvilleUser | Mapping[str, Any] | None,
    *,
    connection: PerkvilleConnection | Mapping[str, Any] | None = None,
    external_member: PerkvilleExternalMember | Mapping[str, Any] | None = None,
    locations: Mapping[str, PerkvilleLocation] | None = None,
    strategy: IdStrategy = "perkville_user",
    allow: Collection[str] | None = None,
    deny: Collection[str] | None = None,
    timezone: Zone = "UTC",
) -> IdentifyResult:
    """The ``identify`` call for one Perkville user: customer id (by ``strategy``) plus traits.

    Records may be raw JSON or parsed. The user may be missing when the connection names it.
    """
    _check_keys(allow, "allow")
    _check_keys(deny, "deny")
    user_record, issues = _as_record(user, parse_user, PerkvilleUser, timezone)
    conn_record, more = _as_record(connection, parse_connection, PerkvilleConnection, timezone)
    issues += more
    member_record, more = _as_record(external_member, parse_external_member, PerkvilleExternalMember, timezone)
    issues += more
    perkville_user_id = (user_record.user_id if user_record is not None
                         else conn_record.user_id if conn_record is not None else None)
    if perkville_user_id is None:
        if not any(issue.severity == "error" for issue in issues):
            issues.append(MappingIssue(record_id=None, field="user_id", record_type="user",
                                       reason="no readable user or connection to identify"))
        return IdentifyResult(call=None, entry=None, issues=issues)
    if conn_record is not None and conn_record.user_id != perkville_user_id:
        issues.append(MappingIssue(
            record_id=conn_record.connection_id, field="user", record_type="connection", raw=conn_record.raw,
            reason=f"connection belongs to perkville user {conn_record.user_id}, not {perkville_user_id}",
        ))
        return IdentifyResult(call=None, entry=None, issues=issues)
    assigned = to_customer_id(
        perkville_user_id,
        strategy=strategy,
        member_id=member_record.member_id if member_record is not None else None,
        email=user_record.primary_email if user_record is not None else None,
    )
    if isinstance(assigned, MappingIssue):
        return IdentifyResult(call=None, entry=None, issues=[*issues, assigned])
    traits = to_traits(user_record, conn_record, member_record, locations=locations, allow=allow, deny=deny)
    call = IdentifyCall(user_id=assigned.customer_id, traits=traits, perkville_user_id=perkville_user_id)
    return IdentifyResult(call=call, entry=assigned.entry, issues=[*issues, *assigned.issues])
