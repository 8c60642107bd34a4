"""Stream guards: each list page checked against what was asked of the server, on the client.

A server may ignore a datetime window, the ``business`` filter or ``order_by``. ``guard_for``
notes what a list asked for; ``apply_guard`` drops the rows outside it (with one warning per
filter and path) and checks the order, sorting a page whose order is broken. No I/O.
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, tzinfo
from itertools import islice
from typing import Any

from connectors.perkville.datetimes import parse_perkville_datetime

_DATETIME_FILTERS = ("__gte", "__gt", "__lt", "__lte")
# Parameters that are not exact filters of a row field (paging, ordering, the business check).
_NOT_EXACT = frozenset({"limit", "offset", "order_by", "format", "business", "fullschema"})
# ``warn(key, message, *args)``: log ``message`` the first time ``key`` is seen.
Warn = Callable[..., None]


@dataclass
class Bound:
    """One datetime window asked of the server: ``low <= value < high`` (operators as sent)."""

    low: datetime | None = None
    low_strict: bool = False
    high: datetime | None = None
    high_inclusive: bool = False


@dataclass
class StreamGuard:
    """Checks one list stream against what was asked (window, business, order); filters on the client."""

    bounds: dict[str, Bound] = field(default_factory=dict)
    business: str | None = None
    order: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)
    id_field: str = "id"
    ordered: bool = True
    last_key: tuple[Any, ...] | None = None
    # Raw ``business`` strings already compared with ``business`` (rows repeat the same URI).
    business_seen: dict[str, bool] = field(default_factory=dict)
    # Other exact filters (``transaction_status=VOID``, ``perk=7``), checked on rows that carry the field.
    equals: dict[str, str] = field(default_factory=dict)


# Order key part of a missing or unreadable ``*_dt`` value: before every real moment.
_NO_MOMENT = float("-inf")
# Where an order field's value comes from: a parsed bound value (index >= 0), a fresh parse, or raw.
_PARSE, _RAW = -1, -2
_BUSINESS_SEEN_MAX = 64



def filter_warning(spath: str, name: str) -> str:
    """The once-only warning key for the ``name`` filter on ``spath`` (the client's too, when it
    withholds a filter the schema lacks: one warning names it, not two)."""
    return f"filter:{spath}:{name}"


def order_warning(spath: str) -> str:
    """The once-only warning key for ``order_by`` on ``spath``."""
    return f"order:{spath}"


def guard_for(params: Mapping[str, Any], tz: tzinfo, id_field: str) -> StreamGuard:
    """The guard of a list asked with ``params`` (its datetime windows, business and order)."""
    guard = StreamGuard(id_field=id_field)
    for key, value in params.items():
        suffix = next((s for s in _DATETIME_FILTERS if key.endswith(s)), None)
        if suffix is None or value is None:
            continue
        try:
            bound = parse_perkville_datetime(value, tz)
        except ValueError:
            continue  # not a datetime we can check; the server decides
        window = guard.bounds.setdefault(key[: -len(suffix)], Bound())
        if suffix in ("__gte", "__gt"):
            window.low, window.low_strict = bound, suffix == "__gt"
        else:
            window.high, window.high_inclusive = bound, suffix == "__lte"
    for key, value in params.items():
        name = key[: -len("__exact")] if key.endswith("__exact") else key
        if "__" in name or name in _NOT_EXACT or value is None or isinstance(value, (list, tuple, dict)):
            continue
        guard.equals[name] = trailing_id(value)
    if params.get("business") is not None:
        guard.business = trailing_id(params["business"])
    order = params.get("order_by")
    if order:
        for item in [order] if isinstance(order, str) else list(order):
            text = str(item)
            guard.order.append((text.lstrip("-"), text.startswith("-")))
    return guard

def apply_guard(
    guard: StreamGuard, objects: list[Mapping[str, Any]], spath: str, tz: tzinfo, warn: Warn
) -> tuple[list[dict[str, Any]], int]:
    """Drop the rows outside the asked filters, then check the order and sort the page if it is broken.

    A filter is checked in the order the bounds were asked, then the business; the first one a
    row violates is the one warned about. Each ``*_dt`` value is parsed once: an order field
    that is also a bound reuses the value the filter parsed. Rows are passed on as decoded:
    each page's JSON is decoded afresh and nothing else holds it, so only a row that is not a
    plain dict is copied.
    """
    parse = parse_perkville_datetime
    bounds = [(name, b.low, b.low_strict, b.high, b.high_inclusive) for name, b in guard.bounds.items()]
    positions = {name: index for index, (name, *_) in enumerate(bounds)}
    sources = [
        (name, descending, positions.get(name, _PARSE) if name.endswith("_dt") else _RAW)
        for name, descending in guard.order
    ]
    carry = any(source >= 0 for _, _, source in sources)
    business = guard.business
    equals = guard.equals
    seen = guard.business_seen
    kept: list[dict[str, Any]] = []
    carried: list[list[datetime | None]] = []
    dropped = 0
    for row in objects:
        reason: str | None = None
        values: list[datetime | None] = []
        for name, low, low_strict, high, high_inclusive in bounds:
            try:
                value = parse(row.get(name), tz)
            except ValueError:
                value = None  # unparseable values are the mapping's problem, not a filter signal
            values.append(value)
            if value is None and name not in row:
                warn(
                    f"missing:{spath}:{name}",
                    "perkville: rows of %s carry no %s, so its filter cannot be checked on the client; "
                    "they are kept (read again on every pass: their ids make that harmless)",
                    spath,
                    name,
                )
            if value is not None and (
                (low is not None and (value <= low if low_strict else value < low))
                or (high is not None and (value > high if high_inclusive else value >= high))
            ):
                reason = name
                break
        if reason is None and equals:
            for name, wanted in equals.items():
                if name in row and row[name] is not None and trailing_id(row[name]) != wanted:
                    reason = name
                    break
        if reason is None and business is not None:
            raw = row.get("business")
            if raw is not None:
                if type(raw) is str:
                    same = seen.get(raw)
                    if same is None:
                        same = trailing_id(raw) == business
                        if len(seen) < _BUSINESS_SEEN_MAX:
                            seen[raw] = same
                else:
                    same = trailing_id(raw) == business
                if not same:
                    reason = "business"
        if reason is not None:
            dropped += 1
            warn(
                filter_warning(spath, reason),
                "perkville: the server ignored the %s filter on %s; filtering on the client side "
                "(every page is still read, so this is slower)",
                reason,
                spath,
            )
            continue
        kept.append(row if type(row) is dict else dict(row))
        if carry:
            carried.append(values)
    if guard.order and kept:
        keys = _order_keys(guard, kept, sources, carried, tz)
        in_order = all(map(operator.le, keys, islice(keys, 1, None)))
        if guard.last_key is not None and keys[0] < guard.last_key:
            in_order = False
        if not in_order:
            if guard.ordered:
                warn(
                    order_warning(spath),
                    "perkville: the server ignored order_by on %s; sorting each page on the client "
                    "side (the stream as a whole is no longer ordered; page.ordered is False)",
                    spath,
                )
            guard.ordered = False
            pairs = sorted(zip(keys, range(len(kept)), strict=True))
            kept = [kept[index] for _, index in pairs]
            keys = [key for key, _ in pairs]
        guard.last_key = keys[-1] if guard.last_key is None else max(guard.last_key, keys[-1])
    return kept, dropped

def _order_keys(
    guard: StreamGuard,
    rows: list[dict[str, Any]],
    sources: list[tuple[str, bool, int]],
    carried: list[list[datetime | None]],
    tz: tzinfo,
) -> list[tuple[Any, ...]]:
    """One sort key per row: each order field (a ``*_dt`` as its timestamp), then the row id.

    ``*_dt`` values that are null or unreadable sort first (``-inf``); descending fields negate
    numbers only (text keeps its ascending order, as it always has). Ties fall to the id.
    Built column by column; ``*_dt`` fields not parsed by a filter are parsed row by row first,
    so a value that cannot be read at all fails on the same row and field as it always did.
    """
    to_parse = [name for name, _, source in sources if source == _PARSE]
    parsed: list[Sequence[datetime | None]] = []
    if len(to_parse) == 1:
        parsed = [[_moment_or_none(row.get(to_parse[0]), tz) for row in rows]]
    elif to_parse:  # row by row, then turned into columns
        parsed = list(zip(*[[_moment_or_none(row.get(name), tz) for name in to_parse] for row in rows]))
    columns: list[list[Any]] = []
    parse_index = 0
    for name, descending, source in sources:
        if source == _RAW:
            column = [(1, v) if type(v) is int else sortable(v) for v in [row.get(name) for row in rows]]
            columns.append([_negate(part) for part in column] if descending else column)
            continue
        if source == _PARSE:
            values = parsed[parse_index]
            parse_index += 1
        else:
            values = [moments[source] for moments in carried]
        stamps = [_NO_MOMENT if v is None else v.timestamp() for v in values]
        columns.append([-stamp for stamp in stamps] if descending else stamps)
    id_field = guard.id_field
    columns.append(
        [
            (1, ident) if type(ident) is int else sortable(row_id(row, id_field))
            for row in rows
            for ident in (row.get(id_field),)
        ]
    )
    return list(zip(*columns, strict=True))


def trailing_id(value: object) -> str:
    """``25``, ``"25"`` or ``"/v2/businesses/25/"`` → ``"25"``."""
    text = str(value).rstrip("/")
    return text.rsplit("/", 1)[-1]


def _moment_or_none(value: object, tz: tzinfo) -> datetime | None:
    """A row's ``*_dt`` value parsed, or None when null or unreadable (the mapping reports those)."""
    try:
        return parse_perkville_datetime(value, tz)
    except ValueError:
        return None


def row_id(row: Mapping[str, Any], id_field: str) -> Any:
    for key in (id_field, "id"):
        if row.get(key) is not None:
            return row[key]
    uri = row.get("resource_uri")
    return trailing_id(uri) if uri else None


def sortable(value: Any) -> tuple[int, Any]:
    if value is None:
        return (0, 0)
    if isinstance(value, bool):
        return (1, int(value))
    if isinstance(value, (int, float)):
        return (1, value)
    text = str(value)
    try:
        return (1, int(text))
    except ValueError:
        return (2, text)


def _negate(value: Any) -> Any:
    if isinstance(value, tuple) and len(value) == 2 and isinstance(value[1], (int, float)):
        return (value[0], -value[1])
    if isinstance(value, float):
        return -value
    return value
