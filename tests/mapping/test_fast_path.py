"""The fast transaction path of ``to_events`` equals the reference (lenient) path, row by row."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapping import _coerce as c
from mapping.events import _fast_events, _reference_events, to_events, to_events_many
from mapping.ids import encode_business_id

ZONES = ("UTC", "America/Chicago", "Asia/Kathmandu")


def _uri(resource: str) -> st.SearchStrategy[Any]:
    return st.integers(min_value=0, max_value=10**12).map(lambda n: f"/v2/{resource}/{n}/")


def _bad_uri(resource: str) -> st.SearchStrategy[Any]:
    """Ints, near-misses and junk (the fast path must decline or read them exactly as the reference)."""
    return st.one_of(
        st.integers(-(10**31), 10**31),
        st.sampled_from([None, "", " ", f"/v2/{resource}//", f"/v2/{resource}/x/", f" /v2/{resource}/1/",
                         f"/v2/{resource}/1", "/v2/other/1/", f"https://h/v2/{resource}/1/", "/v2/users/\u0661/",
                         True, {"id": 1}]),
    )


_good_datetimes = st.builds(
    lambda y, mo, d, h, mi, s, sep: f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}",
    st.integers(1, 9999), st.integers(1, 12), st.integers(1, 28), st.integers(0, 23),
    st.integers(0, 59), st.integers(0, 59), st.sampled_from([" ", "T"]),
)
_bad_datetimes = st.one_of(
    st.builds(
        lambda y, mo, d, h, mi, s, sep: f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}",
        st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32), st.integers(0, 25),
        st.integers(0, 60), st.integers(0, 61), st.sampled_from([" ", "T", "  "]),
    ),
    st.sampled_from(["2024-05-02T18:14:09Z", "2024-05-02 18:14:09.5", "2024-05-02", "0001-01-01 00:00:00",
                     "9999-12-31 23:59:59", "2024-03-10 02:30:00", "2024-11-03 01:30:00", "2024-05-02 24:00:00",
                     "2024-W01-1 00:00:00", "", None, 5]),
)
GOOD: dict[str, st.SearchStrategy[Any]] = {
    "transaction_id": st.integers(1, 10**12),
    "business": st.just("/v2/businesses/25/"),
    "user": _uri("users"),
    "connection": _uri("connections"),
    "perk": _uri("perks"),
    "location": _uri("locations"),
    "voucher": st.one_of(st.none(), _uri("vouchers")),
    "title": st.one_of(st.none(), st.text(max_size=8)),
    "classification": st.sampled_from(["EARN", "REDEEM"]),
    "points": st.integers(-(10**6), 10**6),
    "quantity": st.integers(0, 6),
    "transaction_dt": _good_datetimes,
    "transaction_status": st.sampled_from(["ACTIVE", "VOID"]),
    "trans_source_id": st.one_of(st.none(), st.sampled_from(["", "  ", "pos:1:2", "perkamo:tx_1", "perkamo:",
                                                              "perkamo:perkville:1:txn:1", "a\x00b"]),
                                 st.text(max_size=6)),
    "last_mod_dt": st.one_of(st.none(), _good_datetimes),
}
BAD: dict[str, st.SearchStrategy[Any]] = {
    "transaction_id": st.one_of(st.integers(-(10**31), 10**31), st.sampled_from(["17", " 17", "x", "", None, True])),
    "business": _bad_uri("businesses"),
    "user": _bad_uri("users"),
    "connection": _bad_uri("connections"),
    "perk": _bad_uri("perks"),
    "location": _bad_uri("locations"),
    "voucher": _bad_uri("vouchers"),
    "title": st.sampled_from(["", "  ", " padded ", 5, None, ["x"]]),
    "classification": st.sampled_from(["earn", " EARN", "BURN", None, ["EARN"], 1]),
    "points": st.one_of(st.integers(-(10**16), 10**16), st.sampled_from([2.5, "7", None, True, 10**15, -(10**15)])),
    "quantity": st.one_of(st.integers(-2, 10**16), st.sampled_from([None, 1.0, "2", False])),
    "transaction_dt": _bad_datetimes,
    "transaction_status": st.sampled_from(["VOID_REF", "active", "GONE", None, ["VOID"]]),
    "trans_source_id": st.sampled_from([5, ["x"], None]),
    "last_mod_dt": _bad_datetimes,
    "user_id": st.one_of(_uri("users"), _bad_uri("users")),
    "business_id": st.one_of(st.just(25), _bad_uri("businesses")),
    "status": st.sampled_from(["ACTIVE", "VOID", None]),
    "perk_id": _bad_uri("perks"),
    "location_id": _bad_uri("locations"),
    "id": st.integers(1, 9),
}


def _row() -> st.SearchStrategy[dict[str, Any]]:
    """A usual-shape row with up to three fields dropped, replaced or added from the ``BAD`` lists."""

    def spoil(row: dict[str, Any]) -> st.SearchStrategy[dict[str, Any]]:
        drops = st.lists(st.sampled_from(sorted(GOOD)), max_size=2, unique=True)
        bad = st.dictionaries(st.sampled_from(sorted(BAD)), st.none(), max_size=3).flatmap(
            lambda keys: st.fixed_dictionaries({k: BAD[k] for k in keys})
        )
        return st.tuples(drops, bad).map(
            lambda pair: {**{k: v for k, v in row.items() if k not in pair[0]}, **pair[1]}
        )

    return st.fixed_dictionaries(GOOD).flatmap(spoil)


@settings(max_examples=400)
@given(row=_row(), zone=st.sampled_from(ZONES), business=st.sampled_from([25, "25", "b 7"]),
       known=st.booleans())
def test_fast_path_equals_the_reference_path(row: dict[str, Any], zone: str, business: Any, known: bool) -> None:
    tz = c.resolve_timezone(zone)
    user = row.get("user")
    customer_ids = {str(user).rstrip("/").rsplit("/", 1)[-1]: "cust-1"} if known else None
    fast = _fast_events(row, business, encode_business_id(business), tz, customer_ids)
    reference = _reference_events(row, business, tz, customer_ids)
    if fast is not None:
        assert fast == reference
        assert [e.model_dump() for e in fast.events] == [e.model_dump() for e in reference.events]
    assert to_events(row, business_id=business, timezone=zone, customer_ids=customer_ids) == reference
    assert to_events_many([row], business_id=business, timezone=zone, customer_ids=customer_ids) == [reference]


SANDBOX_ROW = {
    "transaction_id": 10000001, "business": "/v2/businesses/25/", "user": "/v2/users/3100094/",
    "connection": "/v2/connections/900094/", "perk": "/v2/perks/7700/", "location": "/v2/locations/300/",
    "title": "Gym Check-In", "classification": "EARN", "points": 1, "quantity": 1,
    "transaction_dt": "2024-01-02 01:55:18", "transaction_status": "ACTIVE", "voucher": None,
    "voided_transaction": None, "trans_source_id": None, "last_mod_dt": "2024-01-02 01:55:41",
    "resource_uri": "/v2/transactions/10000001/",
}


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({}, id="active"),
        pytest.param({"transaction_status": "VOID"}, id="void"),
        pytest.param({"classification": "REDEEM", "points": 40, "voucher": "/v2/vouchers/9/"}, id="redeem"),
        pytest.param({"trans_source_id": "pos:A:1", "quantity": 3}, id="source-id"),
        pytest.param({"trans_source_id": "perkamo:tx_9"}, id="round-trip"),
        pytest.param({"points": 0}, id="activity"),
    ],
)
def test_the_usual_sandbox_shapes_take_the_fast_path(changes: dict[str, Any]) -> None:
    row = {**SANDBOX_ROW, **changes}
    fast = _fast_events(row, 25, "25", c.resolve_timezone("America/Chicago"), None)
    assert fast is not None
    assert fast == _reference_events(row, 25, c.resolve_timezone("America/Chicago"), None)
