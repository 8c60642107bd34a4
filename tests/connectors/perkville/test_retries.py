"""Robustness: backoff, Retry-After (seconds and HTTP-date), the retry budget, broken pages, pacing."""

from __future__ import annotations

import random
from datetime import UTC, datetime
from email.utils import format_datetime

import httpx
import pytest
import respx

from connectors.perkville import InvalidPageError, RetriableError, RetryBudgetExhausted
from connectors.perkville.pacing import Backoff, parse_retry_after

from .conftest import API, FakeTime, make_client, page, token_route

URL = API + "transactions/"
OK = httpx.Response(200, json=page([{"transaction_id": 1}], next=None))


def test_retry_after_seconds_is_honoured(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.get(URL).mock(side_effect=[httpx.Response(429, headers={"Retry-After": "7"}), OK])
    client = make_client(router, fake_time)
    assert len(list(client.iter_transactions())) == 1
    assert fake_time.sleeps == [7.0]


def test_retry_after_http_date_is_honoured(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    when = datetime.fromtimestamp(fake_time.now + 12, tz=UTC)
    router.get(URL).mock(
        side_effect=[httpx.Response(503, headers={"Retry-After": format_datetime(when, usegmt=True)}), OK]
    )
    client = make_client(router, fake_time)
    list(client.iter_transactions())
    assert fake_time.sleeps == [pytest.approx(12.0, abs=1.0)]


def test_retry_after_is_capped(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.get(URL).mock(side_effect=[httpx.Response(429, headers={"Retry-After": "86400"}), OK])
    client = make_client(router, fake_time, max_retry_after=60)
    list(client.iter_transactions())
    assert fake_time.sleeps == [60]


@pytest.mark.parametrize(
    "failure",
    [
        httpx.Response(500),
        httpx.Response(502),
        httpx.Response(429),
        httpx.ConnectError("refused"),
        httpx.ReadTimeout("slow"),
        httpx.RemoteProtocolError("dropped"),
    ],
    ids=["500", "502", "429-no-header", "connect-error", "read-timeout", "dropped"],
)
def test_transient_failures_back_off_exponentially_with_jitter(
    router: respx.MockRouter, fake_time: FakeTime, failure: object
) -> None:
    token_route(router)
    router.get(URL).mock(side_effect=[failure, failure, failure, OK])
    client = make_client(router, fake_time, backoff_base=1.0, backoff_max=100.0, rng=random.Random(3))
    list(client.iter_transactions())
    assert len(fake_time.sleeps) == 3
    for attempt, slept in enumerate(fake_time.sleeps):
        assert 2**attempt / 2 <= slept <= 2**attempt


def test_budget_exhausted_carries_the_sanitized_path(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router, token="tok-secret-value")
    route = router.get(URL).mock(return_value=httpx.Response(503))
    client = make_client(router, fake_time, max_retries=3)
    with pytest.raises(RetryBudgetExhausted) as info:
        list(client.iter_transactions(business=25, trans_source_id="private-id"))
    error = info.value
    assert isinstance(error, RetriableError)
    assert error.path == "/v2/transactions/"
    assert error.attempts == 4 and route.call_count == 4
    assert "HTTP 503" in str(error)
    for leaked in ("?", "private-id", "tok-secret-value", "business=25"):
        assert leaked not in str(error)
    assert len(fake_time.sleeps) == 3


@pytest.mark.parametrize(
    "body",
    [b'{"meta": {}, "objects": [{"transac', b"<html>502</html>", b"\xff\xfe"],
    ids=["truncated-json", "html", "binary"],
)
def test_invalid_json_page_is_retried_then_reported_with_its_path(
    router: respx.MockRouter, fake_time: FakeTime, body: bytes
) -> None:
    token_route(router)
    route = router.get(URL).mock(return_value=httpx.Response(200, content=body))
    client = make_client(router, fake_time, max_retries=2)
    with pytest.raises(InvalidPageError) as info:
        list(client.iter_transactions())
    assert info.value.path == "/v2/transactions/"
    assert route.call_count == 3


def test_invalid_json_then_good_page_recovers(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.get(URL).mock(side_effect=[httpx.Response(200, content=b'{"objects": [{'), OK])
    client = make_client(router, fake_time)
    assert [p.objects for p in client.iter_transactions()] == [[{"transaction_id": 1}]]


def test_client_side_pacing_never_goes_above_the_ceiling(router: respx.MockRouter, fake_time: FakeTime) -> None:
    token_route(router)
    router.get(URL).mock(
        side_effect=[
            httpx.Response(200, json=page([{"transaction_id": n}], limit=1, offset=n)) for n in range(8)
        ]
        + [httpx.Response(200, json=page([], limit=1, offset=8))]
    )
    client = make_client(router, fake_time, requests_per_second=4.0, page_size=1, max_in_flight=1)
    list(client.iter_transactions())
    # First request free; it starts at half the ceiling (0.5 s apart), then grows to 4/s at most.
    assert fake_time.sleeps[0] == pytest.approx(0.5)
    assert all(slept >= 0.25 - 1e-9 for slept in fake_time.sleeps)
    assert fake_time.sleeps[-1] == pytest.approx(0.25)
    assert client.budget.rate == 4.0


# ----------------------------------------------------------------- the pure pieces
def test_backoff_is_capped() -> None:
    backoff = Backoff(base=1.0, cap=5.0, rng=random.Random(1))
    assert all(2.5 <= backoff.delay(attempt) <= 5.0 for attempt in range(3, 40))


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("0", 0.0),
        ("3", 3.0),
        ("2.5", 2.5),
        ("Thu, 01 Jan 1970 00:01:40 GMT", 60.0),
        ("Thu, 01 Jan 1970 00:00:10 GMT", 0.0),
        ("-1", None),
        ("soon", None),
        ("", None),
        (None, None),
    ],
    ids=["zero", "int", "float", "date-future", "date-past", "negative", "word", "empty", "absent"],
)
def test_parse_retry_after(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header, now=40.0) == expected


@pytest.mark.parametrize(
    ("api_url", "token_url", "setting"),
    [
        pytest.param("ftp://files.example/v2/", "https://unused.example/token/", "PERKVILLE_API_URL", id="api"),
        pytest.param("https://unused.example/v2/", "ftp://files.example/token/", "PERKVILLE_TOKEN_URL", id="token"),
    ],
)
def test_a_url_that_cannot_be_requested_fails_at_once_without_retries(
    api_url: str, token_url: str, setting: str
) -> None:
    from connectors.perkville import PerkvilleClient
    from connectors.perkville.errors import ConfigurationError

    sleeps: list[float] = []
    client = PerkvilleClient(
        api_url, token_url, client_id="c", client_secret="cs-s3cret", username="u", password="pw-s3cret",
        access_token="tok-s3cret" if setting == "PERKVILLE_API_URL" else None,
        requests_per_second=None, sleep=sleeps.append,
    )
    try:
        with pytest.raises(ConfigurationError) as info:
            next(iter(client.iter_businesses()))
    finally:
        client.close()
    assert f"{setting} cannot be requested (UnsupportedProtocol)" in str(info.value)
    assert "s3cret" not in str(info.value)
    assert sleeps == []
