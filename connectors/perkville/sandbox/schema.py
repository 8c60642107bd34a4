"""The sandbox's discovery endpoints and staff reach, as django-tastypie would serve them.

Tastypie publishes ``GET /v2/`` (every resource with its ``list_endpoint`` and ``schema``;
``?fullschema=true`` inlines the schemas) and ``GET /v2/{resource}/schema/`` (each field's type,
nullable, unique and help text, plus ``filtering``, ``ordering``, the allowed methods and
``default_limit``). Whether Perkville leaves them on is unknown: ``Behaviour.schema_endpoints``
switches them off (404), so the probe's fallback is tested too.

A staff account limited to some locations (``Behaviour.staff_locations``) sees only those
locations, the connections whose home location is one of them, their users and their
transactions (wherever they happened), as Perkville's docs say of location-restricted staff.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# Which lookups each filterable field accepts (Tastypie's ``filtering``).
EXACT = ["exact", "in"]
RANGE = ["exact", "in", "gt", "gte", "lt", "lte"]

# Per resource: (fields with their Tastypie type, filtering, ordering, list methods, detail methods).
_RESOURCES: dict[str, dict[str, Any]] = {
    "businesses": {
        "fields": {"business_id": "integer", "name": "string", "slug": "string", "timezone": "string"},
        "filtering": {"business_id": EXACT},
        "ordering": ["business_id"],
        "list": ["get"],
        "detail": ["get"],
    },
    "locations": {
        "fields": {
            "location_id": "integer",
            "business": "related",
            "name": "string",
            "external_location_id": "string",
        },
        "filtering": {"location_id": EXACT, "business": EXACT},
        "ordering": ["location_id"],
        "list": ["get"],
        "detail": ["get"],
    },
    "perks": {
        "fields": {
            "perk_id": "integer",
            "business": "related",
            "title": "string",
            "classification": "string",
            "points": "integer",
            "status": "string",
            "redemption_limit_count": "integer",
            "redemption_limit_interval": "string",
        },
        "filtering": {"perk_id": EXACT, "business": EXACT, "classification": EXACT, "status": EXACT},
        "ordering": ["perk_id"],
        "list": ["get"],
        "detail": ["get"],
    },
    "users": {
        "fields": {
            "user_id": "integer",
            "first_name": "string",
            "last_name": "string",
            "emails": "list",
            "connections": "related",
            "phone_number": "string",
            "birthday": "date",
            "last_mod_dt": "datetime",
        },
        "filtering": {
            "user_id": EXACT,
            "business": EXACT,
            "emails": ["exact"],
            "emails__email": ["exact"],
            "user__emails__email": ["exact"],
            "last_mod_dt": RANGE,
        },
        "ordering": ["user_id", "last_mod_dt"],
        "list": ["get"],
        "detail": ["get", "patch"],
    },
    "connections": {
        "fields": {
            "connection_id": "integer",
            "business": "related",
            "user": "related",
            "status": "string",
            "level": "string",
            "home_location": "related",
            "point_balance": "integer",
            "lifetime_earned_points": "integer",
            "last_mod_dt": "datetime",
        },
        "filtering": {
            "connection_id": EXACT,
            "business": EXACT,
            "user": EXACT,
            "user_id": EXACT,
            "user__emails__email": ["exact"],
            "status": EXACT,
            "home_location": EXACT,
            "point_balance": RANGE,
            "last_mod_dt": RANGE,
        },
        "ordering": ["connection_id", "last_mod_dt", "point_balance"],
        "list": ["get"],
        "detail": ["get", "patch"],
    },
    "transactions": {
        "fields": {
            "transaction_id": "integer",
            "business": "related",
            "user": "related",
            "connection": "related",
            "perk": "related",
            "location": "related",
            "classification": "string",
            "points": "integer",
            "quantity": "integer",
            "transaction_dt": "datetime",
            "transaction_status": "string",
            "trans_source_id": "string",
            "voided_transaction": "related",
            "last_mod_dt": "datetime",
        },
        "filtering": {
            "transaction_id": RANGE,
            "business": EXACT,
            "user": EXACT,
            "user_id": EXACT,
            "user__emails__email": ["exact"],
            "connection": EXACT,
            "perk": EXACT,
            "location": EXACT,
            "classification": EXACT,
            "transaction_status": EXACT,
            "trans_source_id": EXACT,
            "transaction_dt": RANGE,
            "last_mod_dt": RANGE,
        },
        "ordering": ["transaction_id", "transaction_dt", "last_mod_dt"],
        "list": ["get", "post"],
        "detail": ["get"],
    },
    "external-members": {
        "fields": {
            "business": "related",
            "external_member_id": "string",  # the external system's member id: not unique
            "member_id": "string",
            "system_id": "string",
            "membership_status": "string",
            "last_mod_dt": "datetime",
        },
        "filtering": {
            "business": EXACT, "external_member_id": EXACT, "member_id": EXACT, "last_mod_dt": RANGE,
        },
        "ordering": ["id", "last_mod_dt"],
        "list": ["get", "post"],
        "detail": ["get", "patch"],
    },
}

# Fields the sandbox can leave out of transactions (``Behaviour.hidden_transaction_fields``),
# like a Perkville whose transactions carry no ``last_mod_dt``.
HIDEABLE = frozenset({"last_mod_dt"})


def resource_schema(
    resource: str, id_field: str, *, default_limit: int, max_limit: int, hidden: Iterable[str] = ()
) -> dict[str, Any]:
    """``GET /v2/{resource}/schema/``: Tastypie's shape (fields, filtering, ordering, methods)."""
    spec = _RESOURCES[resource]
    gone = set(hidden) if resource == "transactions" else set()
    names = dict(spec["fields"])
    names.setdefault(id_field, "integer")
    names["resource_uri"] = "string"
    return {
        "fields": {
            name: {
                "type": kind,
                "nullable": name not in (id_field, "resource_uri"),
                "unique": name == id_field,
                "readonly": name in (id_field, "resource_uri"),
                "help_text": f"{resource} {name}",
            }
            for name, kind in sorted(names.items())
            if name not in gone
        },
        "filtering": {
            name: list(ops)
            for name, ops in sorted({**spec["filtering"], id_field: RANGE}.items())
            if name not in gone
        },
        "ordering": [name for name in spec["ordering"] if name not in gone],
        "allowed_list_http_methods": list(spec["list"]),
        "allowed_detail_http_methods": list(spec["detail"]),
        "default_format": "application/json",
        "default_limit": default_limit,
        "max_limit": max_limit,
    }


def top_level(
    api_prefix: str,
    resources: Sequence[str],
    ids: dict[str, str],
    *,
    full: bool,
    default_limit: int,
    max_limit: int,
    hidden: Iterable[str] = (),
) -> dict[str, Any]:
    """``GET /v2/`` (``full``: ``?fullschema=true``, the schemas inlined)."""
    out: dict[str, Any] = {}
    for name in resources:
        entry: dict[str, Any] = {
            "list_endpoint": f"{api_prefix}{name}/",
            "schema": f"{api_prefix}{name}/schema/",
        }
        if full:
            entry["schema"] = resource_schema(
                name, ids[name], default_limit=default_limit, max_limit=max_limit, hidden=hidden
            )
        out[name] = entry
    return out


def is_field(resource: str, name: str, id_field: str, hidden: Iterable[str] = ()) -> bool:
    """Whether ``name`` (a filter's first segment) is a field of ``resource`` (Tastypie T2)."""
    if resource == "transactions" and name in set(hidden):
        return False
    spec = _RESOURCES.get(resource)
    if spec is None:
        return True
    first = name.split("__", 1)[0]
    return (
        first in spec["fields"]
        or name in spec["filtering"]
        or first == id_field
        or first in ("id", "user_id")
    )


# ---------------------------------------------------------------------- staff reach
def within_reach(resource: str, rows: list[Any], locations: frozenset[int], ledger: Any) -> list[Any]:
    """The rows of ``resource`` a staff account limited to ``locations`` sees."""
    if resource == "locations":
        return [row for row in rows if row["location_id"] in locations]
    if resource == "connections":
        return [row for row in rows if row["home_location"] in locations]
    if resource == "users":
        seen = _visible_connections(ledger, locations)
        return [row for row in rows if any(c in seen for c in row["connections"])]
    if resource == "transactions":
        seen = _visible_connections(ledger, locations)
        return [row for row in rows if row.connection_id in seen]
    return rows


def _visible_connections(ledger: Any, locations: frozenset[int]) -> set[int]:
    return {cid for cid, row in ledger.connections.items() if row["home_location"] in locations}
