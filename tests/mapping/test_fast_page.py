"""The per-call caches of ``to_events_many`` (URIs, datetimes, customers) keep every row equal to ``to_events``."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone, tzinfo
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mapping import _coerce as c
from mapping import events as mapping_events
from mapping.events import _fast_datetime, _fast_events, _reference_events, to_events_many
from mapping.ids import encode_business_id
from mapping.types import MappingResult

# A few values per field, so rows of one page share them (the caches hit) or differ; most rows are
# clean (the fast path maps them), some get one to three hostile values (it must decline or agree).
_GOOD: dict[str, list[Any]] = {
    "business": ["/v2/businesses/25/", 25, None],
    "user": ["/v2/users/7/", "/v2/users/8/", "/v2/users/0007/", 7],
    "perk": ["/v2/perks/7700/", "/v2/perks/7701/", 7700, None],
    "location": ["/v2/locations/300/", "/v2/locations/301/", None],
    "voucher": [None, None, "/v2/vouchers/9/", "/v2/vouchers/10/"],
    "connection": ["/v2/connections/900/", "/v2/connections/901/", None],
    "transaction_id": [1, 2, 10**6, "17", "017"],
    "classification": ["EARN", "REDEEM"],
    "points": [0, 1, -7, 40, 10**6],
    "quantity": [1, 2, 0],
    "transaction_dt": ["2024-01-02 00:13:55", "2024-01-02T00:13:55", "2024-03-10 02:30:00", "2024-11-03 01:30:00"],
    "last_mod_dt": ["2024-01-02 00:13:55", "2024-01-02T00:13:56", None],
    "transaction_status": ["ACTIVE", "ACTIVE", "VOID", "VOID_REF"],
    "title": ["Gym Check-In", " padded ", "", None],
    "trans_source_id": [None, None, "pos:CLUB-0:1", "pos:WEB:10", "perkamo:tx_1", "  "],
}
_BAD: dict[str, list[Any]] = {
    "business": ["/v2/businesses/26/", "/v2/businesses/25", "25", True],
    "user": [True, "/v2/perks/7/", "/v2/users/\u0667/", " /v2/users/7/", None, 10**30],
    "perk": ["/v2/users/7/", 1.0, "/v2/perks//"],
    "location": [False, "", "/v2/locations/x/"],
    "voucher": ["/v2/vouchers/x/", 9, ["/v2/vouchers/9/"]],
    "connection": [10**30, -5, "/v2/connections/9"],
    "transaction_id": [" 17", "", None, -3, True],
    "classification": ["earn", None],
    "points": [2.5, "7", 10**16],
    "quantity": [None, -1, 1.0],
    "transaction_dt": ["0001-01-01 00:00:00", "9999-12-31 23:59:59", "2024-02-30 10:00:00", "2024-05-02 24:00:00",
                       "2024-05-02T18:14:09Z", "2024-05-02 18:14", "", None, 5],
    "last_mod_dt": ["0001-01-01 00:00:00", "9999-12-31 23:59:59", "2024-02-30 10:00:00", "", 5],
    "transaction_status": ["void_ref", "GONE", None],
    "title": [5, ["x"]],
    "trans_source_id": ["perkamo:", "a\x00b", "\u00e9", "x" * 300, 5, "perkamo:perkville:1:txn:1"],
    "user_id": [7, "/v2/users/7/"],
    "business_id": [25, None],
    "perk_id": [7700],
    "status": ["ACTIVE", "VOID_REF"],
    "id": [3],
}


class _StrSub(str):
    """A ``str`` that is not exactly ``str`` (the fast path must not cache or read it)."""


def _page_row() -> st.SearchStrategy[dict[str, Any]]:
    clean = st.fixed_dictionaries({key: st.sampled_from(pool) for key, pool in _GOOD.items()})
    spoils = st.tuples(
        st.dictionaries(st.sampled_from(sorted(_BAD)), st.none(), max_size=3).flatmap(
            lambda keys: st.fixed_dictionaries({key: st.sampled_from(_BAD[key]) for key in keys})),
        st.lists(st.sampled_from(sorted(_GOOD)), max_size=2, unique=True),
        st.sampled_from([None, "user", "perk", "business", "transaction_dt"]),
    )
    hostile = st.tuples(clean, spoils).map(lambda pair: _spoil(pair[0], *pair[1]))
    return st.one_of(clean, clean, hostile)


def _spoil(row: dict[str, Any], extras: dict[str, Any], drops: list[str], subclass: str | None) -> dict[str, Any]:
    out = {key: value for key, value in row.items() if key not in drops}
    out.update(extras)
    if subclass is not None and isinstance(out.get(subclass), str):
        out[subclass] = _StrSub(out[subclass])
    return out


def _same(got: MappingResult, want: MappingResult) -> None:
    """Equal field values, and equal down to the types and time zones (``repr`` shows both)."""
    assert got == want
    assert repr(got) == repr(want)
    assert [e.occurred_at.tzinfo for e in got.events if e.occurred_at] == [
        e.occurred_at.tzinfo for e in want.events if e.occurred_at]


ZONES: list[str | tzinfo] = ["UTC", "America/Chicago", "Asia/Kathmandu", timezone(timedelta(hours=5, minutes=45)),
                             timezone(timedelta(hours=-3), "BRT")]


@settings(max_examples=150, deadline=None)
@given(page=st.lists(_page_row(), min_size=1, max_size=12), zone=st.sampled_from(ZONES),
       business=st.sampled_from([25, "25", "b 7"]), known=st.sampled_from(["none", "all", "some"]))
def test_a_page_maps_like_each_row_alone(
    page: list[dict[str, Any]], zone: str | tzinfo, business: Any, known: str
) -> None:
    customer_ids = None if known == "none" else {"7": "cust-7", "0007": "cust-0007"} if known == "all" else {
        "8": "cust-8", "7": ""}
    tz = c.resolve_timezone(zone)
    got = to_events_many(page, business_id=business, timezone=zone, customer_ids=customer_ids)
    assert len(got) == len(page)
    for row, result in zip(page, got, strict=True):
        _same(result, _reference_events(row, business, tz, customer_ids))


def test_caches_are_per_field_and_per_call() -> None:
    """The same string under two fields, and the same row under two businesses, are read afresh."""
    row = {
        "transaction_id": 5, "business": "/v2/businesses/25/", "user": "/v2/users/7/", "perk": "/v2/perks/7/",
        "classification": "EARN", "points": 3, "transaction_dt": "2024-01-02 00:13:55", "transaction_status": "ACTIVE",
    }
    confused = {**row, "transaction_id": 6, "perk": "/v2/users/7/"}
    got = to_events_many([row, confused, row], business_id=25)
    assert got[0].events[0].context["perk_id"] == "7"
    assert "perk_id" not in got[1].events[0].context and got[1].issues  # a perk-less event, with a warning
    assert got[2] == got[0]
    other = to_events_many([row], business_id=26)
    assert other[0].ok is False


def test_a_page_beyond_the_cache_limit_still_maps_every_row(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(mapping_events, "_CACHE_LIMIT", 2)
    rows = [
        {"transaction_id": n, "business": "/v2/businesses/25/", "user": f"/v2/users/{n % 5}/",
         "perk": "/v2/users/1/" if n % 4 == 0 else f"/v2/perks/{n}/", "classification": "EARN", "points": n,
         "transaction_dt": "2024-01-02 00:13:55", "transaction_status": "ACTIVE"}
        for n in range(1, 30)
    ]
    got = to_events_many(rows, business_id=25, timezone="America/Chicago")
    for row, result in zip(rows, got, strict=True):
        _same(result, _reference_events(row, 25, c.resolve_timezone("America/Chicago"), None))
    assert [("perk_id" in result.events[0].context) for result in got] == [n % 4 != 0 for n in range(1, 30)]


VOID_REF_ROW = {
    "transaction_id": 10200000, "business": "/v2/businesses/99/", "user": "/v2/users/bad/", "points": "x",
    "classification": "EARN", "quantity": 4, "transaction_dt": "2025-12-31 23:59:59",
    "transaction_status": "VOID_REF", "voided_transaction": "/v2/transactions/10195984/", "extra": {"a": [1.5, None]},
}


@pytest.mark.parametrize(
    "row",
    [
        pytest.param(VOID_REF_ROW, id="hostile-other-fields"),
        pytest.param({**VOID_REF_ROW, "transaction_id": "0042"}, id="string-id"),
        pytest.param({"transaction_id": 1, "transaction_status": "VOID_REF"}, id="bare"),
    ],
)
def test_void_ref_rows_are_skipped_on_the_fast_path(row: dict[str, Any]) -> None:
    fast = _fast_events(row, 25, "25", UTC, None)
    assert fast is not None and fast.skipped and not fast.events and not fast.issues
    _same(fast, _reference_events(row, 25, UTC, None))


def _old_datetime(value: str, zone: tzinfo) -> datetime | None:
    """The reading ``_fast_datetime`` replaced: ``fromisoformat`` + ``replace`` + ``astimezone``."""
    try:
        return datetime.fromisoformat(value).replace(tzinfo=zone).astimezone(UTC)
    except (OverflowError, ValueError):
        return None


class _Plus90(tzinfo):
    """A hand-written zone (not ``ZoneInfo`` nor ``timezone``): read through the general path."""

    def utcoffset(self, dt: datetime | None) -> timedelta:
        return timedelta(minutes=90)

    def dst(self, dt: datetime | None) -> timedelta:
        return timedelta(0)

    def tzname(self, dt: datetime | None) -> str:
        return "+0130"


DT_ZONES: list[tzinfo] = [UTC, c.resolve_timezone("America/Chicago"), c.resolve_timezone("Australia/Lord_Howe"),
                          c.resolve_timezone("Pacific/Kiritimati"), c.resolve_timezone("America/St_Johns"),
                          timezone(timedelta(hours=-12)), timezone(timedelta(hours=14)),
                          timezone(timedelta(seconds=-1, microseconds=1)), _Plus90()]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.tuples(st.integers(0, 9999), st.integers(0, 13), st.integers(0, 32), st.integers(0, 24),
                    st.integers(0, 60), st.integers(0, 60), st.sampled_from([" ", "T", "t", "_"])),
    zone=st.sampled_from(DT_ZONES),
)
def test_fast_datetime_equals_the_old_reading(parts: tuple[int, int, int, int, int, int, str], zone: tzinfo) -> None:
    y, mo, d, h, mi, s, sep = parts
    value = f"{y:04d}-{mo:02d}-{d:02d}{sep}{h:02d}:{mi:02d}:{s:02d}"
    got = _fast_datetime(value, zone)
    if sep not in " T" or h > 23:
        assert got is None
        return
    want = _old_datetime(value, zone)
    assert got == want
    if got is not None and want is not None:
        assert got.tzinfo is UTC and want.tzinfo is UTC and got.fold == want.fold == 0
        assert repr(got) == repr(want)


@pytest.mark.parametrize("zone", DT_ZONES, ids=repr)
@pytest.mark.parametrize(
    "value",
    ["0001-01-01 00:00:00", "0001-01-01 23:59:59", "9999-12-31 00:00:00", "9999-12-31 23:59:59",
     "2024-03-10 02:30:00", "2024-11-03 01:30:00", "2024-04-07 02:15:00", "2024-02-29 12:00:00",
     "2023-02-29 12:00:00"],
)
def test_fast_datetime_at_the_edges(value: str, zone: tzinfo) -> None:
    got, want = _fast_datetime(value, zone), _old_datetime(value, zone)
    assert got == want
    assert repr(got) == repr(want)


@pytest.mark.parametrize(
    "value",
    ["2024-01-02 00:13:5\u0665", "\uff12024-01-02 00:13:55", "2024-01-02 00:13:55 ", " 2024-01-02 00:13:55",
     "2024-01-02 00:13:55\n", "2024-01-0200:13:55", "2024-01-02 00:13", "2024-01-02T00:13+01", 20240102,
     _StrSub("2024-01-02 00:13:55"), b"2024-01-02 00:13:55"],
    ids=repr,
)
def test_fast_datetime_declines_other_shapes(value: Any) -> None:
    assert _fast_datetime(value, UTC) is None


@pytest.mark.parametrize(
    ("source", "rid"),
    [
        pytest.param("pos:CLUB-0:1", 5, id="usual"),
        pytest.param(" pos:1 ", 5, id="padded"),
        pytest.param("a\x00b", 5, id="nul"),
        pytest.param("a\x7fb", 5, id="del"),
        pytest.param("a\x85b", 5, id="c1-control"),
        pytest.param("caf\u00e9", 5, id="non-ascii"),
        pytest.param("\ud800", 5, id="lone-surrogate"),
        pytest.param("x" * 240, 5, id="long-source"),
        pytest.param("perkamo:tx_1", 5, id="round-trip"),
        pytest.param("perkamo:", 5, id="empty-round-trip"),
        pytest.param("perkamo:perkville:25:txn:1", 5, id="perkville-round-trip"),
        pytest.param(None, "1" * 240, id="long-row-id"),
        pytest.param(None, "0" * 300, id="longer-row-id"),
    ],
)
@pytest.mark.parametrize("status", ["ACTIVE", "VOID"])
def test_transaction_ids_of_the_fast_path_equal_the_id_functions(source: str | None, rid: Any, status: str) -> None:
    row = {"transaction_id": rid, "user": "/v2/users/7/", "classification": "EARN",
           "points": 3, "transaction_dt": "2024-01-02 00:13:55", "transaction_status": status,
           "trans_source_id": source}
    for business in (25, "b 7"):
        fast = _fast_events(row, business, encode_business_id(business), UTC, None)
        assert fast is not None
        _same(fast, _reference_events(row, business, UTC, None))
