"""What the API refuses because it cannot hold it: amounts past 15 significant digits, dates out of
range, and a transaction_id reused for another payload (409); nothing of it is ever recorded."""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, func, select, update

from perkamo_core import storage as st
from perkamo_core.api import create_app
from perkamo_core.service import CoreService
from tests.perkamo_core.api.support import SPACE, Keys, MutableClock, body_bytes, make_core

FORMULA_RULES = {"rules": [
    {"event": "points.given", "wallet": "points", "formula": "{{points}}"},
    {"event": "cents.given", "wallet": "cents", "formula": "{{amount}}"},
    {"event": "boosted.given", "wallet": "points", "formula": "{{points}}"},
]}
WALLETS = {"wallets": [
    {"key": "points", "name": "Points", "precision": 0},
    {"key": "cents", "name": "Cents", "precision": 2},
]}
BOOSTS = {"boosts": [{"key": "x1000", "multiplier": 1000, "events": ["boosted.given"]}]}


@pytest.fixture
def core(db_engine: Engine) -> tuple[CoreService, Keys]:
    service, keys = make_core(db_engine, MutableClock())
    service.load_program(SPACE, {"wallets": WALLETS, "events": FORMULA_RULES, "boosts": BOOSTS})
    return service, keys


@pytest.fixture
def keys(core: tuple[CoreService, Keys]) -> Keys:
    return core[1]


@pytest.fixture
def api(core: tuple[CoreService, Keys]) -> Iterator[TestClient]:
    with TestClient(create_app(core[0]), raise_server_exceptions=False) as client:
        yield client


def _send(api: TestClient, keys: Keys, path: str, raw: bytes | dict[str, Any]) -> Any:
    content = raw if isinstance(raw, bytes) else body_bytes(raw)
    return api.post(path, content=content,
                    headers={"x-perkamo-api-key": keys.full, "content-type": "application/json"})


def _event(user: str, txid: str, number: str, event: str = "points.given", key: str = "points") -> bytes:
    """The body with ``number`` written verbatim as a JSON number (1e300, 10**400 digits, …)."""
    return (f'{{"user_id":"{user}","event":"{event}","transaction_id":"{txid}",'
            f'"context":{{"{key}":{number}}}}}').encode()


def _recorded(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {t.name: int(conn.execute(select(func.count()).select_from(t)).scalar_one())
                for t in (st.events, st.ledger, st.customers, st.outbox)}


def _ledger_amounts(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [row[0] for row in conn.exec_driver_sql("SELECT amount FROM core_ledger ORDER BY id")]


# -- amounts -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("event", "key", "largest", "next_one", "wallet"),
    [
        pytest.param("points.given", "points", "999999999999999", "1000000000000000", "points", id="precision-0"),
        pytest.param("cents.given", "amount", "9999999999999.99", "10000000000000.00", "cents", id="precision-2"),
    ],
)
def test_the_largest_exact_amount_applies_and_the_next_is_refused(
    api: TestClient, keys: Keys, db_engine: Engine, event: str, key: str, largest: str, next_one: str, wallet: str
) -> None:
    before = _recorded(db_engine)
    refused = _send(api, keys, "/v1/events", _event("big", "tx-1", next_one, event, key))
    assert refused.status_code == 400, refused.text
    body = refused.json()
    assert body["code"] == "amount_out_of_range" and "15 significant digits" in body["message"]
    assert _recorded(db_engine) == before  # no event, no ledger row, no customer, no outbox row

    # The transaction id is still free: the corrected retry with the same id applies.
    applied = _send(api, keys, "/v1/events", _event("big", "tx-1", largest, event, key))
    assert applied.status_code == 200, applied.text
    result = json.loads(applied.text, parse_float=Decimal)  # the exact digits on the wire
    assert result["applied"] is True
    assert result["delta"] == [{"wallet": wallet, "amount": Decimal(largest)}]
    assert result["wallet_state"][wallet] == Decimal(largest)
    assert [Decimal(a) for a in _ledger_amounts(db_engine)] == [Decimal(largest)]
    customer = json.loads(api.get("/v1/customer/big", headers={"x-perkamo-api-key": keys.full}).text,
                          parse_float=Decimal)
    assert customer["wallets"][wallet] == Decimal(largest)

    # The balance may not pass the bound either: one more unit is refused, nothing recorded.
    after = _recorded(db_engine)
    one_more = "1" if wallet == "points" else "0.01"
    over = _send(api, keys, "/v1/events", _event("big", "tx-2", one_more, event, key))
    assert over.status_code == 400 and over.json()["code"] == "amount_out_of_range"
    assert _recorded(db_engine) == after


@pytest.mark.parametrize(
    "number",
    ["1e25", "1e300", "1" + "0" * 400, "-1e25", "123456789012345678901234567890"],
    ids=["1e25", "1e300", "10**400", "-1e25", "30-digits"],
)
def test_amounts_past_the_bound_are_400_and_burn_no_id(
    api: TestClient, keys: Keys, db_engine: Engine, number: str
) -> None:
    before = _recorded(db_engine)
    refused = _send(api, keys, "/v1/events", _event("u1", "tx-big", number))
    assert refused.status_code == 400, refused.text
    assert refused.json()["code"] == "amount_out_of_range"
    assert _recorded(db_engine) == before
    retry = _send(api, keys, "/v1/events", _event("u1", "tx-big", "7"))
    assert retry.status_code == 200 and retry.json()["applied"] is True
    assert retry.json()["wallet_state"]["points"] == 7


def test_a_boost_that_pushes_an_amount_past_the_bound_refuses_the_event(
    api: TestClient, keys: Keys, db_engine: Engine
) -> None:
    before = _recorded(db_engine)
    over = _send(api, keys, "/v1/events", _event("u2", "b1", "1000000000000", "boosted.given"))
    assert over.status_code == 400 and over.json()["code"] == "amount_out_of_range"
    assert _recorded(db_engine) == before
    fine = _send(api, keys, "/v1/events", _event("u2", "b1", "999999999999", "boosted.given"))
    assert fine.status_code == 200 and fine.json()["delta"][0]["amount"] == 999_999_999_999_000


def test_a_batch_refuses_only_the_item_past_the_bound(api: TestClient, keys: Keys, db_engine: Engine) -> None:
    items = [
        {"user_id": "b1", "event": "points.given", "transaction_id": "ok-1", "context": {"points": 999999999999999}},
        {"user_id": "b2", "event": "points.given", "transaction_id": "big-1", "context": {"points": 10**15}},
        {"user_id": "b3", "event": "points.given", "transaction_id": "ok-2", "context": {"points": 3}},
    ]
    response = _send(api, keys, "/v1/events:batch", {"events": items})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["applied"] for r in results] == [True, False, True]
    refused = results[1]
    assert refused["error"]["code"] == "amount_out_of_range" and refused["transaction_id"] == "big-1"
    # A refused item still has every field of an event result (the SDKs parse each one).
    assert {k: refused[k] for k in ("duplicate", "delta", "leveled_up", "unlocked", "wallet_state", "level")} == {
        "duplicate": False, "delta": [], "leveled_up": False, "unlocked": [], "wallet_state": {}, "level": None}
    assert _recorded(db_engine)["core_events"] == 2
    assert [Decimal(a) for a in _ledger_amounts(db_engine)] == [Decimal(999999999999999), Decimal(3)]
    again = _send(api, keys, "/v1/events:batch", {"events": [{**items[1], "context": {"points": 5}}]})
    assert again.json()["results"][0]["applied"] is True


def test_a_program_whose_fixed_amounts_a_wallet_cannot_hold_is_refused(api: TestClient, keys: Keys) -> None:
    body = {"body": {"rules": [{"event": "x.y", "wallet": "points", "amount": 10**15}]}}
    response = _send(api, keys, "/v1/admin/config/events", body)
    assert response.status_code == 400
    assert response.json()["field"] == "events.rules[0].amount"
    rewards = {"body": {"rewards": [{"key": "r", "name": "R", "wallet": "cents", "cost": "10000000000000"}]}}
    response = _send(api, keys, "/v1/admin/config/perks", rewards)
    assert response.status_code == 400 and response.json()["field"] == "perks.rewards[0].cost"


# -- dates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "occurred_at",
    ["9999-12-31T23:59:59-14:00", "0001-01-01T00:00:00+14:00", "9999-06-01T00:00:00Z", "1969-12-31T23:59:59Z"],
)
def test_an_occurred_at_out_of_range_is_400(api: TestClient, keys: Keys, db_engine: Engine, occurred_at: str) -> None:
    before = _recorded(db_engine)
    event = {"user_id": "d", "event": "points.given", "transaction_id": "d1", "context": {"points": 1},
             "occurred_at": occurred_at}
    response = _send(api, keys, "/v1/events", event)
    assert response.status_code == 400, response.text
    assert response.json()["code"] == "occurred_at_out_of_range" and response.json()["field"] == "occurred_at"
    assert _recorded(db_engine) == before
    batch = _send(api, keys, "/v1/events:batch", {"events": [
        event, {**event, "transaction_id": "d2", "occurred_at": "9998-12-31T23:59:59+14:00"},
        {**event, "transaction_id": "d3", "occurred_at": "1970-01-01T00:00:00Z"}]})
    assert batch.status_code == 200
    results = batch.json()["results"]
    assert results[0]["error"]["code"] == "occurred_at_out_of_range"
    assert results[1]["applied"] is True and results[2]["applied"] is True


# -- a transaction_id reused for another payload -------------------------------------------------


def test_another_customers_event_with_a_used_id_is_409_and_shows_nothing_of_the_first(
    api: TestClient, keys: Keys, db_engine: Engine
) -> None:
    first = _send(api, keys, "/v1/events", _event("customer_a", "order-7", "40"))
    assert first.status_code == 200 and first.json()["wallet_state"] == {"points": 40, "cents": 0}
    before = _recorded(db_engine)

    conflict = _send(api, keys, "/v1/events", _event("customer_b", "order-7", "40"))
    assert conflict.status_code == 409, conflict.text
    body = conflict.json()
    assert body["code"] == "transaction_id_conflict" and body["field"] == "transaction_id"
    assert set(body) == {"message", "code", "field"}
    assert "customer_a" not in conflict.text and "40" not in conflict.text
    assert _recorded(db_engine) == before
    missing = api.get("/v1/customer/customer_b", headers={"x-perkamo-api-key": keys.full})
    assert missing.status_code == 404  # B was never created

    for changed in (_event("customer_a", "order-7", "41"), _event("customer_a", "order-7", "40", "boosted.given")):
        assert _send(api, keys, "/v1/events", changed).status_code == 409


def test_a_true_replay_stays_a_duplicate(api: TestClient, keys: Keys) -> None:
    body = {"user_id": "a", "event": "points.given", "transaction_id": "r1",
            "context": {"points": 2, "note": {"x": [1, 2.5]}}, "occurred_at": "2026-06-01T10:00:00Z"}
    assert _send(api, keys, "/v1/events", body).json()["applied"] is True
    # The same action: numbers by value, keys in any order, a later occurred_at (the SDKs
    # default it to the call time, so an application's retry carries a new one).
    replays = [
        body,
        {**body, "context": {"note": {"x": [1.0, 2.50]}, "points": 2.0}},
        {**body, "occurred_at": "2026-06-01T10:05:00Z"},
        {k: v for k, v in body.items() if k != "occurred_at"},
    ]
    for replay in replays:
        response = _send(api, keys, "/v1/events", replay)
        assert response.status_code == 200, response.text
        assert response.json()["duplicate"] is True and response.json()["delta"] == [{"wallet": "points", "amount": 2}]


def test_a_batch_answers_a_reused_id_per_item(api: TestClient, keys: Keys, db_engine: Engine) -> None:
    _send(api, keys, "/v1/events", _event("a", "stored-1", "5"))
    items = [
        {"user_id": "b", "event": "points.given", "transaction_id": "stored-1", "context": {"points": 5}},
        {"user_id": "a", "event": "points.given", "transaction_id": "stored-1", "context": {"points": 5}},
        {"user_id": "c", "event": "points.given", "transaction_id": "page-1", "context": {"points": 1}},
        {"user_id": "d", "event": "points.given", "transaction_id": "page-1", "context": {"points": 1}},
        {"user_id": "c", "event": "points.given", "transaction_id": "page-1", "context": {"points": 1}},
    ]
    results = _send(api, keys, "/v1/events:batch", {"events": items}).json()["results"]
    assert results[0]["error"]["code"] == "transaction_id_conflict" and results[0]["wallet_state"] == {}
    assert results[1]["duplicate"] is True
    assert results[2]["applied"] is True
    assert results[3]["error"]["code"] == "transaction_id_conflict"
    assert results[4]["duplicate"] is True
    assert api.get("/v1/customer/b", headers={"x-perkamo-api-key": keys.full}).status_code == 404
    assert api.get("/v1/customer/d", headers={"x-perkamo-api-key": keys.full}).status_code == 404


def test_a_redemption_id_reused_for_another_customer_or_reward_is_409(api: TestClient, keys: Keys) -> None:
    headers = {"x-perkamo-api-key": keys.full}
    _send(api, keys, "/v1/events", {"user_id": "a", "event": "purchase.completed", "transaction_id": "p1"})
    _send(api, keys, "/v1/events", {"user_id": "b", "event": "purchase.completed", "transaction_id": "p2"})
    # (the seed program's rules were replaced; give both enough for the seed reward)
    for user in ("a", "b"):
        _send(api, keys, "/v1/events", _event(user, f"fill-{user}", "100"))
    redeemed = api.post("/v1/rewards/redeem", json={"user_id": "a", "reward_key": "free_shipping", "transaction_id": "rd1"},
                        headers=headers)
    assert redeemed.status_code == 200, redeemed.text
    replay = api.post("/v1/rewards/redeem", json={"user_id": "a", "reward_key": "free_shipping", "transaction_id": "rd1"},
                      headers=headers)
    assert replay.status_code == 200 and replay.json()["duplicate"] is True
    other = api.post("/v1/rewards/redeem", json={"user_id": "b", "reward_key": "free_shipping", "transaction_id": "rd1"},
                     headers=headers)
    assert other.status_code == 409 and other.json()["code"] == "transaction_id_conflict"
    assert "wallet_state" not in other.json()
    event_id = api.post("/v1/rewards/redeem", json={"user_id": "a", "reward_key": "free_shipping", "transaction_id": "fill-a"},
                        headers=headers)
    assert event_id.status_code == 409
    as_event = _send(api, keys, "/v1/events", _event("a", "rd1", "1"))
    assert as_event.status_code == 409


def test_rows_written_before_fingerprints_are_held_to_the_same_rule(
    api: TestClient, keys: Keys, db_engine: Engine
) -> None:
    _send(api, keys, "/v1/events", _event("a", "old-1", "5"))
    with db_engine.begin() as conn:  # as migration 5 leaves a row written before it
        conn.execute(update(st.events).values(fingerprint=None))
    assert _send(api, keys, "/v1/events", _event("a", "old-1", "5.0")).json()["duplicate"] is True
    assert _send(api, keys, "/v1/events", _event("b", "old-1", "5")).status_code == 409
