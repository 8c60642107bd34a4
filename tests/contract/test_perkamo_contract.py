"""One contract, two implementations: the remote client over ``perkbridge serve``'s app on loopback,
and the embedded service called directly through a thin adapter, with identical expectations."""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import pytest
from sqlalchemy import Engine

from connectors.perkamo import PerkamoApiError, PerkamoClient, PerkamoInputError, new_transaction_id
from perkamo_core.api import create_app
from perkamo_core.api.app import batch_results, event_input, parse_batch_items
from perkamo_core.api.responses import dumps
from perkamo_core.api.schemas import EventBody
from perkamo_core.errors import CoreError
from perkamo_core.models import IngestOutcome
from perkamo_core.service import CoreService
from tests.perkamo_core.api.server import live_server
from tests.perkamo_core.api.support import SPACE, make_core

pytestmark = pytest.mark.slow


class PerkamoTarget(Protocol):
    """What both implementations offer: the SDK surface."""

    def identify(self, user_id: str, traits: Mapping[str, Any] | None = None) -> dict[str, Any]: ...
    def emit(
        self,
        user_id: str,
        event: str,
        context: Mapping[str, Any] | None = None,
        transaction_id: str | None = None,
        occurred_at: str | None = None,
    ) -> dict[str, Any]: ...
    def batch(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]: ...
    def customer(self, user_id: str) -> dict[str, Any]: ...
    def program(self) -> dict[str, Any]: ...
    def event_catalog(self) -> list[dict[str, Any]]: ...
    def redeem(self, user_id: str, reward_key: str, transaction_id: str | None = None) -> dict[str, Any]: ...
    def usage(self) -> dict[str, Any]: ...


def _wire(value: Any) -> Any:
    """What a value looks like after crossing the wire (the server's encoder, the client's decoder)."""
    return json.loads(dumps(value), parse_float=Decimal)


@dataclass
class EmbeddedTarget:
    """The embedded core through the same shapes the HTTP API answers with."""

    service: CoreService
    space: str

    def identify(self, user_id: str, traits: Mapping[str, Any] | None = None) -> dict[str, Any]:
        return _wire(self.service.identify(self.space, user_id, dict(traits or {})))

    def emit(
        self,
        user_id: str,
        event: str,
        context: Mapping[str, Any] | None = None,
        transaction_id: str | None = None,
        occurred_at: str | None = None,
    ) -> dict[str, Any]:
        body = EventBody(
            user_id=user_id,
            event=event,
            context=dict(context or {}),
            transaction_id=transaction_id or new_transaction_id(),
            occurred_at=occurred_at,
        )
        return _wire(self.service.ingest(self.space, event_input(body)))

    def batch(self, events: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        parsed = parse_batch_items([dict(item) for item in events])
        valid = [item for item in parsed if isinstance(item, EventBody)]
        applied = iter(self.service.ingest_bulk(self.space, [event_input(item) for item in valid]))
        outcomes = [IngestOutcome(None, item) if isinstance(item, CoreError) else next(applied) for item in parsed]
        return _wire(batch_results(outcomes, [item.get("transaction_id") for item in events]))

    def customer(self, user_id: str) -> dict[str, Any]:
        return _wire(self.service.customer(self.space, user_id))

    def program(self) -> dict[str, Any]:
        return _wire(self.service.program(self.space))

    def event_catalog(self) -> list[dict[str, Any]]:
        return list(self.program()["blueprint"]["earningRules"])

    def redeem(self, user_id: str, reward_key: str, transaction_id: str | None = None) -> dict[str, Any]:
        return _wire(self.service.redeem(self.space, user_id, reward_key, transaction_id or new_transaction_id()))

    def usage(self) -> dict[str, Any]:
        return _wire(self.service.usage(self.space))


def rejection(exc: BaseException) -> tuple[int, str | None]:
    """The (status, code) of a refusal from either implementation."""
    if isinstance(exc, PerkamoApiError):
        return exc.status, exc.code
    if isinstance(exc, CoreError):
        return exc.status, exc.code
    if isinstance(exc, PerkamoInputError):  # the SDK refuses locally what the server answers 400 to
        return 400, None
    raise AssertionError(f"not a refusal: {exc!r}")


@pytest.fixture(params=["remote", "embedded"])
def target(request: pytest.FixtureRequest, db_engine: Engine) -> Iterator[PerkamoTarget]:
    service, keys = make_core(db_engine)
    if request.param == "embedded":
        yield EmbeddedTarget(service, SPACE)
        return
    # signatures required: every write of the remote variant also proves the client signs as the server verifies
    app = create_app(service, require_signatures=True)
    with live_server(app) as base_url, PerkamoClient(keys.full, base_url=base_url, max_retries=0) as client:
        yield client


def _refused(call: Any, *args: Any, **kwargs: Any) -> tuple[int, str | None]:
    with pytest.raises((PerkamoApiError, PerkamoInputError, CoreError)) as caught:
        call(*args, **kwargs)
    return rejection(caught.value)


def test_emit_applies_once_and_replays_duplicates(target: PerkamoTarget) -> None:
    context = {"order_id": "order_1092", "amount": 12900, "currency": "CZK"}
    first = target.emit("customer_123", "purchase.completed", context, "order_1092", "2026-06-01T10:00:00.000Z")
    assert first["applied"] is True and first["duplicate"] is False
    assert first["delta"] == [{"wallet": "points", "amount": 50}]
    assert first["wallet_state"] == {"points": 50}
    assert first["unlocked"] == [{"type": "perk", "key": "welcome_member", "name": "Welcome member"}]
    assert first["level"]["level"] == 1 and first["level"]["progress"] == Decimal("0.5")
    again = target.emit("customer_123", "purchase.completed", context, "order_1092", "2026-06-01T10:00:00.000Z")
    assert again["duplicate"] is True and again["applied"] is False
    assert again["delta"] == first["delta"]
    assert target.customer("customer_123")["wallets"] == {"points": 50}


def test_generated_transaction_ids_are_distinct(target: PerkamoTarget) -> None:
    first = target.emit("u1", "page.viewed", {"path": "/"})
    second = target.emit("u1", "page.viewed", {"path": "/"})
    assert (first["applied"], second["applied"]) == (True, True)
    assert target.customer("u1")["wallets"] == {"points": 2}


def test_identify_sets_traits(target: PerkamoTarget) -> None:
    answer = target.identify("customer_123", {"plan": "premium", "country": "CZ"})
    assert answer == {"tenant": SPACE, "user_id": "customer_123", "traits": {"plan": "premium", "country": "CZ"}}
    customer = target.customer("customer_123")
    assert customer["user_id"] == "customer_123"
    assert customer["traits"] == {"plan": "premium", "country": "CZ"}
    assert customer["tenant"] == SPACE


def test_unknown_customer_is_not_found(target: PerkamoTarget) -> None:
    assert _refused(target.customer, "nobody") == (404, "not_found")


def test_reserved_context_keys_are_refused(target: PerkamoTarget) -> None:
    status, _ = _refused(target.emit, "u1", "purchase.completed", {"Wallet": 5}, "order_9")
    assert status == 400
    assert _refused(target.customer, "u1")[0] == 404


def test_batch_results_in_input_order_with_per_item_errors(target: PerkamoTarget) -> None:
    events = [
        {"user_id": "u1", "event": "page.viewed", "transaction_id": "pv_1", "context": {"path": "/pricing"}},
        {"user_id": "u1", "event": "page.viewed", "transaction_id": "pv_2", "occurred_at": "not a date"},
        {"user_id": "u1", "event": "purchase.completed", "transaction_id": "order_1"},
        {"user_id": "u1", "event": "page.viewed", "transaction_id": "pv_1", "context": {"path": "/pricing"}},
        {"user_id": "u2", "event": "page.viewed", "transaction_id": "pv_1", "context": {"path": "/pricing"}},
    ]
    results = target.batch(events)["results"]
    assert [item.get("applied") for item in results] == [True, False, True, False, False]
    assert results[1]["transaction_id"] == "pv_2" and results[1]["duplicate"] is False
    assert results[1]["error"]["code"] == "invalid_request"
    assert results[1]["error"]["field"] == "occurred_at"
    assert results[2]["wallet_state"] == {"points": 51}
    assert results[3]["duplicate"] is True
    assert results[4]["error"]["code"] == "transaction_id_conflict" and results[4]["wallet_state"] == {}
    assert target.customer("u1")["wallets"] == {"points": 51}


def test_redeem_is_idempotent_and_refuses_an_insufficient_balance(target: PerkamoTarget) -> None:
    target.emit("u1", "purchase.completed", {}, "order_1")
    first = target.redeem("u1", "free_shipping", "redeem_1")
    assert (first["applied"], first["duplicate"]) == (True, False)
    assert first["delta"] == [{"wallet": "points", "amount": -40}]
    assert first["effect"] == {"type": "free_shipping"}
    again = target.redeem("u1", "free_shipping", "redeem_1")
    assert (again["applied"], again["duplicate"]) == (False, True)
    assert {k: v for k, v in again.items() if k not in ("applied", "duplicate")} == {
        k: v for k, v in first.items() if k not in ("applied", "duplicate")
    }
    assert target.customer("u1")["wallets"] == {"points": 10}
    assert _refused(target.redeem, "u1", "free_shipping", "redeem_2") == (400, "insufficient_balance")
    assert _refused(target.redeem, "u1", "no_such_reward", "redeem_3")[0] == 404
    assert target.customer("u1")["wallets"] == {"points": 10}


def test_program_and_event_catalog(target: PerkamoTarget) -> None:
    catalog = target.event_catalog()
    assert {rule["event"] for rule in catalog} == {"purchase.completed", "page.viewed"}
    program = target.program()
    assert program["blueprint"]["earningRules"] == catalog


def test_usage_counts_events_and_identify_calls(target: PerkamoTarget) -> None:
    before = target.usage()["meters"]
    target.emit("u1", "page.viewed", {}, "pv_1")
    target.emit("u1", "page.viewed", {}, "pv_1")
    target.identify("u1", {"plan": "free"})
    after = target.usage()["meters"]
    assert after["events"] - before["events"] == 1
    assert after["duplicates"] - before["duplicates"] == 1
    assert after["identify_calls"] - before["identify_calls"] == 1
