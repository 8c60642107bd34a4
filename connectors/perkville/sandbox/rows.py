"""The sandbox's rows as Tastypie would serve them: rendering (URIs, naive datetimes, the sign of
``points``) and querying (filters, ordering, the staff account's reach). No HTTP here."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import TYPE_CHECKING, Any

from connectors.perkville.datetimes import parse_perkville_datetime
from connectors.perkville.paging import ID_FIELDS
from connectors.perkville.sandbox.schema import is_field, within_reach
from connectors.perkville.sandbox.state import SandboxError, Txn, to_int

if TYPE_CHECKING:
    from connectors.perkville.sandbox.server import SandboxServer

API_PREFIX = "/v2/"


# ---------------------------------------------------------------------- rendering
def fmt_dt(value: datetime | None, server: SandboxServer) -> str | None:
    if value is None:
        return None
    local = value.astimezone(server.ledger.tz)
    style = server.behaviour.datetime_style
    if style == "offset":
        return local.isoformat(timespec="seconds")
    text = local.strftime("%Y-%m-%d %H:%M:%S")
    return text.replace(" ", "T") if style == "t" else text


def _uri(resource: str, value: int | None) -> str | None:
    return None if value is None else f"{API_PREFIX}{resource}/{value}/"


def render_txn(txn: Txn, server: SandboxServer) -> dict[str, Any]:
    shown = txn.points
    if txn.classification == "REDEEM" and server.ledger.redeem_sign == "negative":
        shown = -shown
    if txn.status == "VOID_REF":
        shown = -shown
    out = {
        "transaction_id": txn.id,
        "business": _uri("businesses", txn.business_id),
        "user": _uri("users", txn.user_id),
        "connection": _uri("connections", txn.connection_id),
        "perk": _uri("perks", txn.perk_id),
        "location": _uri("locations", txn.location_id),
        "title": txn.title,
        "classification": txn.classification,
        "points": shown,
        "quantity": txn.quantity,
        "transaction_dt": fmt_dt(txn.dt, server),
        "transaction_status": txn.status,
        "voucher": _uri("vouchers", txn.voucher_id),
        "voided_transaction": _uri("transactions", txn.void_of),
        "trans_source_id": txn.trans_source_id,
        "last_mod_dt": fmt_dt(txn.last_mod, server),
        "resource_uri": _uri("transactions", txn.id),
    }
    for name in server.behaviour.hidden_transaction_fields:
        out.pop(name, None)
    return out


def render(resource: str, record: Any, server: SandboxServer) -> dict[str, Any]:
    if resource == "transactions":
        return render_txn(record, server)
    ledger = server.ledger
    out = dict(record)
    if resource == "businesses":
        out["resource_uri"] = _uri("businesses", record["business_id"])
        return out
    if "business" in out:
        out["business"] = _uri("businesses", out["business"])
    if "last_mod_dt" in out:
        out["last_mod_dt"] = fmt_dt(out["last_mod_dt"], server)
    if resource == "connections":
        aggregate = ledger.aggregates[record["connection_id"]]
        out["user"] = _uri("users", record["user"])
        out["home_location"] = _uri("locations", record["home_location"])
        out["point_balance"] = aggregate.balance
        out["lifetime_earned_points"] = aggregate.lifetime
        out["last_transaction_dt"] = fmt_dt(aggregate.last_txn, server)
        out["last_visited_location"] = _uri("locations", aggregate.last_location)
        out["vouchers"] = []
        out["resource_uri"] = _uri("connections", record["connection_id"])
    elif resource == "users":
        out["emails"] = [dict(item) for item in record["emails"]]
        out["connections"] = [_uri("connections", c) for c in record["connections"]]
        out["resource_uri"] = _uri("users", record["user_id"])
    elif resource == "locations":
        out["resource_uri"] = _uri("locations", record["location_id"])
    elif resource == "perks":
        out["resource_uri"] = _uri("perks", record["perk_id"])
    elif resource == "external-members":
        out["resource_uri"] = _uri("external-members", record["id"])
    return out


# ---------------------------------------------------------------------- querying
_TXN_FIELDS: dict[str, Callable[[Txn], Any]] = {
    "transaction_id": lambda t: t.id,
    "id": lambda t: t.id,
    "business": lambda t: t.business_id,
    "user": lambda t: t.user_id,
    "user_id": lambda t: t.user_id,
    "connection": lambda t: t.connection_id,
    "perk": lambda t: t.perk_id,
    "location": lambda t: t.location_id,
    "classification": lambda t: t.classification,
    "transaction_status": lambda t: t.status,
    "trans_source_id": lambda t: t.trans_source_id,
    "transaction_dt": lambda t: t.dt,
    "last_mod_dt": lambda t: t.last_mod,
    "points": lambda t: t.points,
    "quantity": lambda t: t.quantity,
}
ID_FIELD = {**ID_FIELDS, "external-members": "id"}  # the sandbox keys external members by a neutral id
_IGNORED_PARAMS = {"limit", "offset", "order_by", "format"}
_RELATION_INT = {"business", "user", "user_id", "connection", "perk", "location", "home_location"}


def _records(resource: str, server: SandboxServer, business: int | None = None) -> list[Any]:
    rows = _business_records(resource, server, business) if business is not None else None
    if rows is None:
        rows = _all_records(resource, server)
    limited = server.behaviour.staff_locations
    return rows if limited is None else within_reach(resource, rows, frozenset(limited), server.ledger)


def _business_filter(filters: list[tuple[str, str, Any]]) -> int | None:
    """The business an exact ``business=B`` filter names (the filters still apply to what it gives)."""
    for name, op, value in filters:
        if name == "business" and op == "exact" and isinstance(value, int):
            return value
    return None


def _business_records(resource: str, server: SandboxServer, business: int) -> list[Any] | None:
    """The only rows a ``business=B`` filter can match, from the business's own lists, as an
    indexed query would find them: a sandbox of many businesses answers in time of one (the
    filters, ``business`` included, still run over them). None: no such list, scan everything."""
    ledger = server.ledger
    owner = ledger.businesses.get(business)
    if resource not in ("transactions", "connections", "users"):
        return None
    if owner is None:
        return []
    if resource == "transactions":
        return [txn for txn in owner.txns if txn.id in ledger.txns]
    # A connection deleted from the ledger (a test removing a member) may stay in the list.
    connections = [ledger.connections[c] for c in owner.connection_ids if c in ledger.connections]
    if resource == "connections":
        return connections
    return [ledger.users[u] for u in dict.fromkeys(c["user"] for c in connections)]


def _all_records(resource: str, server: SandboxServer) -> list[Any]:
    ledger = server.ledger
    if resource == "transactions":
        return list(ledger.txns.values())
    if resource == "businesses":
        return [b.record for b in ledger.businesses.values()]
    if resource == "external-members":
        return list(ledger.external_members.values())
    table = {
        "locations": ledger.locations,
        "perks": ledger.perks,
        "users": ledger.users,
        "connections": ledger.connections,
    }[resource]
    return list(table.values())


def _getter(resource: str, name: str, server: SandboxServer) -> Callable[[Any], Any] | None:
    if resource == "transactions":
        if name == "user__emails__email":
            return lambda t: [e["email"].lower() for e in server.ledger.users[t.user_id]["emails"]]
        return _TXN_FIELDS.get(name)
    if name == "id":
        name = ID_FIELD[resource]
    if resource == "users" and name in ("emails__email", "user__emails__email"):
        return lambda r: [e["email"].lower() for e in r["emails"]]
    if resource == "connections" and name == "user__emails__email":
        return lambda r: [e["email"].lower() for e in server.ledger.users[r["user"]]["emails"]]
    if resource == "connections" and name in ("user_id",):
        return lambda r: r["user"]
    if resource == "connections" and name == "point_balance":
        return lambda r: server.ledger.aggregates[r["connection_id"]].balance
    if resource == "users" and name == "business":
        return lambda r: [server.ledger.connections[c]["business"] for c in r["connections"]]
    return lambda r: r.get(name)


def _coerce(name: str, raw: str, server: SandboxServer) -> Any:
    if name.endswith("_dt"):
        value = parse_perkville_datetime(raw, server.ledger.tz)
        if value is None:
            raise ValueError("empty datetime")
        return value
    if (
        name in _RELATION_INT
        or name.endswith("_id")
        and name not in ("trans_source_id", "member_id", "system_id", "external_member_id")
    ):
        if raw == "me" and name in ("user", "user_id"):
            return server.ledger.staff_user_id
        number = to_int(raw)
        if number is None:
            raise ValueError(f"not an id: {raw!r}")
        return number
    if name.endswith("email"):
        return raw.lower()
    return raw


def query(resource: str, params: list[tuple[str, str]], server: SandboxServer) -> list[Any]:
    """Filter and order ``resource`` as Tastypie would (raises ``SandboxError`` for a bad filter)."""
    behaviour = server.behaviour
    filters: list[tuple[str, str, Any]] = []
    order: list[str] = []
    for key, raw in params:
        if key == "order_by":
            order.append(raw)
            continue
        if key in _IGNORED_PARAMS:
            continue
        name, op = key, "exact"
        for suffix in ("__gte", "__gt", "__lte", "__lt", "__in"):
            if key.endswith(suffix):
                name, op = key[: -len(suffix)], suffix[2:]
        hidden = behaviour.hidden_transaction_fields
        if not is_field(resource, name, ID_FIELD.get(resource, "id"), hidden):
            if behaviour.unknown_filters == "ignore":
                continue  # Tastypie: "It's not a field we know about. Move along citizen."
            if resource == "transactions":
                raise SandboxError(400, key, "pv_invalid_filter", f"The '{name}' field does not allow filtering.")
        if _getter(resource, name, server) is None:
            raise SandboxError(400, key, "pv_invalid_filter", f"The '{name}' field does not allow filtering.")
        try:
            value = (
                [_coerce(name, part, server) for part in raw.split(",")]
                if op == "in"
                else _coerce(name, raw, server)
            )
        except ValueError:
            raise SandboxError(400, key, "pv_invalid_filter_value", f"Invalid value for '{key}'.") from None
        filters.append((name, op, value))
    if behaviour.ignore_filters:
        filters = []
    if behaviour.ignore_order:
        order = []
    for item in order:
        if _getter(resource, item.lstrip("-"), server) is None or (
            resource == "transactions" and item.lstrip("-") in behaviour.hidden_transaction_fields
        ):
            raise SandboxError(
                400, "order_by", "pv_invalid_order", f"No matching '{item}' field for ordering."
            )
    reach = tuple(behaviour.staff_locations) if behaviour.staff_locations is not None else None
    cache_key = (resource, tuple(sorted((n, o, repr(v)) for n, o, v in filters)), tuple(order), reach)

    def compute() -> list[Any]:
        rows = _records(resource, server, _business_filter(filters))
        for name, op, value in filters:
            getter = _getter(resource, name, server)
            assert getter is not None
            rows = [row for row in rows if _match(getter(row), op, value)]
        id_getter = _getter(resource, "id", server)
        assert id_getter is not None
        rows.sort(key=id_getter)
        for item in reversed(order):
            getter = _getter(resource, item.lstrip("-"), server)
            assert getter is not None
            rows.sort(key=_sorter(getter), reverse=item.startswith("-"))
        return rows

    return server.cached_query(cache_key, compute)


def _sorter(getter: Callable[[Any], Any]) -> Callable[[Any], tuple[int, Any]]:
    return lambda row: _sort_key(getter(row))


def _sort_key(value: Any) -> tuple[int, Any]:
    return (0, 0) if value is None else (1, value)


def _match(actual: Any, op: str, wanted: Any) -> bool:
    values = actual if isinstance(actual, list) else [actual]
    for value in values:
        if op == "exact" and value == wanted:
            return True
        if op == "in" and value in wanted:
            return True
        if value is None or op in ("exact", "in"):
            continue
        try:
            if (
                (op == "gte" and value >= wanted)
                or (op == "gt" and value > wanted)
                or (op == "lte" and value <= wanted)
                or (op == "lt" and value < wanted)
            ):
                return True
        except TypeError:
            continue
    return False
