"""The bridge never reuses a transaction_id for another payload (Perkamo answers that with a 409).

A transaction id names one business action; the core compares the payload of a replay
(``payload_fingerprint``: customer, event, context; not ``occurred_at``) with the first one. The
mapping must therefore give every Perkville record the same id and the same payload each time it
is read (again, in another page order, through the fast or the reference path, and under another
``PERKVILLE_TIMEZONE``, which moves only ``occurred_at``), and distinct records distinct ids or equal
payloads. Perkville keeps ``transaction_id`` unique, and ``trans_source_id`` unique per business.
The one designed exception is a write-back coming home (``trans_source_id`` ``perkamo:{T}``): it maps
to the Perkamo id T, whose event Perkamo holds in its own shape; the bridge names those ids to the
core as echoes (``bridge.targets.echo_ids``), and they are exactly the ids not starting with
``perkville:``.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from bridge.targets import echo_ids
from mapping import (
    parse_transaction,
    to_adjustment_event,
    to_events,
    to_events_many,
    to_opening_balance_event,
)
from mapping.types import PerkamoEvent
from perkamo_core.service import payload_fingerprint

BUSINESS = 25
ZONES = ["UTC", "America/Chicago", "Asia/Kathmandu", "Pacific/Kiritimati"]

sources = st.one_of(
    st.none(),
    st.just(""),
    st.text(alphabet="abcXYZ019:-_ é", min_size=1, max_size=12),
    st.text(alphabet="abc019:-_", min_size=1, max_size=12).map(lambda s: "perkamo:" + s),
    st.just("x" * 300),
)


@st.composite
def ledgers(draw: st.DrawFn) -> list[dict[str, Any]]:
    """Perkville ledger rows with unique transaction ids and unique non-empty trans_source_ids."""
    count = draw(st.integers(min_value=1, max_value=25))
    ids = draw(st.lists(st.integers(min_value=1, max_value=10**9), min_size=count, max_size=count, unique=True))
    used_sources: set[str] = set()
    rows = []
    for txid in ids:
        source = draw(sources)
        if source is not None and source.strip():
            if source in used_sources:
                source = None
            else:
                used_sources.add(source)
        row: dict[str, Any] = {
            "transaction_id": txid,
            "business": f"/v2/businesses/{BUSINESS}/",
            "user": f"/v2/users/{draw(st.integers(1, 6))}/",
            "perk": f"/v2/perks/{draw(st.integers(1, 4))}/",
            "title": draw(st.sampled_from(["Visit", "Smoothie", None])),
            "classification": draw(st.sampled_from(["EARN", "REDEEM"])),
            "points": draw(st.integers(-500, 500) | st.decimals(-500, 500, places=2)),
            "quantity": draw(st.sampled_from([1, 2, None])),
            "transaction_dt": draw(st.sampled_from(["2024-05-02 18:14:09", "2025-12-31 23:59:59", "2026-03-29 02:30:00"])),
            "transaction_status": draw(st.sampled_from(["ACTIVE", "ACTIVE", "VOID", "VOID_REF"])),
            "location": draw(st.sampled_from([None, "/v2/locations/311/"])),
        }
        if source is not None:
            row["trans_source_id"] = source
        rows.append({k: (str(v) if isinstance(v, Decimal) else v) for k, v in row.items()})
    return rows


def _payloads(events: Iterable[PerkamoEvent]) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for e in events:
        out.setdefault(e.transaction_id, set()).add(payload_fingerprint(e.user_id, e.event, dict(e.context)))
    return out


def _mapped(rows: list[dict[str, Any]], zone: str, fast: bool) -> list[PerkamoEvent]:
    if fast:
        results = to_events_many(rows, business_id=BUSINESS, timezone=zone)
    else:  # a parsed record always takes the reference path
        parsed = [parse_transaction(row, timezone=zone).record for row in rows]
        results = [to_events(p, business_id=BUSINESS, timezone=zone) for p in parsed if p is not None]
    return [e for result in results for e in result.events]


@settings(max_examples=200)
@given(rows=ledgers(), zones=st.lists(st.sampled_from(ZONES), min_size=2, max_size=2), data=st.data())
def test_distinct_records_never_share_an_id_with_another_payload(
    rows: list[dict[str, Any]], zones: list[str], data: st.DataObject
) -> None:
    first = _mapped(rows, zones[0], fast=True)
    payloads = _payloads(first)
    for txid, fingerprints in payloads.items():
        assert len(fingerprints) == 1, txid  # one id, one payload, within a read
    # Read again: in another order, through the reference path, under another timezone.
    again = _mapped(data.draw(st.permutations(rows)), zones[1], fast=False)
    assert _payloads(again) == payloads
    # The echoes the targets name to the core are exactly the write-backs coming home.
    homecoming = {
        row["trans_source_id"][len("perkamo:"):] for row in rows
        if str(row.get("trans_source_id", "")).startswith("perkamo:") and row.get("transaction_status") != "VOID_REF"
        and len(row["trans_source_id"]) > len("perkamo:")
    }
    assert echo_ids(first) == homecoming & set(payloads)


@settings(max_examples=100)
@given(
    users=st.lists(st.integers(1, 10**6), min_size=1, max_size=8, unique=True),
    balance=st.integers(-10**6, 10**6),
    cutovers=st.lists(st.datetimes(min_value=datetime(2020, 1, 1), max_value=datetime(2030, 1, 1)), min_size=2, max_size=2),
)
def test_opening_balances_and_adjustments_are_stable_per_member(
    users: list[int], balance: int, cutovers: list[datetime]
) -> None:
    def openings(cutover: datetime) -> list[PerkamoEvent]:
        out: list[PerkamoEvent] = []
        for user in users:
            connection = {"connection_id": user + 1, "business": f"/v2/businesses/{BUSINESS}/",
                          "user": f"/v2/users/{user}/", "point_balance": balance, "status": "ACTIVE"}
            out.extend(to_opening_balance_event(connection, business_id=BUSINESS,
                                                cutover_at=cutover.replace(tzinfo=UTC)).events)
        return out

    first = _payloads(openings(cutovers[0]))
    assert len(first) == len(users) and all(len(p) == 1 for p in first.values())
    assert _payloads(openings(cutovers[1])) == first  # the cut-over instant is occurred_at only

    adjustments = [
        e for user in users for n in range(3)
        for e in to_adjustment_event(business_id=BUSINESS, perkville_user_id=user, n=n, amount=n + 1,
                                     occurred_at=cutovers[0].replace(tzinfo=UTC)).events
    ]
    payloads = _payloads(adjustments)
    assert len(payloads) == 3 * len(users) and all(len(p) == 1 for p in payloads.values())
