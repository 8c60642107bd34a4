"""Incremental reads: filters sent, and detection of a server that ignores filters or order_by."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta

import httpx
import pytest
import respx

from .conftest import API, FakeTime, make_client, page, token_route

URL = API + "transactions/"
UTC = UTC
START = datetime(2024, 5, 1, tzinfo=UTC)
END = datetime(2024, 5, 2, tzinfo=UTC)


def txn(txn_id: int, when: str, business: int = 25) -> dict[str, object]:
    return {"transaction_id": txn_id, "transaction_dt": when, "business": f"/v2/businesses/{business}/"}


def test_window_filters_and_order_are_sent(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    route = router.get(URL).mock(
        return_value=httpx.Response(200, json=page([txn(1, "2024-05-01 10:00:00")], next=None))
    )
    client = make_client(router, fake_time, timezone="America/Chicago")
    list(
        client.iter_transactions(
            25, transaction_dt_gte=START, transaction_dt_lt=END, order_by=["transaction_dt", "transaction_id"]
        )
    )
    params = route.calls.last.request.url.params
    assert params["business"] == "25"
    assert params["transaction_dt__gte"] == "2024-04-30T19:00:00"  # naive, in PERKVILLE_TIMEZONE
    assert params["transaction_dt__lt"] == "2024-05-01T19:00:00"
    assert params.get_list("order_by") == ["transaction_dt", "transaction_id"]


def test_ignored_window_filter_is_detected_warned_once_and_filtered(
    router: respx.MockRouter, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    token_route(router)
    router.get(URL).mock(
        side_effect=[
            httpx.Response(
                200,
                json=page([txn(1, "2024-04-30 23:59:59"), txn(2, "2024-05-01 00:00:00")], limit=2, offset=0),
            ),
            httpx.Response(
                200,
                json=page([txn(3, "2024-05-01 23:59:59"), txn(4, "2024-05-02 00:00:00")], limit=2, offset=2),
            ),
            httpx.Response(200, json=page([], limit=2, offset=4)),
        ]
    )
    client = make_client(router, fake_time, page_size=2)
    with caplog.at_level(logging.WARNING, logger="connectors.perkville"):
        pages = list(client.iter_transactions(transaction_dt_gte=START, transaction_dt_lt=END))
    assert [row["transaction_id"] for p in pages for row in p.objects] == [2, 3]  # half-open window
    assert [p.dropped for p in pages] == [1, 1, 0]
    assert caplog.text.count("ignored the transaction_dt filter") == 1


def test_ignored_business_filter_is_detected(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.get(URL).mock(
        return_value=httpx.Response(
            200, json=page([txn(1, "2024-05-01 01:00:00", 25), txn(2, "2024-05-01 01:00:00", 26)], next=None)
        )
    )
    client = make_client(router, fake_time)
    pages = list(client.iter_transactions(business=25))
    assert [row["transaction_id"] for row in pages[0].objects] == [1]
    assert pages[0].dropped == 1


def test_ignored_order_is_detected_and_pages_sorted(
    router: respx.MockRouter, fake_time: FakeTime, caplog: pytest.LogCaptureFixture
) -> None:
    token_route(router)
    router.get(URL).mock(
        side_effect=[
            httpx.Response(
                200,
                json=page(
                    [
                        txn(5, "2024-05-01 02:00:00"),
                        txn(3, "2024-05-01 01:00:00"),
                        txn(4, "2024-05-01 01:00:00"),
                    ],
                    limit=3,
                    offset=0,
                ),
            ),
            httpx.Response(200, json=page([], limit=3, offset=3)),
        ]
    )
    client = make_client(router, fake_time, page_size=3)
    with caplog.at_level(logging.WARNING, logger="connectors.perkville"):
        pages = list(client.iter_transactions(order_by=["transaction_dt", "transaction_id"]))
    assert [row["transaction_id"] for row in pages[0].objects] == [3, 4, 5]  # ties broken by id
    assert pages[0].ordered is False
    assert "ignored order_by" in caplog.text


def test_order_violation_across_pages_is_detected(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.get(URL).mock(
        side_effect=[
            httpx.Response(200, json=page([txn(1, "2024-05-01 05:00:00")], limit=1, offset=0)),
            httpx.Response(200, json=page([txn(2, "2024-05-01 04:00:00")], limit=1, offset=1)),
            httpx.Response(200, json=page([], limit=1, offset=2)),
        ]
    )
    client = make_client(router, fake_time, page_size=1)
    pages = list(client.iter_transactions(order_by="transaction_dt"))
    assert [p.ordered for p in pages] == [True, False, False]


def test_ordered_stream_stays_ordered(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.get(URL).mock(
        return_value=httpx.Response(
            200,
            json=page(
                [
                    txn(1, "2024-05-01 01:00:00"),
                    txn(2, "2024-05-01 01:00:00"),
                    txn(3, "2024-05-01T02:00:00Z"),
                ],
                next=None,
            ),
        )
    )
    client = make_client(router, fake_time)
    pages = list(client.iter_transactions(order_by=["transaction_dt", "transaction_id"]))
    assert pages[0].ordered and pages[0].dropped == 0


def test_windows_walk_the_range_and_collapse_when_the_filter_is_ignored(
    router: respx.MockRouter, fake_time: FakeTime
) -> None:
    token_route(router)
    everything = [
        txn(1, "2024-05-01 01:00:00"),
        txn(2, "2024-05-02 01:00:00"),
        txn(3, "2024-05-03 01:00:00"),
        txn(4, "2024-05-04 01:00:00"),
    ]
    route = router.get(URL).mock(return_value=httpx.Response(200, json=page(everything, next=None)))
    client = make_client(router, fake_time)
    pages = list(
        client.iter_windows(
            "transactions",
            field="transaction_dt",
            start=START,
            end=START + timedelta(days=4),
            window=timedelta(days=1),
            business=25,
        )
    )
    assert [row["transaction_id"] for p in pages for row in p.objects] == [1, 2, 3, 4]
    # Window 1 exposed the ignored filter; the remaining three days were read in ONE scan.
    assert route.call_count == 2
    second = route.calls[1].request.url.params
    assert second["transaction_dt__gte"] == "2024-05-02T00:00:00"
    assert second["transaction_dt__lt"] == "2024-05-05T00:00:00"
