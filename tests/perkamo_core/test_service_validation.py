"""CoreService input validation: typed errors naming the field, and nothing half-written."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine

from perkamo_core import storage as st
from perkamo_core.errors import ValidationError
from perkamo_core.models import EventInput
from perkamo_core.service import CoreService
from tests.perkamo_core.test_service_ingest import SPACE, assert_refused_writing_nothing, count, make_service

GOOD: dict[str, Any] = {"user_id": "a", "event": "purchase.completed", "transaction_id": "t1"}

CASES = [
    pytest.param({"user_id": ""}, "user_id", id="empty-user"),
    pytest.param({"user_id": "u" * 257}, "user_id", id="user-257"),
    pytest.param({"event": ""}, "event", id="empty-event"),
    pytest.param({"event": "e" * 129}, "event", id="event-129"),
    pytest.param({"transaction_id": "t" * 257}, "transaction_id", id="txid-257"),
    pytest.param({"transaction_id": "  "}, "transaction_id", id="blank-txid"),
    pytest.param({"context": {"xp": 1}}, "context.xp", id="reserved-xp"),
    pytest.param({"context": {"WALLET": 1}}, "context.WALLET", id="reserved-upper"),
    pytest.param({"context": {"Perks": []}}, "context.Perks", id="reserved-mixed"),
    pytest.param({"context": {"achievements": None}}, "context.achievements", id="reserved-none"),
    pytest.param({"context": {"amount": float("nan")}}, "context.amount", id="nan"),
    pytest.param({"context": {"deep": {"x": float("inf")}}}, "context.deep.x", id="nested-inf"),
    pytest.param({"occurred_at": "yesterday"}, "occurred_at", id="bad-time"),
    pytest.param({"occurred_at": "2026-13-01T00:00:00Z"}, "occurred_at", id="bad-month"),
]


@pytest.mark.parametrize(("change", "field"), CASES)
def test_invalid_event_names_the_field_and_writes_nothing(
    db_engine: Engine, change: dict[str, Any], field: str
) -> None:
    service = make_service(db_engine)
    assert_refused_writing_nothing(db_engine, service, EventInput(**{**GOOD, **change}), field)
    assert service.usage(SPACE)["meters"]["events"] == 0


@pytest.mark.parametrize(
    "context",
    [
        pytest.param({"meta": {"xp": 1}}, id="nested-reserved-allowed"),
        pytest.param({"levels": 1, "xps": 2}, id="similar-names"),
        pytest.param({"tags": ["a", 1, None, True], "price": 12.5}, id="lists-and-floats"),
    ],
)
def test_acceptable_contexts(db_engine: Engine, context: dict[str, Any]) -> None:
    service = make_service(db_engine)
    assert service.ingest(SPACE, EventInput(**GOOD, context=context))["applied"] is True


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        pytest.param("2026-06-01T10:00:00.000Z", "2026-06-01T10:00:00.000Z", id="z-millis"),
        pytest.param("2026-06-01T12:00:00+02:00", "2026-06-01T10:00:00.000Z", id="offset"),
        pytest.param("2026-06-01T10:00:00", "2026-06-01T10:00:00.000Z", id="naive-is-utc"),
        pytest.param("2026-06-01T10:00:00.123456Z", "2026-06-01T10:00:00.123Z", id="micros"),
    ],
)
def test_occurred_at_formats(db_engine: Engine, value: str, expected: str) -> None:
    service = make_service(db_engine)
    service.ingest(SPACE, EventInput(**GOOD, occurred_at=value))
    assert service.customer(SPACE, "a")["events"][0]["occurred_at"] == expected


@pytest.mark.parametrize(
    ("call", "field"),
    [
        pytest.param(lambda s: s.identify(SPACE, "", {}), "user_id", id="identify-empty-user"),
        pytest.param(lambda s: s.identify(SPACE, "a", {"x": float("nan")}), "traits.x",
                     id="identify-nan-trait"),
        pytest.param(lambda s: s.identify(SPACE, "a", ["not", "a", "dict"]), "traits",
                     id="identify-list-traits"),
        pytest.param(lambda s: s.redeem(SPACE, "a", "free_shipping", "t" * 257), "transaction_id",
                     id="redeem-long-txid"),
        pytest.param(lambda s: s.ensure_space("Bad Slug"), "space", id="bad-slug"),
        pytest.param(lambda s: s.ensure_space("ok", timezone="Mars/Olympus"), "timezone",
                     id="bad-timezone"),
        pytest.param(lambda s: s.ensure_space("ok", environment="prod"), "environment",
                     id="bad-environment"),
        pytest.param(lambda s: s.create_api_key(SPACE, ["events:read"]), "scopes", id="bad-scope"),
    ],
)
def test_other_invalid_calls(db_engine: Engine, call: Any, field: str) -> None:
    service: CoreService = make_service(db_engine)
    with pytest.raises(ValidationError) as raised:
        call(service)
    assert raised.value.field == field
    assert count(db_engine, st.customers) == 0
