"""Filters and orderings the schema does not list are not sent; the rows are checked on the client."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from connectors.perkville import PerkvilleClient
from connectors.perkville.guard import apply_guard, guard_for
from connectors.perkville.sandbox import Sandbox
from connectors.perkville.schema import discover, sendable


@pytest.fixture
def box() -> Any:
    with Sandbox(seed=8, members=15, transactions=200) as sandbox:
        yield sandbox


def _client(box: Sandbox) -> PerkvilleClient:
    return PerkvilleClient(**box.client_kwargs(), requests_per_second=None, page_size=50, max_retries=2)


def test_a_filter_the_schema_lacks_is_not_sent_and_applied_on_the_client(
    box: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    business = box.business_ids[0]
    client = _client(box)
    schema = discover(client, ("transactions",))
    # A Perkville whose transactions cannot be filtered by status: the schema says so.
    transactions = schema.of("transactions")
    assert transactions is not None
    filtering = {k: v for k, v in transactions.filtering.items() if k != "transaction_status"}
    trimmed = type(schema)(
        {"transactions": type(transactions)(**{**transactions.__dict__, "filtering": filtering})}
    )
    client.use_schema(trimmed)
    box.set_behaviour(unknown_filters="reject")
    with caplog.at_level(logging.WARNING):
        rows = [
            row
            for page in client.iter_transactions(business, transaction_status="VOID")
            for row in page.objects
        ]
    voids = sum(1 for t in box.ledger.txns.values() if t.business_id == business and t.status == "VOID")
    assert voids > 0 and len(rows) == voids
    assert {row["transaction_status"] for row in rows} == {"VOID"}
    warnings = [
        r.getMessage() for r in caplog.records if "schema lists no transaction_status" in r.getMessage()
    ]
    assert len(warnings) == 1  # one warning names the filter, not one per page
    assert client.stats["dropped_rows"] > 0


def test_an_ignored_exact_filter_is_caught_on_the_client(
    box: Sandbox, caplog: pytest.LogCaptureFixture
) -> None:
    business = box.business_ids[0]
    client = _client(box)
    box.set_behaviour(ignore_filters=True)  # the server ignores every filter it is sent
    with caplog.at_level(logging.WARNING):
        rows = [
            row
            for page in client.iter_transactions(business, transaction_status="VOID")
            for row in page.objects
        ]
    assert rows and {row["transaction_status"] for row in rows} == {"VOID"}
    assert any("ignored the transaction_status filter" in r.getMessage() for r in caplog.records)


def test_rows_without_the_filtered_field_are_kept_with_a_warning() -> None:
    from datetime import UTC

    guard = guard_for({"last_mod_dt__gte": "2025-01-01T00:00:00"}, UTC, "transaction_id")
    warned: list[str] = []
    kept, dropped = apply_guard(
        guard,
        [{"transaction_id": 1}, {"transaction_id": 2}],
        "/v2/transactions/",
        UTC,
        lambda key, message, *args: warned.append(key),
    )
    assert len(kept) == 2 and dropped == 0
    assert warned == ["missing:/v2/transactions/:last_mod_dt", "missing:/v2/transactions/:last_mod_dt"]


def test_sendable_without_a_schema_sends_everything() -> None:
    params = {"business": 25, "last_mod_dt__gte": "x", "order_by": ["-last_mod_dt"], "limit": 5}
    assert sendable(None, params) == (params, [])
