"""Hypothesis invariants: mapping never raises on arbitrary JSON, and transaction ids are injective."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from mapping import (
    MAX_ID_LENGTH,
    RESERVED_CONTEXT_KEYS,
    encode_business_id,
    parse_business,
    parse_connection,
    parse_external_member,
    parse_location,
    parse_perk,
    parse_transaction,
    parse_transaction_id,
    parse_user,
    perkamo_origin_id,
    to_adjustment_transaction_id,
    to_events,
    to_identify,
    to_opening_balance_event,
    to_opening_transaction_id,
    to_perkville_transaction,
    to_program_modules,
    to_transaction_id,
    to_void_transaction_id,
)

# --- arbitrary JSON -----------------------------------------------------------------------------

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=30)
    | st.sampled_from(["", " ", "NaN", "-0", "1e999999", "2024-05-02 18:14:09", "/v2/users/1/", "/v2/perks/x/",
                      "EARN", "REDEEM", "VOID", "VOID_REF", "ACTIVE", "perkamo:", "perkamo:perkville:1:txn:1",
                      "0001-01-01T00:00:00+05:00", "9999-12-31 23:59:59-05:00", "\ud800", "a\x00b", "9999-12-31", "0001-01-01"])
)
json_values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                           | st.dictionaries(st.text(max_size=10), inner, max_size=4), max_leaves=12)
KNOWN_KEYS = [
    "transaction_id", "id", "resource_uri", "business", "user", "perk", "location", "title", "classification",
    "points", "quantity", "transaction_dt", "transaction_status", "status", "voucher", "trans_source_id",
    "user_id", "first_name", "last_name", "phone_number", "birthday", "emails", "email", "connection_id",
    "point_balance", "lifetime_earned_points", "level", "home_location", "external_join_dt", "perk_id",
    "from_date", "to_date", "redemption_limit_count", "redemption_limit_interval", "member_id", "join_dt",
    "limit_to_once_per_calendar_day", "location_id", "external_location_id", "name", "business_id",
]
VALID = {
    "transaction_id": 5, "business": "/v2/businesses/25/", "user": "/v2/users/7/", "perk": "/v2/perks/1/",
    "classification": "EARN", "points": 10, "quantity": 1, "transaction_dt": "2024-05-02 18:14:09",
    "transaction_status": "VOID", "user_id": 7, "emails": [{"email": "a@b.c"}], "connection_id": 3,
    "point_balance": 40, "perk_id": 1, "member_id": "M-1", "location_id": 311, "business_id": 25,
    "from_date": "2024-01-01", "to_date": "2024-12-31", "redemption_limit_count": 1, "home_location": 311,
}
# Records that look like Perkville's: a valid record with some fields replaced by arbitrary JSON,
# known keys with arbitrary values, or arbitrary JSON.
records = (
    st.dictionaries(st.sampled_from(KNOWN_KEYS), json_values, max_size=5).map(lambda bad: {**VALID, **bad})
    | st.dictionaries(st.sampled_from(KNOWN_KEYS), json_values, max_size=14)
    | json_values
)
PARSERS = (parse_business, parse_location, parse_perk, parse_user, parse_connection, parse_transaction,
           parse_external_member)


def _encodable(value: Any) -> None:
    json.dumps(value, default=lambda v: str(v) if isinstance(v, Decimal) else repr(v))


@settings(max_examples=300)
@given(raw=records, zone=st.sampled_from(["UTC", "America/Chicago", "Asia/Kathmandu"]))
def test_parsing_and_mapping_never_raise(raw: Any, zone: str) -> None:
    for parse in PARSERS:
        parsed = parse(raw, timezone=zone)
        assert parsed.record is not None or parsed.issues
    result = to_events(raw, business_id=25, timezone=zone)
    assert result.events or result.issues or result.skipped
    for event in result.events:
        assert len(event.transaction_id) <= MAX_ID_LENGTH
        assert not {k.lower() for k in event.context} & RESERVED_CONTEXT_KEYS
        assert event.occurred_at is not None and event.occurred_at.tzinfo is not None
        _encodable(event.to_wire())
    for issue in result.issues:
        _encodable(issue.model_dump())
    identify = to_identify(raw, connection=raw, external_member=raw, timezone=zone)
    if identify.call is not None:
        _encodable(identify.call.traits)
    to_opening_balance_event(raw, business_id=25, cutover_at=datetime(2026, 1, 1, tzinfo=UTC), timezone=zone)
    to_program_modules([raw], timezone=zone)
    to_perkville_transaction(raw, event_perks={"visit.checked_in": 1}, timezone=zone)


# --- transaction-id injectivity -------------------------------------------------------------------

hostile_pieces = st.sampled_from([
    ":", "::", "perkamo:", "perkville:", "perkville:25:txn:", ":txn:", ":src:", ":void:", ":h:", "txn", "src",
    "adjust", "opening", "h", "25", "a", "1", "é", "☕", "\x00", "\x7f", " ", "%", "%3A", "0" * 64,
])
hostile_text = st.lists(hostile_pieces | st.text(max_size=5), min_size=1, max_size=8).map("".join)
long_text = st.text(min_size=230, max_size=300)
ids = (hostile_text | long_text).filter(bool) | st.integers(min_value=0, max_value=10**12).map(str)
businesses = st.sampled_from(["25", "26", "a:b", "a%3Ab", "ä", " 25 "]) | st.integers(1, 10**6)
sources = st.none() | ids | ids.map(lambda s: "perkamo:" + s) | st.sampled_from(["", "  ", "perkamo:"])

keys = st.one_of(
    st.tuples(st.just("row"), businesses, ids, sources),
    st.tuples(st.just("void"), businesses, ids),
    st.tuples(st.just("opening"), businesses, ids),
    st.tuples(st.just("adjust"), businesses, ids, st.integers(0, 10**6)),
)


def _make(key: tuple[Any, ...]) -> str:
    kind, business = key[0], key[1]
    if kind == "row":
        return to_transaction_id(business, key[2], key[3])
    if kind == "void":
        return to_void_transaction_id(business, key[2])
    if kind == "opening":
        return to_opening_transaction_id(business, key[2])
    return to_adjustment_transaction_id(business, key[2], key[3])


def _identity(key: tuple[Any, ...]) -> tuple[Any, ...]:
    """What makes two inputs the same transaction (documented in docs/mapping.md)."""
    kind, business = key[0], encode_business_id(key[1])
    if kind == "row":
        source = key[3]
        if source is not None and source.strip():
            origin = perkamo_origin_id(source)
            return ("perkamo", origin) if origin is not None else ("src", business, source)
        return ("txn", business, key[2])
    return (kind, business, *key[2:])


@settings(max_examples=300)
@given(st.lists(keys, min_size=2, max_size=30))
def test_transaction_ids_are_injective(batch: list[tuple[Any, ...]]) -> None:
    owners: dict[str, tuple[Any, ...]] = {}
    for key in batch:
        made = _make(key)
        identity = _identity(key)
        assert len(made) <= MAX_ID_LENGTH
        assert owners.setdefault(made, identity) == identity, (made, identity, owners[made])
        parts = parse_transaction_id(made)
        if identity[0] == "perkamo":
            assert parts is None and made == identity[1]
        elif parts is not None and parts.namespace != "h":
            assert (parts.namespace, parts.business, parts.key, *([parts.n] if parts.n is not None else [])) == \
                identity
        else:
            assert parts is not None  # hashed ids still parse as namespace h


@given(key=keys)
def test_transaction_ids_are_deterministic(key: tuple[Any, ...]) -> None:
    assert _make(key) == _make(key)


@settings(max_examples=200)
@given(transaction_id=ids | st.text(max_size=300))
def test_every_written_back_id_maps_home(transaction_id: str) -> None:
    """A payload is only produced when its ``trans_source_id`` maps back to the same Perkamo id."""
    event = {"user_id": "perkville:7", "event": "visit.checked_in", "transaction_id": transaction_id}
    decision = to_perkville_transaction(event, event_perks={"visit.checked_in": 1})
    if decision.payload is None:
        assert decision.code is not None and decision.reason
        return
    assert to_transaction_id(25, "1", decision.payload.trans_source_id) == transaction_id
    assert not transaction_id.startswith("perkville:")
