"""The v1 API over the real core service: auth, scopes, signatures, errors, batch, redeem, rate limits."""

from __future__ import annotations

import re
import time
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine

from perkamo_core.api import create_app
from perkamo_core.api.errors import SignatureError
from perkamo_core.api.signing import expected_signature, verify_signature
from perkamo_core.service import CoreService
from tests.perkamo_core.api.support import (
    OTHER_SPACE,
    SPACE,
    Keys,
    MutableClock,
    body_bytes,
    make_core,
    sign_headers,
)

REQUEST_ID = re.compile(r"req_[0-9a-f]{24}")
SEED_EVENT = {
    "tenant": "commerce-test",
    "user_id": "customer_123",
    "event": "purchase.completed",
    "transaction_id": "order_1092",
    "context": {"amount": 12900, "currency": "CZK"},
    "occurred_at": "2026-06-01T10:00:00.000Z",
}


@pytest.fixture
def clock() -> MutableClock:
    return MutableClock()


@pytest.fixture
def core(db_engine: Engine, clock: MutableClock) -> tuple[CoreService, Keys]:
    return make_core(db_engine, clock)


@pytest.fixture
def keys(core: tuple[CoreService, Keys]) -> Keys:
    return core[1]


@pytest.fixture
def service(core: tuple[CoreService, Keys]) -> CoreService:
    return core[0]


@pytest.fixture
def api(service: CoreService, clock: MutableClock) -> Iterator[TestClient]:
    with TestClient(create_app(service, clock=clock), raise_server_exceptions=False) as client:
        yield client


def _post(api: TestClient, path: str, key: str | None, payload: Any, headers: dict[str, str] | None = None) -> Any:
    sent = {"content-type": "application/json", **(headers or {})}
    if key is not None:
        sent["x-perkamo-api-key"] = key
    content = payload if isinstance(payload, bytes) else body_bytes(payload)
    return api.post(path, content=content, headers=sent)


def _assert_error(response: Any, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert REQUEST_ID.fullmatch(response.headers["x-perkamo-request-id"])
    body = response.json()
    assert isinstance(body["message"], str) and body["message"]
    assert isinstance(body["code"], str) and body["code"]
    if code is not None:
        assert body["code"] == code
    return dict(body)


# -- the seed example ----------------------------------------------------------------------------


def test_seed_event_example_answers_the_seed_result(api: TestClient, keys: Keys) -> None:
    response = _post(api, "/v1/events", keys.full, SEED_EVENT)
    assert response.status_code == 200, response.text
    assert REQUEST_ID.fullmatch(response.headers["x-perkamo-request-id"])
    assert response.json() == {
        "applied": True,
        "duplicate": False,
        "delta": [{"wallet": "points", "amount": 50}],
        "leveled_up": False,
        "unlocked": [{"type": "perk", "key": "welcome_member", "name": "Welcome member"}],
        "wallet_state": {"points": 50},
        "level": {"wallet": "points", "level": 1, "current": 50, "nextLevelAt": 100, "currentLevelAt": 0, "progress": 0.5},
    }
    replay = _post(api, "/v1/events", keys.full, SEED_EVENT).json()
    assert replay["duplicate"] is True and replay["applied"] is False
    assert replay["delta"] == [{"wallet": "points", "amount": 50}]
    customer = api.get("/v1/customer/customer_123", headers={"x-perkamo-api-key": keys.full})
    profile = api.get("/v1/profile/customer_123", headers={"x-perkamo-api-key": keys.full})
    assert customer.status_code == profile.status_code == 200
    assert customer.json() == profile.json()
    assert customer.json()["wallets"] == {"points": 50}
    assert customer.json()["tenant"] == SPACE


def test_every_answer_carries_a_request_id(api: TestClient, keys: Keys) -> None:
    answers = [
        api.get("/healthz"),
        api.get("/openapi.json"),
        api.get("/nope"),
        api.get("/v1/program"),
        api.get("/v1/customer/nobody", headers={"x-perkamo-api-key": keys.full}),
        _post(api, "/v1/events", keys.full, b"{not json"),
    ]
    ids = [answer.headers["x-perkamo-request-id"] for answer in answers]
    assert all(REQUEST_ID.fullmatch(value) for value in ids)
    assert len(set(ids)) == len(ids)
    assert [answer.status_code for answer in answers] == [200, 200, 404, 401, 404, 400]


def test_an_unexpected_failure_is_a_500_with_the_error_shape(
    api: TestClient, keys: Keys, service: CoreService, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*_args: Any) -> Any:
        raise RuntimeError("database went away")

    monkeypatch.setattr(service, "program", broken)
    response = api.get("/v1/program", headers={"x-perkamo-api-key": keys.full})
    body = _assert_error(response, 500, "internal")
    assert "database went away" not in body["message"]


# -- authentication and scopes --------------------------------------------------------------------


def _auth_cases(keys: Keys) -> list[tuple[str, str | None, int, str]]:
    return [
        ("missing", None, 401, "missing_api_key"),
        ("unknown", "sk_test_" + "0" * 40, 401, "unauthenticated"),
        ("revoked", keys.revoked, 401, "unauthenticated"),
    ]


@pytest.mark.parametrize("case", ["missing", "unknown", "revoked"])
@pytest.mark.parametrize(
    ("method", "path", "payload"),
    [
        pytest.param("POST", "/v1/events", SEED_EVENT, id="events"),
        pytest.param("GET", "/v1/customer/customer_123", None, id="customer"),
        pytest.param("GET", "/v1/usage", None, id="usage"),
    ],
)
def test_bad_keys_are_401(api: TestClient, keys: Keys, case: str, method: str, path: str, payload: Any) -> None:
    key, status, code = next((k, s, c) for name, k, s, c in _auth_cases(keys) if name == case)
    headers = {} if key is None else {"x-perkamo-api-key": key}
    response = api.request(method, path, headers=headers, content=None if payload is None else body_bytes(payload))
    _assert_error(response, status, code)


ROUTES_BY_SCOPE = [
    pytest.param("events:write", "POST", "/v1/identify", {"user_id": "u1", "traits": {}}, id="identify"),
    pytest.param("events:write", "POST", "/v1/events", SEED_EVENT, id="events"),
    pytest.param("events:write", "POST", "/v1/events:batch", {"events": [SEED_EVENT]}, id="batch"),
    pytest.param("profile:read", "GET", "/v1/customer/customer_123", None, id="customer"),
    pytest.param("profile:read", "GET", "/v1/profile/customer_123", None, id="profile"),
    pytest.param("profile:read", "GET", "/v1/program", None, id="program"),
    pytest.param("profile:read", "GET", "/v1/usage", None, id="usage"),
    pytest.param(
        "rewards:redeem",
        "POST",
        "/v1/rewards/redeem",
        {"user_id": "customer_123", "reward_key": "free_shipping", "transaction_id": "r1"},
        id="redeem",
    ),
    pytest.param("admin:config", "POST", "/v1/admin/config/wallets", {"version": "v2", "active": True, "body": {}}, id="admin"),
]


@pytest.mark.parametrize(("scope", "method", "path", "payload"), ROUTES_BY_SCOPE)
def test_a_key_without_the_scope_is_403(
    api: TestClient, keys: Keys, scope: str, method: str, path: str, payload: Any
) -> None:
    headers = {"x-perkamo-api-key": keys.by_scope[scope], "content-type": "application/json"}
    content = None if payload is None else body_bytes(payload)
    _assert_error(api.request(method, path, headers=headers, content=content), 403, "missing_scope")


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        pytest.param("/v1/events", {**SEED_EVENT, "tenant": OTHER_SPACE}, id="event-tenant"),
        pytest.param("/v1/events", {**SEED_EVENT, "tenant": None, "space": OTHER_SPACE}, id="event-space"),
        pytest.param("/v1/identify", {"tenant": OTHER_SPACE, "user_id": "u1"}, id="identify-tenant"),
        pytest.param("/v1/events:batch", {"events": [{**SEED_EVENT, "tenant": OTHER_SPACE}]}, id="batch-item-tenant"),
        pytest.param("/v1/events:batch", {"space": OTHER_SPACE, "events": [SEED_EVENT]}, id="batch-space"),
        pytest.param(
            "/v1/rewards/redeem",
            {"tenant": OTHER_SPACE, "user_id": "u", "reward_key": "free_shipping", "transaction_id": "r"},
            id="redeem-tenant",
        ),
    ],
)
def test_a_body_space_other_than_the_keys_is_403(
    api: TestClient, keys: Keys, service: CoreService, path: str, payload: Any
) -> None:
    _assert_error(_post(api, path, keys.full, payload), 403, "space_mismatch")
    for user_id in ("customer_123", "u1", "u"):  # nothing was written
        _assert_error(api.get(f"/v1/customer/{user_id}", headers={"x-perkamo-api-key": keys.full}), 404)


def test_cached_key_checks_expire(service: CoreService, clock: MutableClock) -> None:
    created = service.create_api_key(SPACE)
    with TestClient(create_app(service, clock=clock, auth_cache_seconds=0.05)) as cached:
        headers = {"x-perkamo-api-key": created.key}
        assert cached.get("/v1/usage", headers=headers).status_code == 200
        service.revoke_api_key(created.key_id)
        time.sleep(0.1)
        _assert_error(cached.get("/v1/usage", headers=headers), 401, "unauthenticated")


def test_a_key_of_another_space_sees_only_its_space(api: TestClient, keys: Keys) -> None:
    assert _post(api, "/v1/events", keys.full, SEED_EVENT).status_code == 200
    _assert_error(_post(api, "/v1/events", keys.other_space, SEED_EVENT), 403, "space_mismatch")
    _assert_error(api.get("/v1/customer/customer_123", headers={"x-perkamo-api-key": keys.other_space}), 404)


# -- signatures ----------------------------------------------------------------------------------


def test_the_sdk_test_vector_verifies() -> None:
    body = b'{"space":"demo"}'
    signature = "v1=6bbc1e5ba44b90642cb2f878838723f95d0272760c9bae93162479595e765621"
    assert expected_signature("sk_test", "1700000000", "POST", "/v1/events", body) == signature
    verify_signature(
        "sk_test", timestamp="1700000000", signature=signature, method="POST", path="/v1/events", body=body,
        now=1700000000 + 299,
    )


@pytest.mark.parametrize(
    ("change", "code"),
    [
        pytest.param({"now": 1700000000 + 301}, "stale_signature", id="stale-late"),
        pytest.param({"now": 1700000000 - 301}, "stale_signature", id="stale-early"),
        pytest.param({"body": b'{"space":"demo2"}'}, "invalid_signature", id="body-changed"),
        pytest.param({"path": "/v1/identify"}, "invalid_signature", id="path-changed"),
        pytest.param({"method": "PUT"}, "invalid_signature", id="method-changed"),
        pytest.param({"timestamp": "1700000001"}, "invalid_signature", id="timestamp-changed"),
        pytest.param({"timestamp": "soon"}, "invalid_signature", id="timestamp-garbage"),
        pytest.param({"timestamp": None}, "invalid_signature", id="timestamp-missing"),
        pytest.param({"signature": "v1=" + "0" * 64}, "invalid_signature", id="wrong-digest"),
        pytest.param({"signature": "v2=abc"}, "invalid_signature", id="malformed"),
        pytest.param({"signature": None}, "signature_required", id="missing"),
    ],
)
def test_signature_failures(change: dict[str, Any], code: str) -> None:
    call: dict[str, Any] = {
        "timestamp": "1700000000",
        "signature": "v1=6bbc1e5ba44b90642cb2f878838723f95d0272760c9bae93162479595e765621",
        "method": "POST",
        "path": "/v1/events",
        "body": b'{"space":"demo"}',
        "now": 1700000000,
    } | change
    with pytest.raises(SignatureError) as caught:
        verify_signature("sk_test", **call)
    assert caught.value.code == code
    assert caught.value.status == 401


def test_signed_requests_over_http(api: TestClient, keys: Keys, clock: MutableClock) -> None:
    body = body_bytes(SEED_EVENT)
    now = int(clock().timestamp())
    good = sign_headers(keys.full, now - 200, "POST", "/v1/events", body)
    assert _post(api, "/v1/events", keys.full, body, good).status_code == 200
    stale = sign_headers(keys.full, now - 301, "POST", "/v1/events", body)
    _assert_error(_post(api, "/v1/events", keys.full, body, stale), 401, "stale_signature")
    tampered = body_bytes({**SEED_EVENT, "transaction_id": "order_1093"})
    _assert_error(_post(api, "/v1/events", keys.full, tampered, good), 401, "invalid_signature")
    other_key = sign_headers(keys.other_space, now, "POST", "/v1/events", body)
    _assert_error(_post(api, "/v1/events", keys.full, body, other_key), 401, "invalid_signature")
    # a signed GET is verified too (empty body hash)
    get_headers = {"x-perkamo-api-key": keys.full, **sign_headers(keys.full, now, "GET", "/v1/usage", b"")}
    assert api.get("/v1/usage", headers=get_headers).status_code == 200
    get_headers["x-perkamo-signature"] = "v1=" + "f" * 64
    _assert_error(api.get("/v1/usage", headers=get_headers), 401, "invalid_signature")


def test_a_space_can_require_signatures(api: TestClient, keys: Keys, service: CoreService, clock: MutableClock) -> None:
    service.update_space(SPACE, require_signatures=True)
    body = body_bytes(SEED_EVENT)
    _assert_error(_post(api, "/v1/events", keys.full, body), 401, "signature_required")
    signed = sign_headers(keys.full, int(clock().timestamp()), "POST", "/v1/events", body)
    assert _post(api, "/v1/events", keys.full, body, signed).status_code == 200
    # reads stay key-only, as the SDKs sign only requests with a body
    assert api.get("/v1/customer/customer_123", headers={"x-perkamo-api-key": keys.full}).status_code == 200
    # the other Space does not require them
    assert _post(api, "/v1/identify", keys.other_space, {"user_id": "u1"}).status_code == 200


def test_the_server_can_require_signatures(service: CoreService, keys: Keys, clock: MutableClock) -> None:
    with TestClient(create_app(service, clock=clock, require_signatures=True)) as strict:
        _assert_error(_post(strict, "/v1/identify", keys.other_space, {"user_id": "u1"}), 401, "signature_required")
        body = body_bytes({"user_id": "u1"})
        signed = sign_headers(keys.other_space, int(clock().timestamp()), "POST", "/v1/identify", body)
        assert _post(strict, "/v1/identify", keys.other_space, body, signed).status_code == 200


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param(b"{not json", None, id="malformed-json"),
        pytest.param(b"[1,2]", None, id="array-body"),
        pytest.param(b"", None, id="empty-body"),
        pytest.param({**SEED_EVENT, "user_id": 123}, "user_id", id="user-id-int"),
        pytest.param({**SEED_EVENT, "event": ["x"]}, "event", id="event-list"),
        pytest.param({**SEED_EVENT, "context": "amount=1"}, "context", id="context-string"),
        pytest.param({**SEED_EVENT, "user_id": "u" * 257}, "user_id", id="user-id-too-long"),
        pytest.param({**SEED_EVENT, "event": "e" * 129}, "event", id="event-too-long"),
        pytest.param({**SEED_EVENT, "transaction_id": "t" * 257}, "transaction_id", id="txid-too-long"),
        pytest.param({**SEED_EVENT, "tenant": "t" * 129}, "tenant", id="tenant-too-long"),
        pytest.param({**SEED_EVENT, "user_id": ""}, "user_id", id="user-id-empty"),
        pytest.param(b'{"user_id":"u","event":"e","transaction_id":"t","context":{"a":NaN}}', "context", id="nan"),
        pytest.param({**SEED_EVENT, "context": {"xp": 100}}, None, id="reserved-context-key"),
        pytest.param({**SEED_EVENT, "occurred_at": "yesterday"}, None, id="bad-occurred-at"),
        pytest.param({**SEED_EVENT, "user_id": "cust\u0000omer"}, "user_id", id="nul-in-user-id"),
        pytest.param({**SEED_EVENT, "transaction_id": "order\u0000"}, "transaction_id", id="nul-in-txid"),
        pytest.param({**SEED_EVENT, "context": {"a\u0000": 1}}, "context", id="nul-in-context-key"),
        pytest.param({**SEED_EVENT, "context": {"a": ["x\u0000"]}}, "context", id="nul-in-context-value"),
        pytest.param(b'{"user_id":"u","event":"e","context":{"a":"\\ud879"}}', None, id="lone-surrogate"),
    ],
)
def test_invalid_event_bodies_are_400(api: TestClient, keys: Keys, payload: Any, field: str | None) -> None:
    body = _assert_error(_post(api, "/v1/events", keys.full, payload), 400)
    if field is not None:
        assert body["field"] == field


@pytest.mark.parametrize(
    ("path", "payload"),
    [
        pytest.param("/v1/identify", {"user_id": "u\u0000"}, id="identify-user"),
        pytest.param("/v1/identify", {"user_id": "u", "traits": {"k": "\u0000"}}, id="identify-traits"),
        pytest.param(
            "/v1/rewards/redeem", {"user_id": "u", "reward_key": "free\u0000", "transaction_id": "r"}, id="redeem-reward"
        ),
        pytest.param("/v1/admin/config/events", {"version": "\u0000", "body": {}}, id="config-version"),
    ],
)
def test_text_the_databases_cannot_store_is_400(api: TestClient, keys: Keys, path: str, payload: Any) -> None:
    _assert_error(_post(api, path, keys.full, payload), 400)


@pytest.mark.parametrize("path", ["/v1/customer/a%00b", "/v1/profile/%00"])
def test_a_nul_in_a_customer_id_is_400(api: TestClient, keys: Keys, path: str) -> None:
    _assert_error(api.get(path, headers={"x-perkamo-api-key": keys.full}), 400)


def test_an_oversized_body_is_400(api: TestClient, keys: Keys) -> None:
    huge = body_bytes({**SEED_EVENT, "context": {"blob": "x" * (1 << 20)}})
    _assert_error(_post(api, "/v1/events", keys.full, huge), 400, "payload_too_large")


def test_unknown_config_module_is_400_and_a_known_one_applies(api: TestClient, keys: Keys) -> None:
    headers = {"x-perkamo-api-key": keys.full}
    _assert_error(api.post("/v1/admin/config/rewards", json={"version": "1", "body": {}}, headers=headers), 400)
    rules = {"rules": [{"event": "lesson.finished", "label": "Lesson", "wallet": "points", "amount": 7}]}
    response = api.post("/v1/admin/config/events", json={"version": "2026-06-01", "active": True, "body": rules}, headers=headers)
    assert response.status_code == 200, response.text
    result = _post(api, "/v1/events", keys.full, {"user_id": "u9", "event": "lesson.finished", "transaction_id": "l1"})
    assert result.json()["delta"] == [{"wallet": "points", "amount": 7}]
    invalid = {"rules": [{"event": "x.y", "wallet": "points", "amount": 1, "formula": "{{a}}"}]}
    _assert_error(api.post("/v1/admin/config/events", json={"body": invalid}, headers=headers), 400)


@pytest.mark.parametrize(
    ("payload", "field", "message"),
    [
        pytest.param({"wallets": [{}]}, "body", "body: Field required", id="module-without-envelope"),
        pytest.param({"body": []}, "body", "body: Input should be a valid dictionary", id="body-not-object"),
        pytest.param({"body": {}, "active": "yes"}, "active", "active: Input should be a valid boolean", id="active"),
        pytest.param({"body": {"wallets": [{"name": "Points"}]}}, "wallets.wallets[0].key",
                     "wallets.wallets[0].key: Field required", id="module-field"),
        pytest.param({"body": {"wallets": [{"key": "points", "name": "P", "precision": "x"}]}},
                     "wallets.wallets[0].precision", None, id="module-type"),
    ],
)
def test_an_invalid_config_object_names_the_wrong_field(
    api: TestClient, keys: Keys, payload: dict[str, Any], field: str, message: str | None
) -> None:
    body = _assert_error(_post(api, "/v1/admin/config/wallets", keys.full, payload), 400)
    assert body["field"] == field
    assert "must be a JSON object" not in body["message"]
    assert body["message"].startswith(f"{field}: ")
    if message is not None:
        assert body["message"] == message


@pytest.mark.parametrize("payload", [b"[]", b'"x"', b"7"])
def test_a_config_body_that_is_not_an_object_says_so(api: TestClient, keys: Keys, payload: bytes) -> None:
    body = _assert_error(_post(api, "/v1/admin/config/wallets", keys.full, payload), 400)
    assert "must be a JSON object" in body["message"] and "field" not in body


# -- batch ---------------------------------------------------------------------------------------


def test_batch_applies_valid_items_and_reports_invalid_ones_in_order(api: TestClient, keys: Keys) -> None:
    events = [
        {"tenant": SPACE, "user_id": "customer_123", "event": "page.viewed", "transaction_id": "pageview_01", "context": {"path": "/pricing"}},
        {"user_id": "customer_123", "event": "page.viewed", "transaction_id": "pageview_02", "context": {"xp": 5}},
        {"user_id": 7, "event": "page.viewed", "transaction_id": "pageview_03"},
        "not an event",
        {"user_id": "customer_123", "event": "purchase.completed", "transaction_id": "order_1"},
        {"user_id": "customer_123", "event": "page.viewed", "transaction_id": "pageview_01", "context": {"path": "/pricing"}},
        {"user_id": "customer_\u0000", "event": "page.viewed", "transaction_id": "pageview_04"},
        {"user_id": "customer_123", "event": "page.viewed", "transaction_id": "pageview_05", "context": {"n": "\ud800"}},
    ]
    response = _post(api, "/v1/events:batch", keys.full, {"events": events})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert len(results) == 8
    assert results[6]["error"]["field"] == "events[6].user_id" and results[6]["transaction_id"] == "pageview_04"
    assert results[7]["error"]["field"] == "events[7].context"
    assert results[0]["applied"] is True and results[0]["delta"] == [{"wallet": "points", "amount": 1}]
    assert results[1]["transaction_id"] == "pageview_02" and results[1]["error"]["code"] == "reserved_context_key"
    assert results[2]["error"]["field"] == "events[2].user_id"
    assert results[3]["transaction_id"] is None and results[3]["error"]["field"] == "events[3]"
    assert results[4]["applied"] is True and results[4]["wallet_state"] == {"points": 51}
    assert results[5]["duplicate"] is True
    customer = api.get("/v1/customer/customer_123", headers={"x-perkamo-api-key": keys.full}).json()
    assert customer["wallets"] == {"points": 51}


@pytest.mark.parametrize(
    ("payload", "status"),
    [
        pytest.param({"events": []}, 400, id="empty"),
        pytest.param(
            {"events": [{"user_id": "u", "event": "page.viewed", "transaction_id": f"p{i}"} for i in range(101)]},
            400,
            id="101-events",
        ),
        pytest.param({"events": {"user_id": "u"}}, 400, id="not-a-list"),
        pytest.param({}, 400, id="no-events"),
    ],
)
def test_batch_limits(api: TestClient, keys: Keys, payload: Any, status: int) -> None:
    _assert_error(_post(api, "/v1/events:batch", keys.full, payload), status)


def test_batch_of_exactly_100_is_accepted(api: TestClient, keys: Keys) -> None:
    events = [{"user_id": f"u{i % 7}", "event": "page.viewed", "transaction_id": f"p{i}"} for i in range(100)]
    response = _post(api, "/v1/events:batch", keys.full, {"events": events})
    assert response.status_code == 200
    assert [item["applied"] for item in response.json()["results"]] == [True] * 100


# -- redeem --------------------------------------------------------------------------------------


def test_redeem_is_idempotent_and_checks_the_balance(api: TestClient, keys: Keys) -> None:
    assert _post(api, "/v1/events", keys.full, SEED_EVENT).status_code == 200  # 50 points
    redeem = {"tenant": SPACE, "user_id": "customer_123", "reward_key": "free_shipping", "transaction_id": "redeem_1"}
    first = _post(api, "/v1/rewards/redeem", keys.full, redeem)
    assert first.status_code == 200, first.text
    again = _post(api, "/v1/rewards/redeem", keys.full, redeem)
    assert again.status_code == 200
    customer = api.get("/v1/customer/customer_123", headers={"x-perkamo-api-key": keys.full}).json()
    assert customer["wallets"] == {"points": 10}
    second = {**redeem, "transaction_id": "redeem_2"}
    _assert_error(_post(api, "/v1/rewards/redeem", keys.full, second), 400, "insufficient_balance")
    customer = api.get("/v1/customer/customer_123", headers={"x-perkamo-api-key": keys.full}).json()
    assert customer["wallets"] == {"points": 10}
    _assert_error(_post(api, "/v1/rewards/redeem", keys.full, {**redeem, "reward_key": "nope", "transaction_id": "r3"}), 404)


# -- rate limits and usage -----------------------------------------------------------------------


def test_rate_limit_answers_429_with_headers(service: CoreService, keys: Keys, clock: MutableClock) -> None:
    with TestClient(create_app(service, clock=clock, rate_limit=2)) as limited:
        headers = {"x-perkamo-api-key": keys.full}
        first = limited.get("/v1/usage", headers=headers)
        assert first.status_code == 200
        assert first.headers["ratelimit-limit"] == "2"
        assert first.headers["ratelimit-remaining"] == "1"
        reset = int(first.headers["ratelimit-reset"])
        assert reset % 60 == 0 and 0 < reset - clock().timestamp() <= 60
        assert limited.get("/v1/usage", headers=headers).headers["ratelimit-remaining"] == "0"
        refused = limited.get("/v1/usage", headers=headers)
        _assert_error(refused, 429, "rate_limited")
        assert refused.headers["ratelimit-remaining"] == "0"
        assert int(refused.headers["retry-after"]) == reset - int(clock().timestamp())
        # another key has its own window; the next window admits again
        assert limited.get("/v1/usage", headers={"x-perkamo-api-key": keys.other_space}).status_code == 200
        clock.now += timedelta(seconds=60)
        assert limited.get("/v1/usage", headers=headers).status_code == 200
        # an unknown key is refused before it counts against anybody
        _assert_error(limited.get("/v1/usage", headers={"x-perkamo-api-key": "sk_test_x"}), 401)


def test_rate_limit_is_off_by_default(api: TestClient, keys: Keys) -> None:
    for _ in range(5):
        response = api.get("/v1/usage", headers={"x-perkamo-api-key": keys.full})
        assert response.status_code == 200
        assert "ratelimit-limit" not in response.headers


def test_usage_counts_events_identify_calls_and_requests(api: TestClient, keys: Keys, service: CoreService) -> None:
    _post(api, "/v1/identify", keys.full, {"tenant": SPACE, "user_id": "customer_123", "traits": {"plan": "premium"}})
    _post(api, "/v1/events", keys.full, SEED_EVENT)
    _post(api, "/v1/events", keys.full, SEED_EVENT)
    _post(api, "/v1/events:batch", keys.full, {"events": [{"user_id": "u2", "event": "page.viewed", "transaction_id": "p1"}]})
    api.get("/v1/usage", headers={"x-perkamo-api-key": "sk_test_unknown"})  # not authenticated: not counted
    usage = api.get("/v1/usage", headers={"x-perkamo-api-key": keys.full}).json()
    assert usage["tenant"] == SPACE and usage["period"] == "2026-06"
    assert usage["meters"] == {"events": 2, "duplicates": 1, "identify_calls": 1, "redemptions": 0, "requests": 5}
    assert service.usage(SPACE)["meters"] == usage["meters"]


def _fast_lane_cases(suffix: str, keys: Keys) -> list[tuple[str, str, str | None, bytes]]:
    user = f"customer_{suffix}"
    event = {**SEED_EVENT, "user_id": user, "transaction_id": f"order_{suffix}"}
    return [
        ("POST", "/v1/events", keys.full, body_bytes(event)),
        ("POST", "/v1/events", keys.full, body_bytes(event)),  # duplicate
        ("POST", "/v1/events", keys.full, b"{not json"),
        ("POST", "/v1/events", keys.full, body_bytes({**event, "user_id": 5})),
        ("POST", "/v1/events", keys.full, body_bytes({**event, "event": "e" * 129})),
        ("POST", "/v1/events", keys.full, body_bytes({**event, "context": {"Perks": 1}})),
        ("POST", "/v1/events", keys.full, body_bytes({**event, "tenant": OTHER_SPACE})),
        ("POST", "/v1/events", keys.by_scope["events:write"], body_bytes(event)),
        ("GET", f"/v1/customer/{user}", keys.full, b""),
        ("GET", f"/v1/profile/{user}", keys.full, b""),
        ("GET", f"/v1/customer/{user}", keys.by_scope["profile:read"], b""),
        ("GET", "/v1/customer/nobody", keys.full, b""),
        ("GET", "/v1/customer/" + "x" * 257, keys.full, b""),
    ]


def test_the_fast_lane_answers_like_the_router(service: CoreService, keys: Keys, clock: MutableClock) -> None:
    answers: dict[bool, list[tuple[int, Any]]] = {}
    for fast in (True, False):
        with TestClient(create_app(service, clock=clock, fast_lane=fast)) as client:
            answers[fast] = []
            for method, path, key, content in _fast_lane_cases("fast" if fast else "slow", keys):
                headers = {"content-type": "application/json", "x-perkamo-api-key": key or ""}
                # writes go to a customer of each run's own; reads compare the same customer
                response = client.request(method, path.replace("slow", "fast"), headers=headers, content=content or None)
                body = response.json()
                if body.get("code") == "invalid_json":  # the JSON parsers word the position differently
                    body["message"] = body["message"].split(":")[0]
                answers[fast].append((response.status_code, body))
    assert [status for status, _ in answers[True]] == [200, 200, 400, 400, 400, 400, 403, 403, 200, 200, 403, 404, 400]
    assert answers[True] == answers[False]


def test_a_failing_usage_write_never_fails_the_request(
    api: TestClient, keys: Keys, service: CoreService, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = service.record_usage
    failures = iter([RuntimeError("database is locked")])

    def flaky(*args: Any, **kwargs: Any) -> None:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        real(*args, **kwargs)

    monkeypatch.setattr(service, "record_usage", flaky)
    headers = {"x-perkamo-api-key": keys.full}
    assert api.get("/v1/usage", headers=headers).status_code == 200  # the flush fails, the answer does not
    usage = api.get("/v1/usage", headers=headers).json()
    assert usage["meters"]["requests"] == 2  # the first count was kept and written with the second
