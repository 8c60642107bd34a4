"""Unit tests of the remote Perkamo client against strict respx routers (no network)."""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any

import httpx
import pytest
import respx

from connectors.perkamo import (
    PerkamoApiError,
    PerkamoClient,
    PerkamoConnectionError,
    PerkamoInputError,
    RateLimit,
    sign,
)
from connectors.perkamo.signing import base_string

BASE = "http://perkamo.test"
KEY = "sk_test_Zx9SECRETvalue0123456789abcdef"
NOW = 1_780_000_000.0


@dataclass
class FakeTime:
    """A clock that only moves when the client sleeps; records every sleep."""

    now: float = NOW
    sleeps: list[float] = field(default_factory=list)

    def clock(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


@pytest.fixture
def router() -> Iterator[respx.Router]:
    strict = respx.Router(base_url=BASE, assert_all_called=True, assert_all_mocked=True)
    yield strict
    strict.assert_all_called()


@pytest.fixture
def fake_time() -> FakeTime:
    return FakeTime()


@pytest.fixture
def client(router: respx.Router, fake_time: FakeTime) -> Iterator[PerkamoClient]:
    with PerkamoClient(
        KEY,
        base_url=BASE,
        transport=httpx.MockTransport(router.handler),
        sleep=fake_time.sleep,
        clock=fake_time.clock,
    ) as perkamo:
        yield perkamo


def _ok_event() -> dict[str, Any]:
    return {
        "applied": True,
        "duplicate": False,
        "delta": [{"wallet": "points", "amount": 50}],
        "leveled_up": False,
        "unlocked": [],
        "wallet_state": {"points": 50},
        "level": None,
    }


def _assert_signed(request: httpx.Request, path: str) -> None:
    timestamp = request.headers["x-perkamo-timestamp"]
    assert re.fullmatch(r"v1=[a-f0-9]{64}", request.headers["x-perkamo-signature"])
    assert request.headers["x-perkamo-signature"] == sign(KEY, timestamp, request.method, path, request.content)


# -- signing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "timestamp", "method", "path", "body", "expected"),
    [
        pytest.param(
            "sk_test",
            1700000000,
            "POST",
            "/v1/events",
            b'{"space":"demo"}',
            "v1=6bbc1e5ba44b90642cb2f878838723f95d0272760c9bae93162479595e765621",
            id="sdk-test-vector",
        ),
        pytest.param(
            "sk_test",
            "1700000000",
            "post",
            "/v1/events",
            b'{"space":"demo"}',
            "v1=6bbc1e5ba44b90642cb2f878838723f95d0272760c9bae93162479595e765621",
            id="method-upper-cased-timestamp-as-text",
        ),
    ],
)
def test_sign_matches_the_sdk_test_vector(
    key: str, timestamp: int | str, method: str, path: str, body: bytes, expected: str
) -> None:
    assert sign(key, timestamp, method, path, body) == expected


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        pytest.param(b"", "v1.1700000000.GET./v1/program.", id="no-body-empty-hash"),
        pytest.param(
            b"{}",
            "v1.1700000000.GET./v1/program.44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a",
            id="body-sha256",
        ),
    ],
)
def test_base_string(body: bytes, expected: str) -> None:
    assert base_string("1700000000", "GET", "/v1/program", body) == expected


def test_emit_signs_and_generates_a_transaction_id(router: respx.Router, client: PerkamoClient) -> None:
    route = router.post("/v1/events").respond(200, json=_ok_event())
    result = client.emit("customer_123", "purchase.completed", {"amount": 12900, "currency": "CZK"})
    assert result["applied"] is True
    assert result["delta"] == [{"wallet": "points", "amount": 50}]
    request = route.calls.last.request
    assert request.headers["x-perkamo-api-key"] == KEY
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    assert request.headers["x-perkamo-timestamp"] == str(int(NOW))
    _assert_signed(request, "/v1/events")
    body = json.loads(request.content)
    assert re.fullmatch(r"tx_[0-9a-f]{32}", body["transaction_id"])
    assert body["user_id"] == "customer_123"
    assert body["event"] == "purchase.completed"
    assert body["context"] == {"amount": 12900, "currency": "CZK"}
    assert body["occurred_at"] == datetime.fromtimestamp(NOW, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")
    assert "tenant" not in body and "space" not in body


def test_emit_keeps_given_ids_and_formats_datetimes(router: respx.Router, client: PerkamoClient) -> None:
    route = router.post("/v1/events").respond(200, json=_ok_event())
    when = datetime(2026, 6, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    client.emit("u1", "visit.checked_in", {"points": Decimal("12.5"), "n": Decimal("3")}, "order_1092", when)
    body = json.loads(route.calls.last.request.content)
    assert body["transaction_id"] == "order_1092"
    assert body["occurred_at"] == "2026-06-01T10:00:00.000Z"
    assert body["context"] == {"points": 12.5, "n": 3}


def test_get_requests_are_not_signed_and_ids_are_path_encoded(router: respx.Router, client: PerkamoClient) -> None:
    route = router.get(url__regex=r"/v1/customer/perkville%3A42%2Fx$").respond(
        200, json={"user_id": "perkville:42/x", "wallets": {"points": 10.5}}
    )
    customer = client.customer("perkville:42/x")
    assert customer["wallets"]["points"] == Decimal("10.5")
    request = route.calls.last.request
    assert request.headers["x-perkamo-api-key"] == KEY
    assert "x-perkamo-signature" not in request.headers
    assert "x-perkamo-timestamp" not in request.headers


@pytest.mark.parametrize(
    ("method_name", "args", "http_method", "path"),
    [
        pytest.param("identify", ("u1", {"plan": "premium"}), "POST", "/v1/identify", id="identify"),
        pytest.param("redeem", ("u1", "free_shipping", "redeem_1"), "POST", "/v1/rewards/redeem", id="redeem"),
        pytest.param("program", (), "GET", "/v1/program", id="program"),
        pytest.param("usage", (), "GET", "/v1/usage", id="usage"),
    ],
)
def test_each_method_hits_its_route(
    router: respx.Router, client: PerkamoClient, method_name: str, args: tuple[Any, ...], http_method: str, path: str
) -> None:
    route = router.request(http_method, path).respond(200, json={"ok": True})
    assert getattr(client, method_name)(*args) == {"ok": True}
    request = route.calls.last.request
    if http_method == "POST":
        _assert_signed(request, path)
    else:
        assert "x-perkamo-signature" not in request.headers


def test_redeem_body_and_generated_id(router: respx.Router, client: PerkamoClient) -> None:
    route = router.post("/v1/rewards/redeem").respond(200, json={"redeemed": True})
    client.redeem("u1", "free_shipping")
    body = json.loads(route.calls.last.request.content)
    assert body["user_id"] == "u1" and body["reward_key"] == "free_shipping"
    assert re.fullmatch(r"tx_[0-9a-f]{32}", body["transaction_id"])


def test_event_catalog_reads_blueprint_earning_rules(router: respx.Router, client: PerkamoClient) -> None:
    rules = [{"event": "purchase.completed", "label": "Purchase"}]
    router.get("/v1/program").respond(200, json={"blueprint": {"earningRules": rules}})
    assert client.event_catalog() == rules


def test_base_url_prefix_is_part_of_the_signed_path(router: respx.Router, fake_time: FakeTime) -> None:
    strict = respx.Router(base_url=BASE + "/perkamo", assert_all_called=True, assert_all_mocked=True)
    route = strict.post("/v1/identify").respond(200, json={"user_id": "u1"})
    with PerkamoClient(
        KEY, base_url=BASE + "/perkamo/", transport=httpx.MockTransport(strict.handler), clock=fake_time.clock
    ) as perkamo:
        perkamo.identify("u1")
    _assert_signed(route.calls.last.request, "/perkamo/v1/identify")
    strict.assert_all_called()


# -- batch ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Event:
    user_id: str
    event: str
    transaction_id: str | None
    context: dict[str, Any]
    occurred_at: datetime | None


def test_batch_accepts_mappings_and_event_objects(router: respx.Router, client: PerkamoClient) -> None:
    route = router.post("/v1/events:batch").respond(200, json={"results": [_ok_event(), _ok_event()]})
    events = [
        {"user_id": "u1", "event": "page.viewed", "transaction_id": "pv_1", "context": {"path": "/pricing"}},
        _Event("u2", "perkville.points_earned", "perkville:b:txn:9", {"points": 5}, datetime(2026, 1, 1, tzinfo=UTC)),
    ]
    result = client.batch(events)
    assert len(result["results"]) == 2
    request = route.calls.last.request
    _assert_signed(request, "/v1/events:batch")
    sent = json.loads(request.content)["events"]
    assert [item["transaction_id"] for item in sent] == ["pv_1", "perkville:b:txn:9"]
    assert sent[1]["occurred_at"] == "2026-01-01T00:00:00.000Z"


@pytest.mark.parametrize(
    ("events", "field"),
    [
        pytest.param([], "events", id="empty"),
        pytest.param(
            [{"user_id": "u", "event": "e", "transaction_id": f"t{i}"} for i in range(101)], "events", id="over-100"
        ),
        pytest.param([{"user_id": "u", "event": "e"}], "events[0].transaction_id", id="missing-transaction-id"),
        pytest.param(
            [{"user_id": "u", "event": "e", "transaction_id": "t", "context": {"Level": 3}}],
            "events[0].context.Level",
            id="reserved-key-in-item",
        ),
    ],
)
def test_batch_rejects_before_sending(router: respx.Router, client: PerkamoClient, events: list[Any], field: str) -> None:
    with pytest.raises(PerkamoInputError) as caught:
        client.batch(events)
    assert caught.value.field == field


# -- local validation ----------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["xp", "XP", "Wallet", "wallets", "rewards", "level", "perks", "Achievements"])
def test_reserved_context_keys_are_rejected_before_sending(router: respx.Router, client: PerkamoClient, key: str) -> None:
    with pytest.raises(PerkamoInputError) as caught:
        client.emit("u1", "purchase.completed", {key: 100})
    assert caught.value.field == f"context.{key}"
    assert "reserved" in str(caught.value)


def test_reserved_names_are_allowed_below_the_top_level(router: respx.Router, client: PerkamoClient) -> None:
    route = router.post("/v1/events").respond(200, json=_ok_event())
    client.emit("u1", "purchase.completed", {"order": {"level": "gold", "xp": 1}})
    assert json.loads(route.calls.last.request.content)["context"]["order"] == {"level": "gold", "xp": 1}


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        pytest.param({"user_id": ""}, "user_id", id="empty-user"),
        pytest.param({"user_id": "u" * 257}, "user_id", id="long-user"),
        pytest.param({"event": "e" * 129}, "event", id="long-event"),
        pytest.param({"transaction_id": ""}, "transaction_id", id="empty-txid"),
        pytest.param({"transaction_id": "t" * 257}, "transaction_id", id="long-txid"),
        pytest.param({"context": {"amount": float("nan")}}, "context.amount", id="nan"),
        pytest.param({"context": {"": 1}}, "context", id="empty-key"),
        pytest.param({"context": {"when": object()}}, "context.when", id="not-json"),
        pytest.param({"occurred_at": datetime(2026, 1, 1)}, "occurred_at", id="naive-datetime"),
    ],
)
def test_invalid_events_are_rejected_before_sending(
    router: respx.Router, client: PerkamoClient, kwargs: dict[str, Any], field: str
) -> None:
    call: dict[str, Any] = {"user_id": "u1", "event": "purchase.completed", "context": {}} | kwargs
    with pytest.raises(PerkamoInputError) as caught:
        client.emit(**call)
    assert caught.value.field == field


# -- errors and retries --------------------------------------------------------------------------


def test_retries_5xx_and_429_with_the_same_body_and_honours_retry_after(
    router: respx.Router, client: PerkamoClient, fake_time: FakeTime
) -> None:
    route = router.post("/v1/events").mock(
        side_effect=[
            httpx.Response(503, json={"message": "unavailable", "code": "unavailable"}),
            httpx.Response(429, json={"message": "Rate limit exceeded"}, headers={"retry-after": "7"}),
            httpx.Response(200, json=_ok_event()),
        ]
    )
    assert client.emit("u1", "purchase.completed", {"amount": 1})["applied"] is True
    assert route.call_count == 3
    bodies = [call.request.content for call in route.calls]
    assert bodies[0] == bodies[1] == bodies[2]
    assert re.fullmatch(r"tx_[0-9a-f]{32}", json.loads(bodies[0])["transaction_id"])
    assert fake_time.sleeps == [0.5, 7.0]
    # each attempt is signed afresh with the clock of its own send
    stamps = [call.request.headers["x-perkamo-timestamp"] for call in route.calls]
    assert stamps == [str(int(NOW)), str(int(NOW + 0.5)), str(int(NOW + 7.5))]
    for call in route.calls:
        _assert_signed(call.request, "/v1/events")


def test_retries_network_errors_with_the_same_transaction_id(
    router: respx.Router, client: PerkamoClient, fake_time: FakeTime
) -> None:
    route = router.post("/v1/events").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.ReadTimeout("slow"), httpx.Response(200, json=_ok_event())]
    )
    client.emit("u1", "purchase.completed", {}, "order_7")
    assert [json.loads(call.request.content)["transaction_id"] for call in route.calls] == ["order_7"] * 3
    assert fake_time.sleeps == [0.5, 1.0]


def test_network_failure_outlasting_the_retries(router: respx.Router, client: PerkamoClient, fake_time: FakeTime) -> None:
    route = router.get("/v1/program").mock(side_effect=httpx.ConnectError("refused"))
    with pytest.raises(PerkamoConnectionError) as caught:
        client.program()
    assert route.call_count == 4
    assert caught.value.attempts == 4
    assert fake_time.sleeps == [0.5, 1.0, 2.0]
    assert KEY not in str(caught.value)


def test_retry_budget_exhausted_raises_the_last_answer(router: respx.Router, client: PerkamoClient) -> None:
    route = router.post("/v1/identify").respond(
        502, json={"message": "bad gateway"}, headers={"x-request-id": "req_gw_1"}
    )
    with pytest.raises(PerkamoApiError) as caught:
        client.identify("u1", {"plan": "premium"})
    assert route.call_count == 4
    assert caught.value.status == 502
    assert caught.value.request_id == "req_gw_1"
    assert caught.value.retriable


@pytest.mark.parametrize("status", [400, 401, 403, 404])
def test_client_errors_are_never_retried(
    router: respx.Router, client: PerkamoClient, fake_time: FakeTime, status: int
) -> None:
    route = router.post("/v1/events").respond(
        status,
        json={"message": "nope", "code": "invalid_request"},
        headers={"x-perkamo-request-id": "req_test_123"},
    )
    with pytest.raises(PerkamoApiError) as caught:
        client.emit("u1", "purchase.completed", {}, "order_1")
    assert route.call_count == 1
    assert fake_time.sleeps == []
    error = caught.value
    assert (error.status, error.body, error.request_id, error.code) == (
        status,
        {"message": "nope", "code": "invalid_request"},
        "req_test_123",
        "invalid_request",
    )
    assert not error.retriable
    assert "req_test_123" in str(error) and "nope" in str(error)


@pytest.mark.parametrize(
    ("headers", "rate_limit", "retry_after"),
    [
        pytest.param(
            {
                "x-perkamo-request-id": "req_test_123",
                "retry-after": "30",
                "ratelimit-limit": "100",
                "ratelimit-remaining": "0",
                "ratelimit-reset": "1767225600",
            },
            RateLimit(100, 0, "1767225600"),
            30.0,
            id="standard-headers",
        ),
        pytest.param(
            {
                "x-request-id": "req_test_123",
                "x-ratelimit-limit": "60",
                "x-ratelimit-remaining": "0",
                "x-ratelimit-reset": "12",
                "retry-after": "Wed, 21 Oct 2026 07:28:00 GMT",
            },
            RateLimit(60, 0, "12"),
            datetime(2026, 10, 21, 7, 28, tzinfo=UTC).timestamp() - NOW,
            id="x-prefixed-and-http-date",
        ),
    ],
)
def test_rate_limited_error_carries_headers(
    router: respx.Router, fake_time: FakeTime, headers: dict[str, str], rate_limit: RateLimit, retry_after: float
) -> None:
    router.get("/v1/usage").respond(429, json={"message": "Rate limit exceeded"}, headers=headers)
    with PerkamoClient(
        KEY, base_url=BASE, transport=httpx.MockTransport(router.handler), max_retries=0, clock=fake_time.clock
    ) as perkamo, pytest.raises(PerkamoApiError) as caught:
        perkamo.usage()
    error = caught.value
    assert error.status == 429
    assert error.body == {"message": "Rate limit exceeded"}
    assert error.request_id == "req_test_123"
    assert error.retry_after == pytest.approx(retry_after)
    assert error.rate_limit == rate_limit


def test_non_json_error_body_is_kept_as_text(router: respx.Router, fake_time: FakeTime) -> None:
    router.get("/v1/program").respond(400, text="<html>bad</html>")
    with PerkamoClient(KEY, base_url=BASE, transport=httpx.MockTransport(router.handler)) as perkamo:
        with pytest.raises(PerkamoApiError) as caught:
            perkamo.program()
    assert caught.value.body == "<html>bad</html>"
    assert caught.value.rate_limit is None and caught.value.retry_after is None


def test_the_api_key_never_reaches_errors_logs_or_repr(
    router: respx.Router, client: PerkamoClient, caplog: pytest.LogCaptureFixture
) -> None:
    router.post("/v1/events").mock(
        side_effect=[httpx.ConnectError("refused"), httpx.Response(503, json={"message": "down"})]
        + [httpx.Response(401, json={"message": "Invalid API key", "code": "unauthenticated"})]
    )
    caplog.set_level(logging.DEBUG)
    with pytest.raises(PerkamoApiError) as caught:
        client.emit("u1", "purchase.completed", {})
    texts = [str(caught.value), repr(caught.value), repr(client), caplog.text, repr(caught.value.__dict__)]
    assert caplog.records, "retries are logged"
    for text in texts:
        assert KEY not in text
        assert "Zx9SECRET" not in text


@pytest.mark.parametrize(
    ("traits", "field"),
    [
        pytest.param(["plan"], "traits", id="not-an-object"),
        pytest.param({"score": float("inf")}, "traits.score", id="infinite"),
        pytest.param({"tags": {1: "x"}}, "traits.tags", id="non-string-key"),
    ],
)
def test_invalid_traits_are_rejected_before_sending(
    router: respx.Router, client: PerkamoClient, traits: Any, field: str
) -> None:
    with pytest.raises(PerkamoInputError) as caught:
        client.identify("u1", traits)
    assert caught.value.field == field


def test_constructor_rejects_a_missing_key() -> None:
    with pytest.raises(PerkamoInputError):
        PerkamoClient("")


def test_a_base_url_that_cannot_be_requested_is_not_retried() -> None:
    from connectors.perkamo.client import PerkamoClient
    from connectors.perkamo.errors import PerkamoConnectionError

    sleeps: list[float] = []
    client = PerkamoClient("sk_test_s3cret", base_url="ftp://perkamo.example", max_retries=5, sleep=sleeps.append)
    with pytest.raises(PerkamoConnectionError) as info:
        client.identify("u1", {"a": 1})
    assert info.value.attempts == 1
    assert "UnsupportedProtocol" in str(info.value)
    assert sleeps == []
