"""What the API says about itself: Tastypie's discovery endpoints, read tolerantly.

django-tastypie publishes ``GET /v2/?fullschema=true`` (every resource, schemas inlined) and
``GET /v2/{resource}/schema/`` (fields, ``filtering``, ``ordering``, allowed methods, page
sizes). Perkville v2 is most likely Tastypie [inferred]; whether it leaves these on is unknown.
``discover`` tries the first, then the second per resource, and answers ``None`` for what it
cannot read: callers then keep their tolerant defaults.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from connectors.perkville.errors import NotFound, PerkvilleHTTPError

log = logging.getLogger(__name__)

# Tastypie's filter lookups; ``ALL`` / ``ALL_WITH_RELATIONS`` (serialised as 1 / 2, or by name)
# allow every one of them.
LOOKUPS = frozenset(
    {
        "exact",
        "iexact",
        "contains",
        "icontains",
        "in",
        "gt",
        "gte",
        "lt",
        "lte",
        "startswith",
        "istartswith",
        "endswith",
        "iendswith",
        "range",
        "isnull",
    }
)


@dataclass(frozen=True)
class ResourceSchema:
    """One resource's schema: fields (name -> type), filters (name -> lookups), ordering, methods."""

    fields: Mapping[str, str]
    filtering: Mapping[str, frozenset[str]]
    ordering: frozenset[str]
    list_methods: frozenset[str] = frozenset()
    detail_methods: frozenset[str] = frozenset()
    default_limit: int | None = None
    max_limit: int | None = None

    def has_field(self, name: str) -> bool:
        return name in self.fields

    def allows_filter(self, param: str) -> bool:
        """Whether ``param`` (e.g. ``last_mod_dt__gte``) is a filter this resource lists."""
        name, lookup = split_filter(param)
        return lookup in self.filtering.get(name, frozenset())

    def allows_ordering(self, order: str) -> bool:
        return order.lstrip("-") in self.ordering

    def to_json(self) -> dict[str, Any]:
        return {
            "fields": dict(self.fields),
            "filtering": {name: sorted(ops) for name, ops in self.filtering.items()},
            "ordering": sorted(self.ordering),
            "list_methods": sorted(self.list_methods),
            "detail_methods": sorted(self.detail_methods),
            "default_limit": self.default_limit,
            "max_limit": self.max_limit,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ResourceSchema:
        return cls(
            fields=dict(data.get("fields") or {}),
            filtering={name: frozenset(ops) for name, ops in (data.get("filtering") or {}).items()},
            ordering=frozenset(data.get("ordering") or ()),
            list_methods=frozenset(data.get("list_methods") or ()),
            detail_methods=frozenset(data.get("detail_methods") or ()),
            default_limit=data.get("default_limit"),
            max_limit=data.get("max_limit"),
        )


@dataclass(frozen=True)
class ApiSchema:
    """The schemas found (``None`` per resource: not published), and how they were found."""

    resources: Mapping[str, ResourceSchema | None] = field(default_factory=dict)
    how: str = "none"  # "fullschema" | "per-resource" | "none"

    def of(self, resource: str) -> ResourceSchema | None:
        return self.resources.get(resource)

    def allows_filter(self, resource: str, param: str) -> bool | None:
        """True / False from the schema; None when the resource's schema is unknown."""
        schema = self.of(resource)
        return None if schema is None else schema.allows_filter(param)

    def to_json(self) -> dict[str, Any]:
        return {
            "how": self.how,
            "resources": {r: (s.to_json() if s else None) for r, s in sorted(self.resources.items())},
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any] | None) -> ApiSchema:
        if not data:
            return cls()
        return cls(
            resources={
                name: ResourceSchema.from_json(body) if body else None
                for name, body in (data.get("resources") or {}).items()
            },
            how=str(data.get("how") or "none"),
        )


def split_filter(param: str) -> tuple[str, str]:
    """``"last_mod_dt__gte"`` -> ``("last_mod_dt", "gte")``; a bare name is ``exact``."""
    name, _, lookup = param.rpartition("__")
    if name and lookup in LOOKUPS:
        return name, lookup
    return param, "exact"


def parse_resource_schema(raw: Any) -> ResourceSchema | None:
    """A Tastypie schema document, or None when ``raw`` does not look like one."""
    if not isinstance(raw, Mapping) or not isinstance(raw.get("fields"), Mapping):
        return None
    fields = {
        str(name): str(spec.get("type", "unknown")) if isinstance(spec, Mapping) else "unknown"
        for name, spec in raw["fields"].items()
    }
    filtering: dict[str, frozenset[str]] = {}
    for name, ops in (raw.get("filtering") or {}).items():
        if ops in (1, 2) or ops in ("ALL", "ALL_WITH_RELATIONS"):
            filtering[str(name)] = LOOKUPS
        elif isinstance(ops, Iterable) and not isinstance(ops, str | bytes):
            filtering[str(name)] = frozenset(str(op) for op in ops)
    ordering = raw.get("ordering") or ()
    return ResourceSchema(
        fields=fields,
        filtering=filtering,
        ordering=frozenset(str(name) for name in ordering if isinstance(name, str)),
        list_methods=_methods(raw.get("allowed_list_http_methods")),
        detail_methods=_methods(raw.get("allowed_detail_http_methods")),
        default_limit=_int(raw.get("default_limit")),
        max_limit=_int(raw.get("max_limit")),
    )


class Requester(Protocol):
    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None) -> Any: ...


def discover(
    client: Requester, resources: Iterable[str], paths: Mapping[str, str] | None = None
) -> ApiSchema:
    """Read the schemas of ``resources``: ``?fullschema=true`` first, then each ``schema/``.

    Missing endpoints (404) and unreadable answers are not errors: the resource's schema is
    ``None`` and a log line says so. Authentication and other errors propagate.
    """
    wanted = list(resources)
    paths = dict(paths or {})
    try:
        top = client.request("GET", "", params={"fullschema": "true"})
    except NotFound:
        top = None
    except PerkvilleHTTPError as exc:
        if exc.status not in (400, 403, 405):
            raise
        top = None
    found: dict[str, ResourceSchema | None] = {}
    if isinstance(top, Mapping):
        for name in wanted:
            entry = top.get(paths.get(name, name).strip("/"))
            found[name] = parse_resource_schema(entry.get("schema")) if isinstance(entry, Mapping) else None
        if any(found.values()):
            return ApiSchema(found, "fullschema")
    for name in wanted:
        try:
            found[name] = parse_resource_schema(
                client.request("GET", f"{paths.get(name, name).strip('/')}/schema/")
            )
        except NotFound:
            found[name] = None
        except PerkvilleHTTPError as exc:
            if exc.status not in (400, 403, 405):
                raise
            found[name] = None
    how = "per-resource" if any(found.values()) else "none"
    if how == "none":
        log.info("perkville: the API publishes no schema (no /v2/?fullschema=true nor schema/ endpoints)")
    return ApiSchema(found, how)


def _methods(value: Any) -> frozenset[str]:
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return frozenset(str(v).lower() for v in value)
    return frozenset()


def _int(value: Any) -> int | None:
    try:
        return int(value) if value is not None else None
    except (TypeError, ValueError):
        return None


# Query parameters that are not filters (Tastypie's paging, ordering and format).
NOT_FILTERS = frozenset({"limit", "offset", "order_by", "format"})


def sendable(schema: ResourceSchema | None, params: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``params`` without the filters and orderings ``schema`` does not list, and what was withheld.

    Without a schema everything is sent (the guard still checks the rows that come back).
    """
    if schema is None:
        return dict(params), []
    sent: dict[str, Any] = {}
    withheld: list[str] = []
    for key, value in params.items():
        if key == "order_by":
            orders = [value] if isinstance(value, str) else list(value)
            kept = [order for order in orders if schema.allows_ordering(str(order))]
            withheld += [f"order_by={order}" for order in orders if order not in kept]
            if kept:
                sent[key] = kept
        elif key in NOT_FILTERS or value is None or schema.allows_filter(key):
            sent[key] = value
        else:
            withheld.append(key)
    return sent, withheld
