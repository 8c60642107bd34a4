"""Paging: the pure paginator and the client's loop over strict respx routers."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
import respx
from hypothesis import given, settings
from hypothesis import strategies as st

from connectors.perkville import OffsetPaginator, PaginationError

from .conftest import API, FakeTime, make_client, page, token_route

URL = API + "transactions/"


def rows(start: int, count: int) -> list[dict[str, Any]]:
    return [{"transaction_id": n} for n in range(start, start + count)]


# ----------------------------------------------------------------- the paginator alone (no I/O)
def test_follows_relative_next_against_the_request_url() -> None:
    paginator = OffsetPaginator(URL, {"business": 25}, page_size=2)
    assert paginator.first_request.params == {"business": "25", "limit": "2", "offset": "0"}
    nxt = paginator.next_request(
        page(rows(1, 2), limit=2, offset=0, next="/v2/transactions/?business=25&limit=2&offset=2")
    )
    assert nxt is not None
    assert nxt.url == "https://api.perkville.test/v2/transactions/?business=25&limit=2&offset=2"
    assert nxt.params == {}
    assert paginator.next_request(page(rows(3, 1), limit=2, offset=2, next=None)) is None


def test_follows_absolute_next() -> None:
    paginator = OffsetPaginator(URL, page_size=2)
    link = "https://api.perkville.test/v2/transactions/?limit=2&offset=2"
    nxt = paginator.next_request(page(rows(1, 2), next=link))
    assert nxt is not None and nxt.url == link


def test_refuses_a_next_link_to_another_host() -> None:
    paginator = OffsetPaginator(URL, page_size=2)
    with pytest.raises(PaginationError, match="another host") as info:
        paginator.next_request(page(rows(1, 2), next="https://evil.test/v2/transactions/?offset=2"))
    assert info.value.path == "/v2/transactions/"


@pytest.mark.parametrize(
    ("meta", "objects", "expected_offset"),
    [
        ({"limit": 50, "offset": 0}, 50, 50),  # server capped our 100 to 50
        ({"limit": 100, "offset": 0}, 30, 30),  # short page: never skip rows
        ({}, 7, 7),  # no meta at all: advance by what came back
        ({"limit": "25", "offset": "0"}, 25, 25),  # numbers as strings
    ],
    ids=["capped-limit", "short-page", "no-meta", "string-numbers"],
)
def test_offset_mode_advances_by_the_returned_limit(
    meta: dict[str, Any], objects: int, expected_offset: int
) -> None:
    paginator = OffsetPaginator(URL, page_size=100)
    nxt = paginator.next_request(page(rows(1, objects), **meta))
    assert nxt is not None
    assert nxt.params["offset"] == str(expected_offset)
    assert nxt.params["limit"] == "100"


def test_empty_page_ends_the_list_even_with_a_next_link() -> None:
    paginator = OffsetPaginator(URL, page_size=2)
    assert paginator.next_request(page([], next="/v2/transactions/?offset=99")) is None


def test_repeated_next_link_is_an_error_not_a_loop() -> None:
    paginator = OffsetPaginator(URL, page_size=2)
    link = "/v2/transactions/?limit=2&offset=2"
    paginator.next_request(page(rows(1, 2), next=link))
    with pytest.raises(PaginationError, match="repeated a next link"):
        paginator.next_request(page(rows(3, 2), next=link))


def test_next_link_equal_to_the_current_request_is_repeated() -> None:
    paginator = OffsetPaginator(URL, {"business": 25}, page_size=2)
    with pytest.raises(PaginationError):
        paginator.next_request(page(rows(1, 2), next="/v2/transactions/?offset=0&limit=2&business=25"))


def test_page_without_objects_is_a_pagination_error() -> None:
    with pytest.raises(PaginationError, match="objects"):
        OffsetPaginator(URL).next_request({"meta": {}})


# ----------------------------------------------------------------- the client loop over respx
def test_client_pages_with_relative_next(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    route = router.get(URL).mock(
        side_effect=[
            httpx.Response(
                200, json=page(rows(1, 2), limit=2, offset=0, next="/v2/transactions/?limit=2&offset=2")
            ),
            httpx.Response(
                200, json=page(rows(3, 2), limit=2, offset=2, next="/v2/transactions/?limit=2&offset=4")
            ),
            httpx.Response(200, json=page(rows(5, 1), limit=2, offset=4, next=None)),
        ]
    )
    client = make_client(router, fake_time, page_size=2)
    pages = list(client.iter_transactions())
    assert [row["transaction_id"] for p in pages for row in p.objects] == [1, 2, 3, 4, 5]
    assert [p.offset for p in pages] == [0, 2, 4]
    assert [dict(call.request.url.params) for call in route.calls] == [
        {"limit": "2", "offset": "0"},
        {"limit": "2", "offset": "2"},
        {"limit": "2", "offset": "4"},
    ]
    assert all(call.request.headers["Authorization"] == "Bearer tok-1" for call in route.calls)


def test_client_pages_with_absolute_next(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    route = router.get(URL).mock(
        side_effect=[
            httpx.Response(200, json=page(rows(1, 2), next=URL + "?limit=2&offset=2&business=25")),
            httpx.Response(200, json=page(rows(3, 1), next=None)),
        ]
    )
    client = make_client(router, fake_time, page_size=2)
    assert sum(len(p.objects) for p in client.iter_transactions(business=25)) == 3
    assert route.calls[1].request.url.params["offset"] == "2"


def test_client_offset_mode_with_server_capped_limit_until_empty_page(
    router: respx.MockRouter, fake_time: FakeTime
) -> None:
    token_route(router)
    route = router.get(URL).mock(
        side_effect=[
            httpx.Response(200, json=page(rows(1, 3), limit=3, offset=0)),
            httpx.Response(200, json=page(rows(4, 3), limit=3, offset=3)),
            httpx.Response(200, json=page(rows(7, 1), limit=3, offset=6)),
            httpx.Response(200, json=page([], limit=3, offset=7)),
        ]
    )
    client = make_client(router, fake_time, page_size=10)
    ids = [row["transaction_id"] for p in client.iter_transactions() for row in p.objects]
    assert ids == list(range(1, 8))
    assert [call.request.url.params["offset"] for call in route.calls] == ["0", "3", "6", "7"]
    assert {call.request.url.params["limit"] for call in route.calls} == {"10"}


def test_client_stops_on_a_repeated_next_link(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.get(URL).mock(
        return_value=httpx.Response(200, json=page(rows(1, 2), next="/v2/transactions/?limit=2&offset=2"))
    )
    client = make_client(router, fake_time, page_size=2)
    pages = client.iter_transactions()
    with pytest.raises(PaginationError) as info:
        for _ in pages:
            pass
    assert "?" not in str(info.value) and info.value.path == "/v2/transactions/"


# ----------------------------------------------------------------- invariant: every row exactly once
def _serve(request_url: str, params: dict[str, Any], rows: int, cap: int | None, mode: str) -> dict[str, Any]:
    """A minimal Tastypie list over ``range(rows)`` (what the paginator is asked to walk)."""
    from urllib.parse import parse_qsl, urlsplit

    query = dict(parse_qsl(urlsplit(request_url).query))
    query.update({k: str(v) for k, v in params.items()})
    limit = int(query.get("limit", 20))
    limit = min(limit, cap) if cap else limit
    offset = int(query.get("offset", 0))
    objects = [{"transaction_id": n} for n in range(offset, min(rows, offset + limit))]
    meta: dict[str, Any] = {"limit": limit, "offset": offset}
    if mode != "no-next":
        more = offset + limit < rows
        link = f"/v2/transactions/?limit={limit}&offset={offset + limit}"
        meta["next"] = (link if mode == "relative" else "https://api.perkville.test" + link) if more else None
    return page(objects, **meta)


@settings(max_examples=80, deadline=None)
@given(
    rows=st.integers(min_value=0, max_value=400),
    page_size=st.integers(min_value=1, max_value=120),
    cap=st.one_of(st.none(), st.integers(min_value=1, max_value=60)),
    mode=st.sampled_from(["relative", "absolute", "no-next"]),
)
def test_paginator_visits_every_row_exactly_once(
    rows: int, page_size: int, cap: int | None, mode: str
) -> None:
    paginator = OffsetPaginator(URL, page_size=page_size)
    request = paginator.first_request
    seen: list[int] = []
    requests = 0
    while request is not None:
        requests += 1
        body = _serve(request.url, dict(request.params), rows, cap, mode)
        seen.extend(row["transaction_id"] for row in body["objects"])
        request = paginator.next_request(body)
    assert seen == list(range(rows))
    step = min(page_size, cap or page_size)
    assert requests <= rows // step + 2
