"""The sandbox's order agrees with what it shows: a clean sandbox is never flagged as ignoring order_by."""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from connectors.perkville import PerkvilleClient
from connectors.perkville.sandbox import Sandbox

BUSINESS = 25


def _fractional_clock() -> Iterator[datetime]:
    """A clock that moves 0.3 s a tick: several mutations share one shown second."""
    start = datetime(2026, 3, 1, 12, 0, 0, 900_000, tzinfo=UTC)
    for n in itertools.count():
        yield start + timedelta(microseconds=300_000 * n)


@pytest.fixture
def busy() -> Iterator[Sandbox]:
    ticks = _fractional_clock()
    sandbox = Sandbox(seed=5, members=30, transactions=300, now=lambda: next(ticks))
    sandbox.start()
    ledger = sandbox.ledger
    business = ledger.businesses[BUSINESS]
    earn = business.perk_ids[1]
    users = [ledger.connections[c]["user"] for c in business.connection_ids[:6]]
    # Activity and voids in quick succession, so equal shown seconds hold rows whose full-precision
    # times would sort differently from their ids.
    added = [sandbox.add_transaction(business=BUSINESS, perk=earn, user=u) for u in users * 3]
    for row in reversed(added[::2]):
        sandbox.void_transaction(row["transaction_id"])
    yield sandbox
    sandbox.stop()


@pytest.mark.parametrize(
    "order",
    [
        pytest.param(["last_mod_dt", "transaction_id"], id="last_mod_dt"),
        pytest.param(["transaction_dt", "transaction_id"], id="transaction_dt"),
    ],
)
def test_a_clean_sandbox_is_never_flagged_as_ignoring_order(
    busy: Sandbox, order: list[str], caplog: pytest.LogCaptureFixture
) -> None:
    since = datetime(2026, 3, 1, tzinfo=UTC)
    kwargs: dict[str, Any] = {**busy.client_kwargs(), "requests_per_second": None, "page_size": 7}
    field = order[0]
    with caplog.at_level(logging.WARNING, logger="connectors.perkville"), PerkvilleClient(**kwargs) as client:
        pages = list(client.iter_transactions(BUSINESS, order_by=order, **{f"{field}_gte": since}))
    rows = [row for page in pages for row in page.objects]
    assert len(rows) == 18 + 9  # the activity (half of it voided since) and its VOID_REF rows
    assert all(page.ordered for page in pages)
    assert "ignored order_by" not in caplog.text
    shown = [(row[field], row["transaction_id"]) for row in rows]
    assert shown == sorted(shown)
    assert len({row[field] for row in rows}) < len(rows)  # equal shown seconds did occur


def test_stored_times_are_what_the_sandbox_shows(busy: Sandbox) -> None:
    txns = busy.ledger.businesses[BUSINESS].txns
    recent = [t for t in txns if t.last_mod >= datetime(2026, 3, 1, tzinfo=UTC)]
    assert recent and all(t.last_mod.microsecond == 0 and t.dt.microsecond == 0 for t in recent)
