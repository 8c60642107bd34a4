"""The stream guard (client-side filter and order check) decides exactly as its straightforward reading does."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
import respx
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from connectors.perkville.client import PerkvilleClient
from connectors.perkville.datetimes import _parse_tolerant, to_tzinfo
from connectors.perkville.guard import row_id, sortable, trailing_id

from .conftest import API, FakeTime, make_client, page, token_route

SPATH = "/v2/transactions/"


# --------------------------------------------------------------------- the oracle
def reference_parse(value: object, tz: Any) -> datetime | None:
    """Datetime parsing without the fast path."""
    if value is None:
        return None
    return _parse_tolerant(value, to_tzinfo(tz))


@dataclass
class Oracle:
    """The guard read row by row, one filter and one key at a time, with the tolerant parser only."""

    bounds: dict[str, tuple[datetime | None, bool, datetime | None, bool]]
    business: str | None
    order: list[tuple[str, bool]]
    id_field: str
    tz: Any
    ordered: bool = True
    last_key: tuple[Any, ...] | None = None
    warnings: list[str] = field(default_factory=list)

    def outside(self, row: Mapping[str, Any]) -> str | None:
        for name, (low, low_strict, high, high_inclusive) in self.bounds.items():
            try:
                value = reference_parse(row.get(name), self.tz)
            except ValueError:
                continue
            if value is None:
                continue
            if low is not None and (value < low or (low_strict and value == low)):
                return name
            if high is not None and (value > high or (not high_inclusive and value == high)):
                return name
        if self.business is not None and row.get("business") is not None:
            if trailing_id(row.get("business")) != self.business:
                return "business"
        return None

    def key(self, row: Mapping[str, Any]) -> tuple[Any, ...]:
        parts: list[Any] = []
        for name, descending in self.order:
            if name.endswith("_dt"):
                try:
                    value = reference_parse(row.get(name), self.tz)
                except ValueError:
                    value = None
                number: Any = value.timestamp() if value is not None else float("-inf")
                parts.append(-number if descending else number)
            else:
                part = sortable(row.get(name))
                if descending and isinstance(part[1], (int, float)):
                    part = (part[0], -part[1])
                parts.append(part)
        parts.append(sortable(row_id(row, self.id_field)))
        return tuple(parts)

    def apply(self, objects: list[Mapping[str, Any]]) -> tuple[list[dict[str, Any]], int]:
        kept: list[dict[str, Any]] = []
        dropped = 0
        for row in objects:
            reason = self.outside(row)
            if reason is not None:
                dropped += 1
                if f"filter:{reason}" not in self.warnings:
                    self.warnings.append(f"filter:{reason}")
                continue
            kept.append(dict(row))
        if self.order and kept:
            keys = [self.key(row) for row in kept]
            in_order = all(keys[i] <= keys[i + 1] for i in range(len(keys) - 1))
            if self.last_key is not None and keys[0] < self.last_key:
                in_order = False
            if not in_order:
                if self.ordered and "order" not in self.warnings:
                    self.warnings.append("order")
                self.ordered = False
                pairs = sorted(zip(keys, range(len(kept)), strict=True))
                kept = [kept[index] for _, index in pairs]
                keys = [key for key, _ in pairs]
            self.last_key = keys[-1] if self.last_key is None else max(self.last_key, keys[-1])
        return kept, dropped


def oracle_for(client: PerkvilleClient, params: dict[str, Any]) -> tuple[Any, Oracle]:
    guard = client._guard_for("transactions", client._params(params.pop("business", None), params))
    bounds = {name: (b.low, b.low_strict, b.high, b.high_inclusive) for name, b in guard.bounds.items()}
    oracle = Oracle(bounds, guard.business, list(guard.order), guard.id_field, client.tz)
    return guard, oracle


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    found: list[str] = []
    for record in caplog.records:
        text = record.getMessage()
        if "ignored order_by" in text:
            found.append("order")
        elif "ignored the " in text:
            found.append("filter:" + text.split("ignored the ", 1)[1].split(" filter", 1)[0])
    return found


def run_both(
    client: PerkvilleClient, params: dict[str, Any], pages: list[list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> tuple[list[Any], list[Any]]:
    guard, oracle = oracle_for(client, dict(params))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="connectors.perkville"):
        fast = [(*client._apply_guard(guard, [dict(r) for r in rows], SPATH), guard.ordered) for rows in pages]
    slow = [(*oracle.apply([dict(r) for r in rows]), oracle.ordered) for rows in pages]
    assert guard.last_key == oracle.last_key
    assert warnings_of(caplog) == oracle.warnings
    return fast, slow


# --------------------------------------------------------------------- generated streams
DATETIMES = st.one_of(
    st.builds(
        lambda day, hour, minute, second, sep, fraction, offset: (
            f"2024-05-{day:02d}{sep}{hour:02d}:{minute:02d}:{second:02d}{fraction}{offset}"
        ),
        day=st.integers(1, 3),
        hour=st.integers(0, 23),
        minute=st.sampled_from([0, 30, 59]),
        second=st.sampled_from([0, 1, 59]),
        sep=st.sampled_from([" ", "T"]),
        fraction=st.sampled_from(["", ".5", ".500000", ".123456789"]),
        offset=st.sampled_from(["", "", "Z", "+00:00", "-00:00", "+02:00", " +01"]),
    ),
    st.sampled_from(["2024-05-02", "  2024-05-02 00:00:00 ", "2024-05-02 00:00", "", "garbage", "2024-13-01 00:00:00"]),
    st.none(),
    st.integers(0, 10),
)
IDS = st.one_of(
    st.integers(1, 6),
    st.sampled_from(["3", "07", "x9", " 4", ""]),
    st.none(),
    st.booleans(),
    st.floats(1, 6, allow_nan=False),
)
BUSINESS = st.sampled_from(["/v2/businesses/25/", "/v2/businesses/26/", 25, 26, "25", None])


@st.composite
def rows(draw: st.DrawFn) -> dict[str, Any]:
    row: dict[str, Any] = {"transaction_dt": draw(DATETIMES), "last_mod_dt": draw(DATETIMES)}
    ident = draw(IDS)
    if ident is not None or draw(st.booleans()):
        row["transaction_id"] = ident
    else:
        row["resource_uri"] = f"/v2/transactions/{draw(st.integers(1, 6))}/"
    if draw(st.booleans()):
        row["business"] = draw(BUSINESS)
    row["points"] = draw(st.one_of(st.integers(-5, 5), st.none(), st.just("7")))
    return row


BOUND_VALUES = st.sampled_from(
    [datetime(2024, 5, 1, tzinfo=UTC), datetime(2024, 5, 2, tzinfo=UTC), datetime(2024, 5, 2, 12, tzinfo=UTC)]
)


@st.composite
def queries(draw: st.DrawFn) -> dict[str, Any]:
    params: dict[str, Any] = {}
    for name in draw(st.lists(st.sampled_from(["transaction_dt", "last_mod_dt"]), unique=True, max_size=2)):
        if draw(st.booleans()):
            params[f"{name}__{draw(st.sampled_from(['gte', 'gt']))}"] = draw(BOUND_VALUES)
        if draw(st.booleans()):
            params[f"{name}__{draw(st.sampled_from(['lt', 'lte']))}"] = draw(BOUND_VALUES)
    if draw(st.booleans()):
        params["business"] = 25
    fields = draw(
        st.lists(st.sampled_from(["transaction_dt", "last_mod_dt", "transaction_id", "points"]), max_size=3)
    )
    params["order_by"] = [("-" if draw(st.booleans()) else "") + name for name in fields]
    return params


@pytest.mark.parametrize("zone", ["UTC", "America/Chicago"])
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    params=queries(),
    pages=st.lists(st.lists(rows(), max_size=6), min_size=1, max_size=4),
)
def test_guard_matches_the_oracle(
    zone: str, params: dict[str, Any], pages: list[list[dict[str, Any]]], caplog: pytest.LogCaptureFixture
) -> None:
    client = PerkvilleClient(API, API + "token/", access_token="tok", timezone=zone)
    fast, slow = run_both(client, params, pages, caplog)
    assert fast == slow


# --------------------------------------------------------------------- table-driven cases
def txn(ident: object, when: object, business: object = "/v2/businesses/25/", **extra: object) -> dict[str, Any]:
    return {"transaction_id": ident, "transaction_dt": when, "business": business, **extra}


MAY1 = datetime(2024, 5, 1, tzinfo=UTC)
MAY2 = datetime(2024, 5, 2, tzinfo=UTC)
ORDER = ["transaction_dt", "transaction_id"]

CASES: list[tuple[str, dict[str, Any], list[list[dict[str, Any]]], list[list[object]], list[bool], list[str]]] = [
    (
        "ordered-mixed-shapes",
        {"order_by": ORDER},
        [[txn(1, "2024-05-01 01:00:00"), txn(2, "2024-05-01T01:00:00Z"), txn(3, "2024-05-01T03:00:00+02:00"),
          txn(4, "2024-05-01 01:00:00.5")]],
        [[1, 2, 3, 4]],
        [True],
        [],
    ),
    (
        "out-of-order-page-sorted-ties-by-id",
        {"order_by": ORDER},
        [[txn(5, "2024-05-01 02:00:00"), txn(4, "2024-05-01T01:00:00+00:00"), txn(3, "2024-05-01 01:00:00")]],
        [[3, 4, 5]],
        [False],
        ["order"],
    ),
    (
        "out-of-order-across-pages-warned-once",
        {"order_by": ORDER},
        [[txn(1, "2024-05-01 05:00:00")], [txn(2, "2024-05-01 04:00:00")], [txn(4, "2024-05-01 01:00:00"),
                                                                             txn(3, "2024-05-01 00:00:00")]],
        [[1], [2], [3, 4]],
        [True, False, False],
        ["order"],
    ),
    (
        "ignored-window-filter-dropped-half-open",
        {"order_by": ORDER, "transaction_dt__gte": MAY1, "transaction_dt__lt": MAY2},
        [[txn(1, "2024-04-30 23:59:59"), txn(2, "2024-05-01T00:00:00Z"), txn(3, "2024-05-01 23:59:59.999999"),
          txn(4, "2024-05-02 00:00:00")]],
        [[2, 3]],
        [True],
        ["filter:transaction_dt"],
    ),
    (
        "ignored-business-filter",
        {"business": 25, "order_by": ORDER},
        [[txn(1, "2024-05-01 01:00:00"), txn(2, "2024-05-01 02:00:00", "/v2/businesses/26/"),
          txn(3, "2024-05-01 03:00:00", 25), txn(4, "2024-05-01 04:00:00", None)]],
        [[1, 3, 4]],
        [True],
        ["filter:business"],
    ),
    (
        "unreadable-and-null-datetimes-sort-first-and-pass-the-filter",
        {"order_by": ORDER, "transaction_dt__gte": MAY1},
        [[txn(3, "2024-05-01 01:00:00"), txn(2, "garbage"), txn(1, None)]],
        [[1, 2, 3]],
        [False],
        ["order"],
    ),
    (
        "descending-dt-then-id",
        {"order_by": ["-transaction_dt", "transaction_id"]},
        [[txn(1, "2024-05-01 03:00:00"), txn(3, "2024-05-01 01:00:00"), txn(2, "2024-05-01 01:00:00")]],
        [[1, 2, 3]],
        [False],
        ["order"],
    ),
    (
        "filter-on-one-field-order-on-another",
        {"order_by": ["last_mod_dt", "transaction_id"], "transaction_dt__lt": MAY2},
        [[txn(1, "2024-05-01 01:00:00", last_mod_dt="2024-05-03 00:00:00"),
          txn(2, "2024-05-02 01:00:00", last_mod_dt="2024-05-01 00:00:00"),
          txn(3, "2024-05-01 02:00:00", last_mod_dt="2024-05-02 00:00:00")]],
        [[3, 1]],
        [False],
        ["filter:transaction_dt", "order"],
    ),
    (
        "first-violated-filter-is-the-one-warned",
        {"order_by": ORDER, "transaction_dt__gte": MAY1, "last_mod_dt__gte": MAY1, "business": 25},
        [[txn(1, "2024-04-30 01:00:00", "/v2/businesses/26/", last_mod_dt="2024-04-30 00:00:00"),
          txn(2, "2024-05-01 01:00:00", last_mod_dt="2024-05-01 00:00:00")]],
        [[2]],
        [True],
        ["filter:transaction_dt"],
    ),
    (
        "strict-low-and-inclusive-high",
        {"order_by": ORDER, "transaction_dt__gt": MAY1, "transaction_dt__lte": MAY2},
        [[txn(1, "2024-05-01 00:00:00"), txn(2, "2024-05-01 00:00:00.000001"), txn(3, "2024-05-02T00:00:00Z"),
          txn(4, "2024-05-02 00:00:00.000001")]],
        [[2, 3]],
        [True],
        ["filter:transaction_dt"],
    ),
    (
        "string-ids",
        {"order_by": ORDER},
        [[txn("10", "2024-05-01 01:00:00"), txn("9", "2024-05-01 01:00:00"), txn("a", "2024-05-01 01:00:00")]],
        [["9", "10", "a"]],
        [False],
        ["order"],
    ),
]


@pytest.mark.parametrize(
    ("params", "pages", "expected_ids", "expected_ordered", "expected_warnings"),
    [case[1:] for case in CASES],
    ids=[case[0] for case in CASES],
)
def test_guard_cases(
    params: dict[str, Any],
    pages: list[list[dict[str, Any]]],
    expected_ids: list[list[object]],
    expected_ordered: list[bool],
    expected_warnings: list[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = PerkvilleClient(API, API + "token/", access_token="tok")
    fast, slow = run_both(client, params, pages, caplog)
    assert fast == slow
    assert [[row["transaction_id"] for row in kept] for kept, _, _ in fast] == expected_ids
    assert [ordered for _, _, ordered in fast] == expected_ordered
    assert warnings_of(caplog) == expected_warnings


def test_rows_are_handed_on_as_decoded_and_counted(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.get(API + "transactions/").mock(
        return_value=httpx.Response(
            200,
            json=page(
                [txn(1, "2024-05-01 01:00:00", nested={"a": [1]}), txn(2, "2024-05-03 01:00:00")], next=None
            ),
        )
    )
    client = make_client(router, fake_time)
    pages = list(client.iter_transactions(25, transaction_dt_lt=MAY2, order_by=ORDER))
    assert pages[0].objects == [txn(1, "2024-05-01 01:00:00", nested={"a": [1]})]
    assert all(type(row) is dict for row in pages[0].objects)
    assert (pages[0].dropped, client.stats["dropped_rows"]) == (1, 1)
